//! One deploy of an app at a time, across processes: an exclusive `flock(2)` on a file per
//! app, released when the deploy's process ends however it ends (the kernel drops it).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// `/run/lock` (a tmpfs for root's locks on Debian), else the temporary directory (a deploy
/// run by a user against its own gatehouse, as the tests do).
fn lock_path(app: &str) -> PathBuf {
    let name = format!("gatehouse-deploy-{app}.lock");
    // SAFETY: access(2) reads the NUL-terminated path and nothing else. It fails for a
    // missing directory as for one we may not write in.
    let writable = unsafe { libc::access(c"/run/lock".as_ptr(), libc::W_OK) } == 0;
    if writable {
        std::path::Path::new("/run/lock").join(name)
    } else {
        std::env::temp_dir().join(name)
    }
}

/// Takes the app's deploy lock; if another deploy holds it, says so and waits for it.
pub(super) fn exclusive(app: &str) -> Result<File, String> {
    let path = lock_path(app);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open the deploy lock {}: {e}", path.display()))?;
    let fd = file.as_raw_fd();
    // SAFETY: flock(2) on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(file);
    }
    println!("deploy {app}: another deploy of {app} is in progress; waiting for it to end");
    loop {
        // SAFETY: as above; blocking is fine, the deploy has nothing else to do meanwhile.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } == 0 {
            return Ok(file);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!(
                "cannot take the deploy lock {}: {e}",
                path.display()
            ));
        }
    }
}
