//! Looking a path up beneath a document root's descriptor, so that nothing — `..`, a
//! symlink, a rename racing the lookup — leads outside the root unless the policy says so.
//!
//! Two ways, one behaviour. Where openat2(2) may be called, the kernel walks the path
//! (`RESOLVE_BENEATH`). Where it may not — kernels before 5.6, and every unit with
//! `RestrictSUIDSGID=` or `DynamicUser=`, whose seccomp filter answers openat2 with ENOSYS
//! because its flags sit in a struct a filter cannot read — the same walk happens here, one
//! component at a time with openat(`O_PATH | O_NOFOLLOW`) relative to a directory already
//! held, the way nginx's `disable_symlinks` works. A symlink met on the way (or swapped in
//! while we walk) is read, never followed by the kernel: its target is walked the same way
//! from the directory that holds it, or from the root for an absolute target that names a
//! place inside the root. The kernel's refusals that the policy allows (absolute links
//! into the root, EXDEV) take this walk too, so both ways answer alike.

use crate::config::static_files::FollowSymlinks;
use std::borrow::Cow;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// Symlinks followed in one lookup at most: the kernel's MAXSYMLINKS.
pub(crate) const MAX_LINKS: u32 = 40;

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

/// An opened document root: its O_PATH descriptor, and the names an absolute symlink may
/// use for it (the configured path, and the path the kernel reports for the descriptor).
pub(crate) struct RootFd {
    fd: OwnedFd,
    path: PathBuf,
    canonical: OnceLock<Option<PathBuf>>,
}

impl RootFd {
    pub(crate) fn open(path: &Path) -> io::Result<RootFd> {
        let fd = with_c_path(path.as_os_str().as_bytes(), |c| {
            // SAFETY: a valid C string.
            cvt_fd(unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            })
        })?;
        Ok(RootFd {
            fd,
            path: path.to_path_buf(),
            canonical: OnceLock::new(),
        })
    }

    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The part of an absolute symlink target below this root, if it names a place in it.
    fn below<'t>(&self, target: &'t [u8]) -> Option<&'t [u8]> {
        let canonical = self.canonical.get_or_init(|| {
            std::fs::read_link(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
                .or_else(|_| std::fs::canonicalize(&self.path))
                .ok()
        });
        [Some(self.path.as_path()), canonical.as_deref()]
            .into_iter()
            .flatten()
            .find_map(|root| strip_prefix(target, root.as_os_str().as_bytes()))
    }
}

/// What a lookup learns of an object without opening it: its kind, and what identifies a
/// version of it (for the cache of small files and for validators).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    mode: u32,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stat {
    fn of(st: &libc::stat) -> Stat {
        Stat {
            mode: st.st_mode,
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec,
        }
    }

    /// fstat(2) of an open descriptor.
    pub(crate) fn of_fd(fd: BorrowedFd<'_>) -> io::Result<Stat> {
        // SAFETY: stat is plain data, filled by the call.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd and a stat buffer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Stat::of(&st))
    }

    /// The entry `name` of `dir` itself (a symlink is not followed), without opening it.
    fn at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Stat> {
        // SAFETY: stat is plain data, filled by the call.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        with_c_path(name, |c| {
            let flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT;
            // SAFETY: a valid fd, C string and stat buffer.
            if unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), &mut st, flags) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })?;
        Ok(Stat::of(&st))
    }

    fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    pub(crate) fn is_file(&self) -> bool {
        self.kind() == libc::S_IFREG
    }
    pub(crate) fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }
    fn is_symlink(&self) -> bool {
        self.kind() == libc::S_IFLNK
    }
    fn same_object(&self, other: &Stat) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
    pub(crate) fn dev(&self) -> u64 {
        self.dev
    }
    pub(crate) fn ino(&self) -> u64 {
        self.ino
    }
    pub(crate) fn size(&self) -> u64 {
        self.size
    }
    pub(crate) fn mtime(&self) -> i64 {
        self.mtime
    }
    pub(crate) fn mtime_nsec(&self) -> i64 {
        self.mtime_nsec
    }
}

/// An object found beneath the root. Nothing is opened for I/O: a directory or an object
/// that openat2 found is held O_PATH, anything the walk found is named in a directory held.
pub(crate) struct Found {
    pub(crate) stat: Stat,
    fd: Option<OwnedFd>,
    reopen: Reopen,
}

/// How to open a found object for reading without resolving anything the lookup did not.
enum Reopen {
    /// The same relative path again, with these openat2 flags.
    Openat2(u64),
    /// The same relative path again with plain openat (`follow_symlinks = "always"`).
    Plain,
    /// By its name in the directory that holds it (`None`: the root), with O_NOFOLLOW:
    /// that directory is already known to be beneath the root.
    InDir(Option<OwnedFd>, Vec<u8>),
}

impl Found {
    /// The directory found, as an O_PATH descriptor.
    pub(crate) fn into_dir(self, root: &RootFd) -> io::Result<OwnedFd> {
        let fd = match (self.fd, &self.reopen) {
            (Some(fd), _) => fd,
            (None, Reopen::InDir(dir, name)) => {
                let dir = dir.as_ref().map_or(root.as_fd(), |d| d.as_fd());
                let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
                openat(dir, name, flags)?
            }
            (None, _) => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
        };
        if !Stat::of_fd(fd.as_fd())?.same_object(&self.stat) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(fd)
    }

    /// Opens the object for reading (non-blocking, so a FIFO swapped in cannot hang us) and
    /// checks that it is still the regular file the lookup found.
    pub(crate) fn open_for_reading(self, root: &RootFd, rel: &Path) -> io::Result<(File, Stat)> {
        let Found { fd, stat, reopen } = self;
        drop(fd);
        let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY;
        let rel = rel_bytes(rel);
        let fd = match &reopen {
            Reopen::Openat2(resolve) => openat2(root.as_fd(), rel, flags, *resolve)?,
            Reopen::Plain => openat(root.as_fd(), rel, flags)?,
            Reopen::InDir(dir, name) => {
                let dir = dir.as_ref().map_or(root.as_fd(), |d| d.as_fd());
                openat(dir, name, flags | libc::O_NOFOLLOW)?
            }
        };
        let opened = Stat::of_fd(fd.as_fd())?;
        if !opened.is_file() || !opened.same_object(&stat) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok((File::from(fd), opened))
    }
}

/// Finds `rel` beneath `root` under `policy`, opened O_PATH.
pub(crate) fn lookup(root: &RootFd, rel: &Path, policy: FollowSymlinks) -> io::Result<Found> {
    let rel = rel_bytes(rel);
    let resolve = match policy {
        FollowSymlinks::Always => {
            let fd = openat(root.as_fd(), rel, libc::O_PATH | libc::O_CLOEXEC)?;
            return found(fd, Reopen::Plain);
        }
        FollowSymlinks::Never => RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
        FollowSymlinks::InsideRoot => RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
    };
    if openat2_usable(root.as_fd()) {
        match openat2(root.as_fd(), rel, libc::O_PATH | libc::O_CLOEXEC, resolve) {
            Ok(fd) => return found(fd, Reopen::Openat2(resolve)),
            Err(e) => match e.raw_os_error() {
                Some(libc::ENOSYS) => note_blocked(&e),
                // A rename raced a `..` (the kernel gives up rather than risk it): walk.
                Some(libc::EAGAIN) => {}
                // An absolute link, or `..` that leaves and re-enters: the walk decides.
                Some(libc::EXDEV) if policy == FollowSymlinks::InsideRoot => {}
                _ => return Err(e),
            },
        }
    }
    walk(root, rel, policy == FollowSymlinks::InsideRoot)
}

/// The lookup without openat2. `follow`: symlinks are followed while they stay beneath the
/// root (`inside_root`); otherwise any symlink is refused (ELOOP).
fn walk(root: &RootFd, rel: &[u8], follow: bool) -> io::Result<Found> {
    // Directories entered below the root, innermost last: `..` pops one, and can pop no
    // further than the root.
    let mut held: Vec<OwnedFd> = Vec::new();
    // Components that symlink targets put ahead of the rest of `rel`, next one last.
    let mut spliced: Vec<Vec<u8>> = Vec::new();
    let mut rest = components(rel).peekable();
    let mut links = 0;
    loop {
        let name: Cow<[u8]> = match spliced.pop() {
            Some(c) => Cow::Owned(c),
            None => match rest.next() {
                Some(c) => Cow::Borrowed(c),
                None => break,
            },
        };
        if *name == *b".." {
            if held.pop().is_none() {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            }
            continue;
        }
        let dir = held.last().map_or(root.as_fd(), |d| d.as_fd());
        let last = spliced.is_empty() && rest.peek().is_none();
        let target = if last {
            // A stat, not an open: the object is opened only if it is to be read (or
            // listed), and a stat is the cheaper call under a seccomp filter that inspects
            // openat's flags (RestrictSUIDSGID=).
            let stat = Stat::at(dir, &name)?;
            if !stat.is_symlink() {
                let parent = held.pop();
                return Ok(Found {
                    stat,
                    fd: None,
                    reopen: Reopen::InDir(parent, name.into_owned()),
                });
            }
            // Replaced by a non-link since the stat: as if it had not been there.
            readlink(dir, &name).map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) => io::Error::from_raw_os_error(libc::ENOENT),
                _ => e,
            })?
        } else {
            let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC;
            match openat(dir, &name, flags) {
                Ok(fd) => {
                    held.push(fd);
                    continue;
                }
                // Not a directory: a symlink (read it), or a file in the middle of a path.
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => match readlink(dir, &name) {
                    Err(r) if r.raw_os_error() == Some(libc::EINVAL) => return Err(e),
                    other => other?,
                },
                Err(e) => return Err(e),
            }
        };
        links += 1;
        if !follow || links > MAX_LINKS {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        splice_link(root, &target, &mut held, &mut spliced)?;
    }
    // Nothing named, or the last step was `..`: the directory we stand in.
    let fd = match held.pop() {
        Some(fd) => fd,
        None => openat(root.as_fd(), b".", libc::O_PATH | libc::O_CLOEXEC)?,
    };
    found(fd, Reopen::InDir(None, b".".to_vec()))
}

/// Puts a symlink's target ahead of the rest of the walk: a relative target from the
/// directory holding the link, an absolute one from the root if it names a place in it.
fn splice_link(
    root: &RootFd,
    target: &[u8],
    held: &mut Vec<OwnedFd>,
    spliced: &mut Vec<Vec<u8>>,
) -> io::Result<()> {
    let target = match target.first() {
        Some(b'/') => {
            let below = root
                .below(target)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EXDEV))?;
            held.clear();
            below
        }
        Some(_) => target,
        None => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
    };
    spliced.extend(components(target).rev().map(<[u8]>::to_vec));
    Ok(())
}

fn found(fd: OwnedFd, reopen: Reopen) -> io::Result<Found> {
    Ok(Found {
        stat: Stat::of_fd(fd.as_fd())?,
        fd: Some(fd),
        reopen,
    })
}

fn rel_bytes(rel: &Path) -> &[u8] {
    match rel.as_os_str().as_bytes() {
        b"" => b".",
        bytes => bytes,
    }
}

/// The path's components, without empty ones and `.`.
fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
}

/// What is left of `target` after the components of `prefix`, if it starts with them.
fn strip_prefix<'t>(target: &'t [u8], prefix: &[u8]) -> Option<&'t [u8]> {
    let mut rest = target;
    for want in components(prefix) {
        // The next name of `target`, past separators and `.` components.
        let (name, after) = loop {
            while let Some(r) = rest.strip_prefix(b"/") {
                rest = r;
            }
            let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            let (name, after) = rest.split_at(end);
            if name != b"." {
                break (name, after);
            }
            rest = after;
        };
        if name != want {
            return None;
        }
        rest = after;
    }
    Some(rest)
}

// ------------------------------------------------------------------ openat2 availability

const UNKNOWN: u8 = 0;
const USABLE: u8 = 1;
const BLOCKED: u8 = 2;
static OPENAT2: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Whether openat2 may be called here; asked of the kernel once per process.
fn openat2_usable(dir: BorrowedFd<'_>) -> bool {
    match OPENAT2.load(Ordering::Relaxed) {
        USABLE => true,
        BLOCKED => false,
        _ => probe(dir),
    }
}

fn probe(dir: BorrowedFd<'_>) -> bool {
    match openat2(dir, b".", libc::O_PATH | libc::O_CLOEXEC, 0) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
            note_blocked(&e);
            false
        }
        // Any other answer came from the system call itself.
        _ => {
            OPENAT2.store(USABLE, Ordering::Relaxed);
            tracing::debug!("static files: paths are resolved by openat2(RESOLVE_BENEATH)");
            true
        }
    }
}

fn note_blocked(e: &io::Error) {
    if OPENAT2.swap(BLOCKED, Ordering::Relaxed) != BLOCKED {
        tracing::info!(
            error = %e,
            "static files: openat2 is not permitted here (a kernel before 5.6, or a seccomp \
             filter such as systemd's RestrictSUIDSGID=); paths are resolved one component \
             at a time with openat(O_PATH|O_NOFOLLOW), with the same guarantees"
        );
    }
}

// ------------------------------------------------------------------ system calls

fn openat(dir: BorrowedFd<'_>, path: &[u8], flags: i32) -> io::Result<OwnedFd> {
    with_c_path(path, |c| {
        // SAFETY: `dir` is an open fd for the call's duration and `c` a NUL-terminated path.
        cvt_fd(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) })
    })
}

fn openat2(dir: BorrowedFd<'_>, path: &[u8], flags: i32, resolve: u64) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; zeroed is its documented initial state.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = resolve;
    with_c_path(path, |c| {
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
        cvt_fd(fd as i32)
    })
}

/// The target of the symlink `name` in `dir` (`name` empty: `dir` is the link itself).
fn readlink(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    let n = with_c_str(name, |c| {
        // SAFETY: valid fd, C string and buffer of the length passed.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    })?;
    if n >= buf.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf.truncate(n);
    Ok(buf)
}

fn cvt_fd(fd: i32) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs `f` on `path` as a C string; an empty one is refused, as open(2) would.
fn with_c_path<T>(path: &[u8], f: impl FnOnce(&CStr) -> io::Result<T>) -> io::Result<T> {
    if path.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    with_c_str(path, f)
}

/// Typical names fit on the stack: no allocation per request for the C string.
fn with_c_str<T>(bytes: &[u8], f: impl FnOnce(&CStr) -> io::Result<T>) -> io::Result<T> {
    let mut stack = [0u8; 256];
    if bytes.len() < stack.len() {
        stack[..bytes.len()].copy_from_slice(bytes);
        let c = CStr::from_bytes_with_nul(&stack[..=bytes.len()])
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        return f(c);
    }
    f(&CString::new(bytes)?)
}

#[cfg(test)]
mod tests;
