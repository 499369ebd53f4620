//! The open-file limit. systemd starts services with a soft `RLIMIT_NOFILE` of 1024 (the
//! hard limit is far higher) because `select()`-based programs break above it, and asks
//! services that need more to raise the soft limit themselves (systemd.exec(5),
//! `LimitNOFILE=`). A server that accepts thousands of connections must: at 1024 accept()
//! fails with EMFILE long before `max_connections`.
//!
//! The raise uses the `prlimit64` system call, not `setrlimit`: units hardened with
//! `SystemCallFilter=~@resources` deny `setrlimit` but allow `prlimit64`.

use std::io;

/// The open-file limit before and after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit now (the hard limit, unless raising failed).
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

fn prlimit(new: Option<&libc::rlimit64>) -> io::Result<libc::rlimit64> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let new_ptr = new.map_or(std::ptr::null(), |n| n as *const libc::rlimit64);
    // SAFETY: pid 0 is this process; both pointers are valid for the call (or null).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0 as libc::pid_t,
            libc::RLIMIT_NOFILE,
            new_ptr,
            &mut old as *mut libc::rlimit64,
        )
    };
    if rc == 0 {
        Ok(old)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The current soft and hard `RLIMIT_NOFILE`.
pub fn nofile() -> io::Result<(u64, u64)> {
    prlimit(None).map(|l| (l.rlim_cur, l.rlim_max))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Child processes inherit the raised
/// limit; one that uses `select()` should lower it again.
pub fn raise_nofile() -> io::Result<NofileLimit> {
    let current = prlimit(None)?;
    if current.rlim_cur >= current.rlim_max {
        return Ok(NofileLimit {
            before: current.rlim_cur,
            soft: current.rlim_cur,
            hard: current.rlim_max,
        });
    }
    let wanted = libc::rlimit64 {
        rlim_cur: current.rlim_max,
        rlim_max: current.rlim_max,
    };
    prlimit(Some(&wanted))?;
    Ok(NofileLimit {
        before: current.rlim_cur,
        soft: current.rlim_max,
        hard: current.rlim_max,
    })
}
