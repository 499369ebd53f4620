//! Large static files leave through sendfile(2), though hyper writes every response.
//!
//! Reading a file into memory and writing it to the socket copies every byte twice; nginx's
//! `sendfile on` copies none in user space, which made a 1 MiB file cost gatehouse about
//! four times nginx's CPU at 64 connections. hyper owns the socket and takes a body only
//! as bytes, so a large file's body is one frame whose bytes are a read-only mapping of the
//! file, registered here. Nothing in gatehouse reads those bytes: the connection's writer
//! (`server::conn`) recognises the slice by its address when hyper hands it over and sends
//! that part of the file with sendfile(2) instead, so no page is ever faulted in.
//!
//! Request bodies that were read whole into a temporary file (`proxy::spool`) go to the
//! upstream the same way: one process-wide `FileRegions` for them, which every upstream
//! connection's writer (`proxy::connector`) consults. Those files are unnamed and never
//! truncated while mapped, so their bytes are safe even to read (`map_private`): HTTP/2
//! upstreams copy them into frames (tests/proxy_balance.rs has a spooled upload over h2c).
//!
//! Only plaintext HTTP/1 client connections get a `FileRegions`: TLS and HTTP/2 copy the bytes
//! into their own records and frames. The kernel reading the mapping (a plain write) would
//! still send the file's bytes, and turns a page past a truncated end into EFAULT; but a
//! read in user space of such a page raises SIGBUS and ends the process. So a static file's
//! mapping is handed out only as a body (`Full`), whose bytes only hyper's writer takes, and hyper
//! is held to queueing them (`snapshot`: `writev(true)`). A file truncated while being sent
//! makes sendfile return 0: hyper then closes the connection, as nginx does.

use bytes::Bytes;
use http_body_util::Full;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

mod socket;
pub(crate) use socket::SendFile;

/// Mappings alive in the process: each takes one of the kernel's `vm.max_map_count` (65530
/// by default), which every other mmap (large allocations, thread stacks) shares. Past this
/// many, files are read instead.
const MAX_MAPPINGS: usize = 16 * 1024;
static MAPPINGS: AtomicUsize = AtomicUsize::new(0);

/// The mapped file bodies of one connection that hyper has not finished writing.
#[derive(Default)]
pub(crate) struct FileRegions {
    /// How many are registered: a write with none pays one atomic load.
    count: AtomicUsize,
    list: Mutex<Vec<Region>>,
}

struct Region {
    /// Address and length of the body's bytes in the mapping.
    start: usize,
    len: usize,
    file: Arc<File>,
    /// Where `start` is in the file.
    offset: u64,
}

/// What to do with the slices hyper asks to write.
pub(crate) enum Write {
    /// The first `n` slices are ordinary bytes; a mapped body follows them.
    Before(usize),
    /// The first slice is (part of) a mapped body: send `len` bytes of `file` at `offset`.
    File {
        file: Arc<File>,
        offset: u64,
        len: usize,
    },
}

impl FileRegions {
    fn lock(&self) -> MutexGuard<'_, Vec<Region>> {
        // A panic elsewhere cannot leave the list half-changed: push and swap_remove.
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `len` bytes of `file` from `offset`, as a body that the connection's writer sends
    /// with sendfile(2). `len` must be > 0. The file comes back if it cannot be mapped (a
    /// filesystem without mmap, too many mappings): it can still be read.
    pub(crate) fn map(
        self: &Arc<Self>,
        file: File,
        offset: u64,
        len: u64,
    ) -> Result<Full<Bytes>, (io::Error, File)> {
        match RawMapping::new(&file, offset, len) {
            Ok(raw) => Ok(Full::new(self.register(raw, Arc::new(file)))),
            Err(e) => Err((e, file)),
        }
    }

    /// `len` bytes of a file that no other process can open and that nothing truncates
    /// while it is mapped (a request body's unnamed temporary file), for a writer that
    /// sends it with sendfile(2). Such a file has no page past its end, so these bytes
    /// are even safe to read (only slow: every page faults in); a file someone else can
    /// truncate must go through `map`. `len` must be > 0.
    pub(crate) fn map_private(self: &Arc<Self>, file: &Arc<File>, len: u64) -> io::Result<Bytes> {
        let raw = RawMapping::new(file, 0, len)?;
        Ok(self.register(raw, file.clone()))
    }

    fn register(self: &Arc<Self>, raw: RawMapping, file: Arc<File>) -> Bytes {
        let RawMapping {
            ptr,
            map_len,
            skip,
            offset,
        } = raw;
        let start = ptr as usize + skip;
        let mapping = Mapping {
            ptr,
            map_len,
            start,
            regions: self.clone(),
        };
        self.lock().push(Region {
            start,
            len: map_len - skip,
            file,
            offset,
        });
        self.count.fetch_add(1, Ordering::Release);
        Bytes::from_owner(mapping).slice(skip..)
    }

    /// Whether `bufs` reach a mapped body, and where.
    pub(crate) fn find(&self, bufs: &[IoSlice<'_>]) -> Option<Write> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let list = self.lock();
        for (i, buf) in bufs.iter().enumerate() {
            let at = buf.as_ptr() as usize;
            let Some(r) = list.iter().find(|r| at >= r.start && at < r.start + r.len) else {
                continue;
            };
            if i > 0 {
                return Some(Write::Before(i));
            }
            let into = at - r.start;
            return Some(Write::File {
                file: r.file.clone(),
                offset: r.offset + into as u64,
                len: buf.len().min(r.len - into),
            });
        }
        None
    }

    fn remove(&self, start: usize) {
        let mut list = self.lock();
        if let Some(i) = list.iter().position(|r| r.start == start) {
            list.swap_remove(i);
            self.count.fetch_sub(1, Ordering::Release);
        }
    }
}

/// A mapping just made, not yet owned by a `Mapping` (counted in `MAPPINGS`).
struct RawMapping {
    ptr: *mut libc::c_void,
    map_len: usize,
    /// Where the body starts in the mapping (which starts on a page boundary).
    skip: usize,
    /// Where the body starts in the file.
    offset: u64,
}

impl RawMapping {
    fn new(file: &File, offset: u64, len: u64) -> io::Result<RawMapping> {
        let skip = (offset % page_size()) as usize;
        let sizes = usize::try_from(len).ok().and_then(|body_len| {
            let map_len = body_len.checked_add(skip)?;
            let map_offset = libc::off_t::try_from(offset - skip as u64).ok()?;
            Some((map_len, map_offset))
        });
        let Some((map_len, map_offset)) = sizes else {
            return Err(io::ErrorKind::FileTooLarge.into());
        };
        if MAPPINGS.fetch_add(1, Ordering::Relaxed) >= MAX_MAPPINGS {
            MAPPINGS.fetch_sub(1, Ordering::Relaxed);
            return Err(io::Error::other("too many files mapped"));
        }
        // SAFETY: a new shared, read-only mapping of an open file; the kernel picks the
        // address. Its bytes are handed out only as `map` and `map_private` say, and
        // `Mapping` unmaps it exactly once.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                map_offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            MAPPINGS.fetch_sub(1, Ordering::Relaxed);
            return Err(io::Error::last_os_error());
        }
        Ok(RawMapping {
            ptr,
            map_len,
            skip,
            offset,
        })
    }
}

/// Owns one mapping; deregisters it before unmapping, so that no later allocation at the
/// same address is ever taken for file bytes.
struct Mapping {
    ptr: *mut libc::c_void,
    map_len: usize,
    start: usize,
    regions: Arc<FileRegions>,
}

// SAFETY: the mapping is read-only and owned by this value alone; the pointer is only
// handed out as a byte slice (which is Send and Sync) and unmapped in Drop.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared access is read-only.
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `map_len` bytes until Drop.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.map_len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        self.regions.remove(self.start);
        // SAFETY: the mapping made in `map`, unmapped once; no slice of it outlives the
        // `Bytes` that owned this value.
        unsafe { libc::munmap(self.ptr, self.map_len) };
        MAPPINGS.fetch_sub(1, Ordering::Relaxed);
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// One sendfile(2) of up to `len` bytes of `file` at `offset` to the socket `out`
/// (non-blocking: WouldBlock when the socket is full). Ok(0) means the file ended early.
pub(crate) fn send(out: &impl AsRawFd, file: &File, offset: u64, len: usize) -> io::Result<usize> {
    let mut off = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::FileTooLarge)?;
    // SAFETY: both descriptors are open for the call; `off` is a valid local.
    let n = unsafe { libc::sendfile(out.as_raw_fd(), file.as_raw_fd(), &mut off, len) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn file_of(len: usize) -> (File, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        (f, data)
    }

    /// What hyper would take from the body (reading the mapping: fine in a test).
    fn the_bytes(mut body: Full<Bytes>) -> Bytes {
        use http_body::Body as _;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap(),
            _ => panic!("a Full body has its frame at once"),
        }
    }

    #[test]
    fn a_mapped_body_is_found_by_address_and_forgotten_when_dropped() {
        let regions = Arc::new(FileRegions::default());
        let (f, data) = file_of(10_000);
        // An offset that is not page-aligned: the mapping starts earlier, the body does not.
        let body = regions.map(f, 5_000, 4_000).map_err(|(e, _)| e).unwrap();
        let body = the_bytes(body);
        assert_eq!(&body[..], &data[5_000..9_000]);
        let head = b"HTTP/1.1 200 OK\r\n\r\n";
        let bufs = [IoSlice::new(head), IoSlice::new(&body[100..])];
        assert!(matches!(regions.find(&bufs), Some(Write::Before(1))));
        match regions.find(&bufs[1..]) {
            Some(Write::File { offset, len, .. }) => assert_eq!((offset, len), (5_100, 3_900)),
            _ => panic!("the body was not found"),
        }
        assert!(regions.find(&[IoSlice::new(head)]).is_none());
        drop(body);
        assert!(regions.find(&[IoSlice::new(head)]).is_none());
        assert_eq!(regions.count.load(Ordering::Acquire), 0);
        assert!(regions.lock().is_empty());
        assert_eq!(
            MAPPINGS.load(Ordering::Relaxed),
            0,
            "the mapping is counted and gone"
        );
    }

    #[test]
    fn send_writes_the_files_bytes_and_reports_its_end() {
        let (f, data) = file_of(300_000);
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut &b, &mut got).unwrap();
            got
        });
        let mut at = 1_000u64;
        while at < data.len() as u64 {
            let n = send(&a, &f, at, 1 << 20).unwrap();
            assert!(n > 0);
            at += n as u64;
        }
        assert_eq!(send(&a, &f, at, 1 << 20).unwrap(), 0, "past the end");
        a.flush().unwrap();
        drop(a);
        assert!(reader.join().unwrap() == data[1_000..]);
    }
}
