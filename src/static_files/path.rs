//! From a URL path to an open file that is provably inside the root.
//!
//! Two layers: the URL path is decoded segment by segment and anything that could climb or
//! smuggle a separator is rejected before the file system sees it; then the kernel resolves
//! the path with openat2(RESOLVE_BENEATH), so even a symlink cannot lead outside the root
//! unless `follow_symlinks = "always"`. Special files are recognised through an O_PATH
//! descriptor, which does not open them.

use super::config::FollowSymlinks;
use std::ffi::{CStr, CString, OsStr};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest URL path below the route we look up; longer ones are refused.
const MAX_PATH: usize = 4096;
/// NAME_MAX on Linux file systems.
const MAX_SEGMENT: usize = 255;

#[derive(Debug, PartialEq, Eq)]
pub enum Reject {
    BadRequest,
    NotFound,
}

/// A decoded, checked path relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath {
    pub path: PathBuf,
    /// The last segment, if any (for the SPA extension rule and MIME type).
    pub has_extension: bool,
}

/// Decodes the URL path below the route prefix (`raw` is still percent-encoded).
pub fn decode(raw: &str, serve_hidden: bool) -> Result<RelPath, Reject> {
    if raw.len() > MAX_PATH {
        return Err(Reject::BadRequest);
    }
    let mut path = PathBuf::new();
    let mut last: Option<Vec<u8>> = None;
    for segment in raw.split('/') {
        // Decoded exactly once: "%252e" stays the literal name "%2e".
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(segment).collect();
        if bytes.len() > MAX_SEGMENT {
            return Err(Reject::BadRequest);
        }
        if bytes.iter().any(|&b| b == 0 || b == b'/' || b == b'\\') {
            return Err(Reject::BadRequest);
        }
        match bytes.as_slice() {
            b"" | b"." => continue,
            b".." => return Err(Reject::BadRequest),
            // .well-known holds ACME challenges and security.txt: public by design.
            [b'.', ..] if !serve_hidden && bytes.as_slice() != b".well-known" => {
                return Err(Reject::NotFound)
            }
            _ => {}
        }
        path.push(OsStr::from_bytes(&bytes));
        last = Some(bytes);
    }
    let has_extension = last.is_some_and(|l| l.iter().skip(1).any(|&b| b == b'.'));
    Ok(RelPath {
        path,
        has_extension,
    })
}

#[derive(Debug)]
pub enum OpenError {
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

pub enum Opened {
    File(File, Metadata),
    /// A directory, opened O_PATH: enough to look inside, nothing else.
    Dir(OwnedFd),
    /// A regular file the caller said it already holds (see [`open_unless_known`]): not
    /// opened for reading.
    Known(Metadata),
}

/// The document root, opened O_PATH and reused for a second at a time: saves an open and a
/// close per request, while a root that is swapped (a symlink repointed by a deploy, say)
/// takes effect within a second, as it would with a path lookup per request.
#[derive(Clone)]
pub struct RootDir {
    path: PathBuf,
    cached: Arc<Mutex<Option<OpenedAt>>>,
}

/// When the root was opened, and its O_PATH descriptor.
type OpenedAt = (Instant, Arc<OwnedFd>);

const ROOT_REUSE: Duration = Duration::from_secs(1);

impl RootDir {
    pub fn new(path: PathBuf) -> RootDir {
        RootDir {
            path,
            cached: Arc::new(Mutex::new(None)),
        }
    }

    fn fd(&self) -> io::Result<Arc<OwnedFd>> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, fd)) = cached.as_ref() {
            if at.elapsed() < ROOT_REUSE {
                return Ok(fd.clone());
            }
        }
        let fd = Arc::new(open_root(&self.path)?);
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
pub fn open(root: &RootDir, rel: &Path, policy: FollowSymlinks) -> Result<Opened, OpenError> {
    open_unless_known(root, rel, policy, &|_| false)
}

/// Like [`open`], but a regular file for which `known(metadata)` is true is only probed,
/// not opened: the caller has its content (see `cache`).
pub fn open_unless_known(
    root: &RootDir,
    rel: &Path,
    policy: FollowSymlinks,
    known: &dyn Fn(&Metadata) -> bool,
) -> Result<Opened, OpenError> {
    let root_fd = root.fd()?;
    open_in(root_fd.as_fd(), &root.path, rel, policy, known)
}

/// Like [`open`], relative to an already opened directory of the same root.
pub fn open_in(
    dir: BorrowedFd<'_>,
    root: &Path,
    rel: &Path,
    policy: FollowSymlinks,
    known: &dyn Fn(&Metadata) -> bool,
) -> Result<Opened, OpenError> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let resolve = match policy {
        FollowSymlinks::Never => RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
        FollowSymlinks::InsideRoot => RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
        FollowSymlinks::Always => 0,
    };
    match open_checked(dir, rel, resolve, known) {
        // RESOLVE_BENEATH refuses absolute symlinks even when they point inside the root:
        // resolve those in user space and open the symlink-free result.
        Err(e) if policy == FollowSymlinks::InsideRoot && e.raw_os_error() == Some(libc::EXDEV) => {
            let canonical_root = std::fs::canonicalize(root)?;
            let target = std::fs::canonicalize(proc_path(dir).join(rel))?;
            let inside = target
                .strip_prefix(&canonical_root)
                .map_err(|_| OpenError::NotFound)?;
            let croot = open_root(&canonical_root)?;
            let inside = if inside.as_os_str().is_empty() {
                Path::new(".")
            } else {
                inside
            };
            Ok(open_checked(
                croot.as_fd(),
                inside,
                RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
                known,
            )?)
        }
        other => Ok(other?),
    }
}

fn proc_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(root.as_os_str().as_bytes())?;
    // SAFETY: a valid C string; the returned fd is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

fn open_checked(
    dir: BorrowedFd<'_>,
    rel: &Path,
    resolve: u64,
    known: &dyn Fn(&Metadata) -> bool,
) -> io::Result<Opened> {
    // O_PATH first: stat without opening, so a FIFO or device is never opened.
    let probe = File::from(openat2(dir, rel, libc::O_PATH | libc::O_CLOEXEC, resolve)?);
    let meta = probe.metadata()?;
    if meta.is_dir() {
        return Ok(Opened::Dir(OwnedFd::from(probe)));
    }
    if !meta.is_file() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    if known(&meta) {
        return Ok(Opened::Known(meta));
    }
    drop(probe);
    // O_NONBLOCK: should the file be swapped for a FIFO in between, open must not hang.
    let file = File::from(openat2(
        dir,
        rel,
        libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY,
        resolve,
    )?);
    let opened = file.metadata()?;
    if !opened.is_file() || opened.ino() != meta.ino() || opened.dev() != meta.dev() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    Ok(Opened::File(file, opened))
}

/// openat2(2); falls back to openat(2) + a user-space containment check on kernels < 5.6.
fn openat2(dir: BorrowedFd<'_>, path: &Path, flags: i32, resolve: u64) -> io::Result<OwnedFd> {
    // Typical paths fit on the stack: no allocation per request for the C string.
    let bytes = path.as_os_str().as_bytes();
    let mut stack = [0u8; 256];
    let heap;
    let c: &CStr = if bytes.len() < stack.len() {
        stack[..bytes.len()].copy_from_slice(bytes);
        CStr::from_bytes_with_nul(&stack[..=bytes.len()])
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?
    } else {
        heap = CString::new(bytes)?;
        &heap
    };
    // SAFETY: open_how is plain data; zeroed is its documented initial state.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = resolve;
    // SAFETY: valid fd, C string and open_how of the size we pass.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd >= 0 {
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    openat_fallback(dir, path, flags, resolve)
}

fn openat_fallback(
    dir: BorrowedFd<'_>,
    path: &Path,
    flags: i32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    if resolve & RESOLVE_BENEATH != 0 {
        let base = std::fs::canonicalize(proc_path(dir))?;
        let target = std::fs::canonicalize(proc_path(dir).join(path))?;
        if !target.starts_with(&base) {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        if resolve & RESOLVE_NO_SYMLINKS != 0 && target != base.join(path) {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
    }
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: valid fd and C string.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> PathBuf {
        decode(raw, false).unwrap().path
    }

    #[test]
    fn decodes_and_normalises() {
        assert_eq!(ok("a/b.txt"), PathBuf::from("a/b.txt"));
        assert_eq!(ok("a//./b"), PathBuf::from("a/b"));
        assert_eq!(ok("caf%C3%A9"), PathBuf::from("café"));
        assert_eq!(ok("%252e%252e"), PathBuf::from("%2e%2e"));
        assert_eq!(ok(".well-known/x"), PathBuf::from(".well-known/x"));
        assert_eq!(ok(""), PathBuf::from(""));
    }

    #[test]
    fn rejects_climbing_and_smuggled_separators() {
        for bad in [
            "..",
            "a/../b",
            "%2e%2e",
            "%2E%2e/x",
            "a%2f..%2fb",
            "a%5cb",
            "a%00b",
            "a\\b",
        ] {
            assert_eq!(decode(bad, false), Err(Reject::BadRequest), "{bad}");
        }
        assert_eq!(decode(&"a".repeat(300), false), Err(Reject::BadRequest));
        assert_eq!(decode(&"a/".repeat(3000), false), Err(Reject::BadRequest));
    }

    #[test]
    fn hides_dotfiles_unless_asked() {
        assert_eq!(decode(".git/config", false), Err(Reject::NotFound));
        assert_eq!(decode("a/.env", false), Err(Reject::NotFound));
        assert!(decode(".env", true).is_ok());
    }

    #[test]
    fn extension_detection() {
        assert!(decode("a/b.js", false).unwrap().has_extension);
        assert!(!decode("app/route", false).unwrap().has_extension);
        assert!(!decode("a.d/route", false).unwrap().has_extension);
    }
}
