//! RLIMIT_NOFILE. systemd starts services with a soft limit of 1024 (for select(2)'s sake)
//! and a high hard limit, and expects programs that need more to raise the soft limit
//! themselves (systemd.exec(5), LimitNOFILE=). gatehouse does so at start, with prlimit(2)
//! (the unit's seccomp filter denies setrlimit, in @resources, but not prlimit64), and warns
//! when `max_connections` cannot fit: beyond the limit accept() fails with EMFILE and clients
//! wait in the backlog.

use crate::config::{Config, RouteAction};

/// Listeners, the epoll and notify fds, the journal, the admin socket and such.
const RESERVED: u64 = 64;

fn get() -> std::io::Result<libc::rlimit> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on ourselves (pid 0) only writes `current`, which we own.
    let rc = unsafe { libc::prlimit(0, libc::RLIMIT_NOFILE, std::ptr::null(), &mut current) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(current)
}

/// Raises the soft limit to the hard one; logs what it could not do.
pub(crate) fn raise() {
    let current = match get() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE");
            return;
        }
    };
    if current.rlim_cur >= current.rlim_max {
        return;
    }
    let wanted = libc::rlimit {
        rlim_cur: current.rlim_max,
        rlim_max: current.rlim_max,
    };
    // SAFETY: prlimit on ourselves (pid 0) only reads `wanted`.
    let rc = unsafe { libc::prlimit(0, libc::RLIMIT_NOFILE, &wanted, std::ptr::null_mut()) };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            soft = current.rlim_cur,
            hard = current.rlim_max,
            "cannot raise the soft RLIMIT_NOFILE to the hard limit"
        );
    } else {
        tracing::debug!(
            from = current.rlim_cur,
            to = current.rlim_max,
            "raised the soft RLIMIT_NOFILE"
        );
    }
}

/// File descriptors each connection of `config` may hold: its socket, and one more where a
/// route opens files or upstream connections.
fn per_connection(config: &Config) -> u64 {
    let second_fd = config.sites.iter().any(|s| {
        s.routes
            .iter()
            .any(|r| matches!(r.action, RouteAction::Static(_) | RouteAction::Proxy(_)))
    });
    if second_fd {
        2
    } else {
        1
    }
}

/// Warns when `config`'s max_connections cannot fit under the current limit.
pub(crate) fn check(config: &Config) {
    let Ok(limit) = get() else { return };
    let per_connection = per_connection(config);
    let max = config.server.max_connections as u64;
    let needed = max * per_connection + RESERVED;
    if needed <= limit.rlim_cur {
        return;
    }
    let fit = limit.rlim_cur.saturating_sub(RESERVED) / per_connection;
    tracing::warn!(
        max_connections = max,
        needed,
        soft_limit = limit.rlim_cur,
        hard_limit = limit.rlim_max,
        "max_connections = {max} may need {needed} file descriptors but RLIMIT_NOFILE is {} \
         (hard limit {}): past about {fit} connections accept() fails with EMFILE and clients \
         wait in the backlog; raise LimitNOFILE= in the unit (`systemctl edit gatehouse`) or \
         lower max_connections",
        limit.rlim_cur,
        limit.rlim_max,
    );
}
