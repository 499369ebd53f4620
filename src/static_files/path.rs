//! From a URL path to an open file that is provably inside the root.
//!
//! Two layers: the request's canonical path (decoded once and normalised before routing, see
//! `request_path`) is checked segment by segment, and anything that could climb or smuggle a
//! separator is rejected before the file system sees it; then the path is
//! resolved beneath the root's descriptor (`beneath`: openat2 RESOLVE_BENEATH, or the same
//! walk component by component where openat2 is blocked), so even a symlink cannot lead
//! outside the root unless `follow_symlinks = "always"`. Special files are recognised by a
//! stat (of an O_PATH descriptor, or fstatat), which does not open them.

pub(crate) use super::beneath::Stat;
use super::beneath::{self, RootFd};
use crate::config::static_files::FollowSymlinks;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest URL path below the route we look up; longer ones are refused.
const MAX_PATH: usize = 4096;
/// NAME_MAX on Linux file systems.
const MAX_SEGMENT: usize = 255;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    BadRequest,
    NotFound,
}

/// A decoded, checked path relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelPath {
    pub(crate) path: PathBuf,
    /// The last segment, if any (for the SPA extension rule and MIME type).
    pub(crate) has_extension: bool,
}

/// Checks the canonical path below the route prefix. It is decoded already (once, before
/// routing): decoding it again would turn a file named `%2e` into `.`.
pub(crate) fn check(below: &str, serve_hidden: bool) -> Result<RelPath, Reject> {
    if below.len() > MAX_PATH {
        return Err(Reject::BadRequest);
    }
    let mut path = PathBuf::new();
    let mut last: Option<&[u8]> = None;
    for segment in below.split('/') {
        let bytes = segment.as_bytes();
        if bytes.len() > MAX_SEGMENT {
            return Err(Reject::BadRequest);
        }
        // `request_path` refuses NUL and resolves `..` already. A `\` is an ordinary
        // character there, but in a file name it is more likely a Windows-style traversal
        // attempt than a real name.
        if bytes.iter().any(|&b| b == 0 || b == b'\\') {
            return Err(Reject::BadRequest);
        }
        match bytes {
            b"" | b"." => continue,
            b".." => return Err(Reject::BadRequest),
            // .well-known holds ACME challenges and security.txt: public by design.
            [b'.', ..] if !serve_hidden && bytes != b".well-known" => return Err(Reject::NotFound),
            _ => {}
        }
        path.push(OsStr::from_bytes(bytes));
        last = Some(bytes);
    }
    let has_extension = last.is_some_and(|l| l.iter().skip(1).any(|&b| b == b'.'));
    Ok(RelPath {
        path,
        has_extension,
    })
}

#[derive(Debug)]
pub(crate) enum OpenError {
    NotFound,
    Forbidden,
    Io(io::Error),
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG) => OpenError::NotFound,
            // A symlink the policy refuses: as if it did not exist.
            Some(libc::ELOOP | libc::EXDEV) => OpenError::NotFound,
            Some(libc::EACCES | libc::EPERM) => OpenError::Forbidden,
            _ => OpenError::Io(e),
        }
    }
}

pub(crate) enum Opened {
    File(File, Stat),
    /// A directory, opened O_PATH: enough to look inside, nothing else.
    Dir(OwnedFd),
    /// A regular file the caller said it already holds (see [`open_unless_known`]): not
    /// opened for reading.
    Known(Stat),
}

/// The document root, opened O_PATH and reused for a second at a time: saves an open and a
/// close per request, while a root that is swapped (a symlink repointed by a deploy, say)
/// takes effect within a second, as it would with a path lookup per request.
#[derive(Clone)]
pub(crate) struct RootDir {
    path: PathBuf,
    cached: Arc<Mutex<Option<OpenedAt>>>,
}

/// When the root was opened, and its descriptor.
type OpenedAt = (Instant, Arc<RootFd>);

const ROOT_REUSE: Duration = Duration::from_secs(1);

impl RootDir {
    pub(crate) fn new(path: PathBuf) -> RootDir {
        RootDir {
            path,
            cached: Arc::new(Mutex::new(None)),
        }
    }

    fn fd(&self) -> io::Result<Arc<RootFd>> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, fd)) = cached.as_ref() {
            if at.elapsed() < ROOT_REUSE {
                return Ok(fd.clone());
            }
        }
        let fd = Arc::new(RootFd::open(&self.path)?);
        *cached = Some((Instant::now(), fd.clone()));
        Ok(fd)
    }
}

impl std::fmt::Debug for RootDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RootDir").field(&self.path).finish()
    }
}

/// Opens `rel` below the root under `policy`. Regular files and directories only: anything
/// else (FIFO, device, socket) is reported as not found without being opened.
pub(crate) fn open(
    root: &RootDir,
    rel: &Path,
    policy: FollowSymlinks,
) -> Result<Opened, OpenError> {
    open_unless_known(root, rel, policy, &|_| false)
}

/// Like [`open`], but a regular file for which `known(metadata)` is true is only probed,
/// not opened: the caller has its content (see `cache`).
pub(crate) fn open_unless_known(
    root: &RootDir,
    rel: &Path,
    policy: FollowSymlinks,
    known: &dyn Fn(&Stat) -> bool,
) -> Result<Opened, OpenError> {
    let root = root.fd()?;
    // Looked up and stat-ed first, without opening: a FIFO or device is never opened.
    let found = beneath::lookup(&root, rel, policy)?;
    if found.stat.is_dir() {
        return Ok(Opened::Dir(found.into_dir(&root)?));
    }
    if !found.stat.is_file() {
        return Err(OpenError::NotFound);
    }
    if known(&found.stat) {
        return Ok(Opened::Known(found.stat));
    }
    let (file, stat) = found.open_for_reading(&root, rel)?;
    Ok(Opened::File(file, stat))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(below: &str) -> PathBuf {
        check(below, false).unwrap().path
    }

    #[test]
    fn never_decodes_a_second_time() {
        assert_eq!(ok("a/b.txt"), PathBuf::from("a/b.txt"));
        assert_eq!(ok("café"), PathBuf::from("café"));
        assert_eq!(ok("%2e%2e"), PathBuf::from("%2e%2e"));
        assert_eq!(ok("a%2fb"), PathBuf::from("a%2fb"));
        assert_eq!(ok(".well-known/x"), PathBuf::from(".well-known/x"));
        assert_eq!(ok(""), PathBuf::from(""));
    }

    #[test]
    fn rejects_climbing_and_smuggled_separators() {
        for bad in ["..", "a/../b", "a\\b", "a\0b"] {
            assert_eq!(check(bad, false), Err(Reject::BadRequest), "{bad}");
        }
        assert_eq!(check(&"a".repeat(300), false), Err(Reject::BadRequest));
        assert_eq!(check(&"a/".repeat(3000), false), Err(Reject::BadRequest));
    }

    #[test]
    fn hides_dotfiles_unless_asked() {
        assert_eq!(check(".git/config", false), Err(Reject::NotFound));
        assert_eq!(check("a/.env", false), Err(Reject::NotFound));
        assert!(check(".env", true).is_ok());
    }

    #[test]
    fn extension_detection() {
        assert!(check("a/b.js", false).unwrap().has_extension);
        assert!(!check("app/route", false).unwrap().has_extension);
        assert!(!check("a.d/route", false).unwrap().has_extension);
    }
}
