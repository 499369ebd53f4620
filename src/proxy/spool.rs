//! Temporary files for buffered bodies, and request bodies read whole before forwarding.
//!
//! A body larger than `buffer_memory` goes to a file created with `O_TMPFILE` in
//! `temp_dir`: it has no name, so no other process can open it and it never outlives its
//! request, crash included. A filesystem without `O_TMPFILE` gets a named file that is
//! unlinked as soon as it is open. File I/O runs on the connection's thread, as nginx does
//! it, until the disk proves slow (see `file_work`).

use super::body::{poll_incoming, IdleTimeout, Stall};
use super::file_work;
use crate::config::proxy::ProxyConfig;
use crate::http_base::BoxError;
use crate::metrics::BUFFERS;
use crate::sendfile::FileRegions;
use bytes::Bytes;
use http::header::{HeaderMap, CONTENT_TYPE};
use http::StatusCode;
use hyper::body::Incoming;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{ready, Context, Poll};

/// Bytes read back from a temporary file at a time: hyper's write buffer to the client
/// holds about that much (`max_buf_size`), so a chunk never waits beside a full one.
/// Larger chunks (256 KiB) did not make a 1 MiB upload cheaper, only the peak RSS higher.
const READ_CHUNK: u64 = 64 * 1024;

/// Request bodies read back from their temporary files as mappings, for the upstream
/// connection's writer (`connector`) to send with sendfile(2): the kernel copies each byte
/// once, from the page cache to the socket, where reading the file into memory and writing
/// it out again copied it twice, through a zeroed buffer (bench/proxy.sh, POST 1 MiB).
pub(crate) static SPOOLED_FILES: LazyLock<Arc<FileRegions>> = LazyLock::new(Default::default);

/// Bytes of a mapped body hyper takes at a time: the request's progress (which times the
/// wait for the response, see `proxy::send`) is recorded as it takes each.
const MAPPED_FRAME: u64 = 1024 * 1024;

/// An unlinked temporary file. Its size is counted in `gatehouse_proxy_temp_file_bytes`
/// until it is truncated or closed.
pub(crate) struct TempFile {
    file: Arc<File>,
    accounted: AtomicU64,
}

impl TempFile {
    /// Creates one in `dir` (blocking).
    pub(crate) fn create(dir: &Path) -> io::Result<TempFile> {
        let file = match open_unnamed(dir) {
            Ok(f) => f,
            // EOPNOTSUPP: the filesystem lacks O_TMPFILE; EISDIR/EINVAL: the kernel does.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                ) =>
            {
                open_named_then_unlink(dir)?
            }
            Err(e) => return Err(e),
        };
        Ok(TempFile {
            file: Arc::new(file),
            accounted: AtomicU64::new(0),
        })
    }

    /// Writes `bufs` at `offset` with `pwritev`, without copying them together (blocking).
    /// Returns the bytes written.
    pub(crate) fn write_at(&self, bufs: &[Bytes], offset: u64) -> io::Result<u64> {
        let len: usize = bufs.iter().map(Bytes::len).sum();
        let mut slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
        let mut rest = &mut slices[..];
        let mut at = offset;
        while !rest.is_empty() {
            match pwritev(&self.file, rest, at) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    IoSlice::advance_slices(&mut rest, n);
                    at += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let end = offset + len as u64;
        let before = self.accounted.fetch_max(end, Ordering::Relaxed);
        if end > before {
            BUFFERS.temp_file_bytes.inc_by(gauge(end - before));
        }
        Ok(len as u64)
    }

    /// Reads `len` bytes at `offset` (blocking).
    #[cfg(test)]
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        self.read_into(vec![0u8; len], offset)
    }

    /// Fills `buf` from `offset` (blocking).
    fn read_into(&self, mut buf: Vec<u8>, offset: u64) -> io::Result<Bytes> {
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf.into())
    }

    /// Frees the file's blocks: everything in it was delivered (blocking).
    pub(crate) fn truncate(&self) -> io::Result<()> {
        self.file.set_len(0)?;
        let before = self.accounted.swap(0, Ordering::Relaxed);
        BUFFERS.temp_file_bytes.dec_by(gauge(before));
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        BUFFERS
            .temp_file_bytes
            .dec_by(gauge(*self.accounted.get_mut()));
    }
}

/// One pwritev(2): no lseek before it, and no shared file position.
fn pwritev(file: &File, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<usize> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::FileTooLarge)?;
    // The kernel takes at most IOV_MAX (1024) slices a call; the loop above sends the rest.
    let count = bufs.len().min(1024) as libc::c_int;
    // SAFETY: IoSlice is ABI-compatible with iovec on Unix (std guarantees it); the slices
    // and the descriptor outlive the call.
    let n = unsafe { libc::pwritev(file.as_raw_fd(), bufs.as_ptr().cast(), count, offset) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn open_unnamed(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
}

fn open_named_then_unlink(dir: &Path) -> io::Result<File> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = dir.join(format!(
        ".gatehouse-body-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&name)?;
    std::fs::remove_file(&name)?;
    Ok(file)
}

/// Runs io::Result file work where `file_work` says.
async fn file_io<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    file_work::run(work)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// A chunk of a temporary file being read.
pub(crate) type ChunkRead = file_work::Started<io::Result<Bytes>>;

/// Reads the next chunk of `file[offset..end]` (see `file_work` for where).
pub(crate) fn read_chunk(file: &Arc<TempFile>, offset: u64, end: u64) -> ChunkRead {
    let len = (end - offset).min(READ_CHUNK) as usize;
    // Allocated here, not on a blocking thread: freed here too once hyper has sent it, it
    // stays in this thread's malloc arena instead of growing one per blocking thread
    // (bench/proxy.sh, 50 concurrent 1 MiB uploads: peak RSS 61-68 → 45 MiB).
    let buf = vec![0u8; len];
    let file = file.clone();
    file_work::start(move || file.read_into(buf, offset))
}

/// Polls a `read_chunk`.
pub(crate) fn poll_chunk(read: &mut ChunkRead, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
    read.poll(cx)
        .map(|r| r.unwrap_or_else(|e| Err(io::Error::other(e))))
}

/// A request body read whole: its frames in memory, or a temporary file. Every attempt to
/// send it gets its own cheap copy.
#[derive(Clone)]
pub(crate) enum Spooled {
    Memory(Vec<Bytes>),
    File { file: Arc<TempFile>, len: u64 },
}

impl Spooled {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Spooled::Memory(frames) => frames.iter().map(|f| f.len() as u64).sum(),
            Spooled::File { len, .. } => *len,
        }
    }
}

/// A spooled file body on its way to the upstream: mapped (see `SPOOLED_FILES`), or, if
/// it cannot be, read back a chunk at a time.
pub(crate) struct Replay {
    file: Arc<TempFile>,
    offset: u64,
    end: u64,
    mapped: Option<Bytes>,
    reading: Option<ChunkRead>,
}

impl Replay {
    pub(crate) fn new(file: Arc<TempFile>, len: u64) -> Replay {
        // Never truncated while it is sent (request bodies' files are not), and nobody else
        // can open it: what `map_private` asks.
        let mapped = (len > 0)
            .then(|| SPOOLED_FILES.map_private(&file.file, len))
            .and_then(|m| {
                m.map_err(
                    |e| tracing::debug!(error = %e, "reading a spooled body instead of mapping it"),
                )
                .ok()
            });
        Replay {
            file,
            offset: 0,
            end: len,
            mapped,
            reading: None,
        }
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.end - self.offset
    }

    pub(crate) fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if self.offset >= self.end {
            return Poll::Ready(None);
        }
        if let Some(mapped) = &self.mapped {
            let len = self.remaining().min(MAPPED_FRAME);
            let frame = mapped.slice(self.offset as usize..(self.offset + len) as usize);
            self.offset += len;
            return Poll::Ready(Some(Ok(frame)));
        }
        let (file, offset, end) = (&self.file, self.offset, self.end);
        let read = self
            .reading
            .get_or_insert_with(|| read_chunk(file, offset, end));
        let r = ready!(poll_chunk(read, cx));
        self.reading = None;
        if let Ok(chunk) = &r {
            self.offset += chunk.len() as u64;
        }
        Poll::Ready(Some(r))
    }
}

/// Why a request body could not be read whole.
#[derive(Debug)]
pub(crate) enum ReadError {
    TooLarge,
    /// No body byte for `idle_timeout`.
    Idle,
    /// The client's connection failed or it sent a malformed body.
    Client(hyper::Error),
    /// The temporary file could not be created or written.
    Spill(io::Error),
}

impl ReadError {
    /// What `poll_incoming` reported: hyper's error about the client's body, or the stall.
    fn of_body(e: BoxError) -> ReadError {
        if e.is::<IdleTimeout>() {
            return ReadError::Idle;
        }
        match e.downcast::<hyper::Error>() {
            Ok(e) => ReadError::Client(*e),
            // An `Incoming` fails with nothing else.
            Err(e) => ReadError::Spill(io::Error::other(e)),
        }
    }

    /// The answer to the request (its connection is closed: the body was not read to its
    /// end). A client's failure is the client's 4xx; only our own disk is a 500.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ReadError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ReadError::Idle => StatusCode::REQUEST_TIMEOUT,
            ReadError::Client(_) => StatusCode::BAD_REQUEST,
            ReadError::Spill(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Once a body is in a file, what is written to it at a time. Fewer, larger writes were
/// cheaper (POST 1 MiB at 64 connections, 6 alternating pairs of 3 s runs: 1228-1383 µs
/// of CPU a request in batches of 64 KiB, 1171-1266 in batches of 256 KiB; nginx writes
/// its 128 KiB buffer at a time). The frames wait in memory meanwhile: this is the most a
/// spilled body keeps there.
const SPILL_BATCH: usize = 256 * 1024;

/// Without `buffer_requests`, request bodies up to this size with a Content-Length are still
/// read whole first: the upstream gets them in one write, and they can be sent again.
const SMALL_BODY: u64 = 64 * 1024;

/// Whether a request body is read whole before an upstream is involved (nginx's request
/// buffering: no app worker waits on a slow upload, and the upstream gets the body at local
/// speed with a Content-Length), and if so, how much of it may stay in memory. Never for an
/// upgrade, whose bytes after the head belong to the tunnel, nor for gRPC, whose streaming
/// calls send messages while the answer comes back (read whole first, they would wait for
/// each other).
pub(crate) fn reads_first(
    cfg: &ProxyConfig,
    declared: Option<u64>,
    upgrade: bool,
    head: &HeaderMap,
) -> Option<usize> {
    if upgrade || content_type_is(head, b"application/grpc") {
        None
    } else if cfg.buffering.requests {
        Some(cfg.buffering.memory)
    } else {
        declared
            .is_some_and(|n| n <= SMALL_BODY)
            .then_some(SMALL_BODY as usize)
    }
}

/// Whether the Content-Type starts with `prefix` (case-insensitive: `application/grpc+proto`
/// is gRPC, `text/event-stream; charset=utf-8` an event stream).
pub(crate) fn content_type_is(head: &HeaderMap, prefix: &[u8]) -> bool {
    head.get(CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .get(..prefix.len())
            .is_some_and(|t| t.eq_ignore_ascii_case(prefix))
    })
}

/// Reads a request body whole: in memory up to `memory` bytes, then in a temporary file.
/// `max_body` is enforced as it comes, so an oversized chunked body is refused before the
/// app sees a byte of it. Trailers are dropped: the body goes upstream with a
/// Content-Length, which leaves no room for them.
pub(crate) async fn read_request(
    mut body: Incoming,
    cfg: &ProxyConfig,
    memory: usize,
) -> Result<Spooled, ReadError> {
    let (max_body, idle, temp_dir) = (cfg.max_body, cfg.idle_timeout, &cfg.buffering.temp_dir);
    let mut mem: Vec<Bytes> = Vec::new();
    let mut mem_len = 0usize;
    let mut file: Option<Arc<TempFile>> = None;
    let mut written = 0u64;
    // Armed only once the client makes us wait: a body that is already here costs no timer.
    let mut stall = Stall::new(idle);
    loop {
        let frame = std::future::poll_fn(|cx| poll_incoming(&mut body, &mut stall, cx)).await;
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(ReadError::of_body(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_trailers) => continue,
            },
        };
        if max_body.is_some_and(|max| written + (mem_len + data.len()) as u64 > max) {
            return Err(ReadError::TooLarge);
        }
        mem_len += data.len();
        mem.push(data);
        let batch = if file.is_some() {
            memory.max(SPILL_BATCH)
        } else {
            memory
        };
        if mem_len > batch {
            let f = match &file {
                Some(f) => f.clone(),
                None => {
                    let dir = temp_dir.clone();
                    let created = file_io(move || TempFile::create(&dir)).await;
                    file.insert(Arc::new(created.map_err(|e| spill(e, temp_dir))?))
                        .clone()
                }
            };
            let frames = std::mem::take(&mut mem);
            written += write(f, frames, written)
                .await
                .map_err(|e| spill(e, temp_dir))?;
            mem_len = 0;
        }
    }
    BUFFERS.requests.inc();
    let Some(f) = file else {
        return Ok(Spooled::Memory(mem));
    };
    if !mem.is_empty() {
        written += write(f.clone(), mem, written)
            .await
            .map_err(|e| spill(e, temp_dir))?;
    }
    BUFFERS.spilled_request_bytes.inc_by(written);
    Ok(Spooled::File {
        file: f,
        len: written,
    })
}

async fn write(file: Arc<TempFile>, frames: Vec<Bytes>, offset: u64) -> io::Result<u64> {
    file_io(move || file.write_at(&frames, offset)).await
}

fn spill(e: io::Error, temp_dir: &Path) -> ReadError {
    tracing::warn!(
        "cannot buffer a request body in {}: {e}",
        temp_dir.display()
    );
    ReadError::Spill(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_have_no_name_and_read_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let f = TempFile::create(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let parts = [Bytes::from_static(b"hello "), Bytes::from_static(b"world")];
        assert_eq!(f.write_at(&parts, 0).unwrap(), 11);
        assert_eq!(f.write_at(&parts[1..], 11).unwrap(), 5);
        assert_eq!(&f.read_at(0, 16).unwrap()[..], b"hello worldworld");
        f.truncate().unwrap();
        assert!(f.read_at(0, 1).is_err());
    }

    #[test]
    fn the_named_fallback_is_unlinked_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let f = open_named_then_unlink(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        f.write_all_at(b"x", 0).unwrap();
    }
}
