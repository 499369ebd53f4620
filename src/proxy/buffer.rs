//! Response buffering: the upstream's response is read as fast as the app writes it, and
//! the upstream connection (with the app worker behind it) is free once the response is
//! complete, while the client is fed at its own pace. A sync worker (gunicorn's default,
//! uWSGI, unicorn) needs this in front of it; nginx does it with `proxy_buffering`.
//!
//! A response whose body has already arrived with its head is taken whole on the spot
//! (`Complete`: no task, the common small response). Any other gets a pump task that reads
//! the upstream into a shared `State`, from which the client's body (`Buffered`) takes.
//! Bytes go to the client as soon as they arrive: a client that keeps up gets each frame
//! as it comes, so a stream is never held back. What the client has not taken yet stays in
//! memory up to `buffer_memory`, then goes to a temporary file (`spool`) up to
//! `max_temp_file`; at that cap the pump waits for the client. The bytes are delivered in
//! the order `mem`, the file's unread part, `tail` (frames not yet written to the file).
//!
//! Not buffered (streamed by `body::DownBody`): routes with `buffer_responses = false`,
//! responses with `X-Accel-Buffering: no` (nginx's convention, removed here either way),
//! `text/event-stream`, and bodies that are empty. Upgrades never come here.

use super::balance::{now_ms, InFlight};
use super::body::{poll_incoming, DownBody, IdleTimeout, Stall};
use super::config::ProxyConfig;
use super::spool::{self, TempFile};
use crate::handlers::{Body, BoxError};
use crate::metrics::BUFFERS;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, CONTENT_TYPE};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::task::{AbortHandle, JoinHandle};

static X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// The body of an upstream's response on its way to the client: buffered or streamed as
/// the route and the response ask. `headers` are the response's (X-Accel-Buffering is
/// taken out of them).
pub fn response_body(
    mut incoming: Incoming,
    headers: &mut HeaderMap,
    cfg: &ProxyConfig,
    in_flight: InFlight,
) -> Body {
    let buffer = match headers.remove(&X_ACCEL_BUFFERING) {
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"no") => false,
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"yes") => true,
        _ => cfg.buffering.responses && !is_event_stream(headers),
    };
    if !buffer || incoming.is_end_stream() {
        return DownBody::new(incoming, cfg.idle_timeout, in_flight).boxed();
    }
    BUFFERS.responses.inc();
    let limits = &cfg.buffering;
    let exact = incoming.size_hint().exact();
    let mut state = State::new(limits.memory, limits.max_temp_file);
    // What came with the head (all of a small response) is taken now, without a task.
    if let Some(end) = take_ready(&mut incoming, &mut state) {
        return Complete {
            frames: state.mem,
            end: Some(end),
        }
        .boxed();
    }
    let shared = Arc::new(Shared(Mutex::new(state)));
    let pump = tokio::spawn(pump(
        incoming,
        shared.clone(),
        cfg.idle_timeout,
        limits.temp_dir.clone(),
        in_flight,
    ));
    Buffered {
        shared,
        reading: None,
        pump: pump.abort_handle(),
        remaining: exact,
    }
    .boxed()
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .get(..17)
            .is_some_and(|t| t.eq_ignore_ascii_case(b"text/event-stream"))
    })
}

/// Takes the frames the upstream has delivered already, up to the memory limit; the end
/// of the body if it came too.
fn take_ready(incoming: &mut Incoming, state: &mut State) -> Option<End> {
    let mut cx = Context::from_waker(Waker::noop());
    while state.mem_len < state.memory {
        if incoming.is_end_stream() {
            return Some(End::Done(None));
        }
        match Pin::new(&mut *incoming).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    state.push(data);
                }
                Err(frame) => return Some(End::Done(frame.into_trailers().ok())),
            },
            Poll::Ready(Some(Err(e))) => return Some(End::Failed(Some(Box::new(e)))),
            Poll::Ready(None) => return Some(End::Done(None)),
            Poll::Pending => return None,
        };
    }
    None
}

/// How a response body ended.
enum End {
    Done(Option<HeaderMap>),
    /// The upstream failed (or the client stopped reading); the error goes to the client
    /// once, after the bytes before it.
    Failed(Option<BoxError>),
}

impl End {
    /// The frame that ends a body, the first time; `None` after.
    fn take(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        match self {
            End::Done(trailers) => trailers.take().map(|t| Ok(Frame::trailers(t))),
            End::Failed(e) => Some(Err(e
                .take()
                .unwrap_or_else(|| "upstream response failed".into()))),
        }
    }

    fn is_clean_end(&self) -> bool {
        matches!(self, End::Done(None))
    }
}

/// A response read whole with its head.
struct Complete {
    frames: VecDeque<Bytes>,
    end: Option<End>,
}

impl hyper::body::Body for Complete {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.end.as_mut().and_then(End::take))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.end.as_ref().is_none_or(End::is_clean_end)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.frames.iter().map(|f| f.len() as u64).sum())
    }
}

/// What the pump has read and the client not yet taken.
struct State {
    mem: VecDeque<Bytes>,
    mem_len: usize,
    memory: usize,
    file: Option<Arc<TempFile>>,
    /// The file's unread bytes are `read..written`.
    read: u64,
    written: u64,
    max_temp_file: u64,
    /// The file was emptied: truncate it before writing to it again.
    truncate: bool,
    /// Frames after the file's, not yet written to it.
    tail: Vec<Bytes>,
    tail_len: usize,
    /// Bytes on their way from `tail` to the file.
    flushing: usize,
    /// Nothing more goes to the file: `max_temp_file` is 0, or writing failed.
    no_spill: bool,
    end: Option<End>,
    /// The client's body, waiting for bytes.
    reader: Option<Waker>,
    /// The pump, waiting for room.
    pump: Option<Waker>,
    /// `now_ms()` when the client last took bytes.
    delivered: u64,
}

impl State {
    fn new(memory: usize, max_temp_file: u64) -> State {
        State {
            mem: VecDeque::new(),
            mem_len: 0,
            memory,
            file: None,
            read: 0,
            written: 0,
            max_temp_file,
            truncate: false,
            tail: Vec::new(),
            tail_len: 0,
            flushing: 0,
            no_spill: max_temp_file == 0,
            end: None,
            reader: None,
            pump: None,
            delivered: now_ms(),
        }
    }

    /// Bytes that come after `mem` wait in the file or its tail.
    fn spilling(&self) -> bool {
        self.read < self.written || self.tail_len > 0 || self.flushing > 0
    }

    /// Whether the pump may read another frame.
    fn has_room(&self) -> bool {
        if !self.spilling() && self.mem_len < self.memory {
            return true;
        }
        let file_size = self.written + (self.flushing + self.tail_len) as u64;
        !self.no_spill && file_size < self.max_temp_file
    }

    /// Adds a frame; true when the tail should now be written to the file.
    fn push(&mut self, data: Bytes) -> bool {
        if !self.spilling() && (self.mem_len < self.memory || self.no_spill) {
            self.mem_len += data.len();
            self.mem.push_back(data);
        } else {
            self.tail_len += data.len();
            self.tail.push(data);
        }
        wake(&mut self.reader);
        !self.no_spill && self.tail_len >= self.memory && self.written < self.max_temp_file
    }

    /// Takes the frames of the tail that fit in the file under `max_temp_file` (the last
    /// one split if need be) for a write, which is then in flight.
    fn take_flush(&mut self) -> Vec<Bytes> {
        let mut room = self.max_temp_file.saturating_sub(self.written);
        let (mut batch, mut taken) = (Vec::new(), 0);
        let mut rest = std::mem::take(&mut self.tail).into_iter();
        for mut data in rest.by_ref() {
            if room == 0 {
                self.tail.push(data);
                break;
            }
            if data.len() as u64 > room {
                self.tail.push(data.split_off(room as usize));
            }
            room -= data.len() as u64;
            taken += data.len();
            batch.push(data);
        }
        self.tail.extend(rest);
        self.tail_len -= taken;
        self.flushing = taken;
        batch
    }

    fn finish(&mut self, end: End) {
        self.end = Some(end);
        wake(&mut self.reader);
    }

    /// The client's next bytes from memory, if they are there.
    fn take_mem(&mut self) -> Option<Bytes> {
        if self.mem.is_empty() && self.read == self.written && self.flushing == 0 {
            // The file is drained: the tail is next.
            self.mem_len = self.tail_len;
            self.mem.extend(self.tail.drain(..));
            self.tail_len = 0;
        }
        let data = self.mem.pop_front()?;
        self.mem_len -= data.len();
        self.delivered = now_ms();
        wake(&mut self.pump);
        Some(data)
    }

    /// `n` bytes of the file were delivered.
    fn file_read(&mut self, n: u64) {
        self.read += n;
        self.delivered = now_ms();
        if self.read == self.written && self.flushing == 0 {
            // Start over at the beginning, giving the disk space back first.
            self.read = 0;
            self.written = 0;
            self.truncate = true;
        }
        wake(&mut self.pump);
    }

    fn is_end_stream(&self) -> bool {
        self.mem.is_empty() && !self.spilling() && self.end.as_ref().is_some_and(End::is_clean_end)
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(w) = waker.take() {
        w.wake();
    }
}

struct Shared(Mutex<State>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever a panicking holder did.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads the upstream's response into `shared` until it ends, the client goes away (the
/// task is aborted) or the client takes nothing for `idle` while the buffer is full.
/// Dropping `incoming` at the end hands the connection back to the pool.
async fn pump(
    mut incoming: Incoming,
    shared: Arc<Shared>,
    idle: Duration,
    temp_dir: Arc<Path>,
    in_flight: InFlight,
) {
    let mut stall = Stall::new(idle);
    loop {
        if !shared.lock().has_room() && !room(&shared, idle).await {
            tracing::debug!("client stopped reading for {idle:?}; upstream released");
            let mut st = shared.lock();
            // Free the memory and the disk now, not when the client's connection ends.
            (st.mem, st.tail, st.file) = (VecDeque::new(), Vec::new(), None);
            (st.mem_len, st.tail_len, st.read, st.written) = (0, 0, 0, 0);
            st.finish(End::Failed(Some(Box::new(IdleTimeout(idle)))));
            return;
        }
        let frame = std::future::poll_fn(|cx| poll_incoming(&mut incoming, &mut stall, cx)).await;
        let end = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if shared.lock().push(data) && !flush(&shared, &temp_dir).await {
                        return;
                    }
                    continue;
                }
                Err(frame) => End::Done(frame.into_trailers().ok()),
            },
            Some(Err(e)) => End::Failed(Some(e)),
            None => End::Done(None),
        };
        // The upstream is free now; what a slow client has left waits on disk, not in memory.
        drop((incoming, in_flight));
        let spill_tail = {
            let st = shared.lock();
            st.tail_len > 0 && !st.no_spill && st.written < st.max_temp_file
        };
        if spill_tail && !flush(&shared, &temp_dir).await {
            return;
        }
        shared.lock().finish(end);
        return;
    }
}

/// Waits until the pump may read again; false if the client took nothing for `idle`.
async fn room(shared: &Shared, idle: Duration) -> bool {
    loop {
        let wait = std::future::poll_fn(|cx| {
            let mut st = shared.lock();
            if st.has_room() {
                return Poll::Ready(());
            }
            st.pump = Some(cx.waker().clone());
            Poll::Pending
        });
        if tokio::time::timeout(idle, wait).await.is_ok() {
            return true;
        }
        let since = now_ms().saturating_sub(shared.lock().delivered);
        if u128::from(since) >= idle.as_millis() {
            return false;
        }
    }
}

/// Writes the tail to the file (created on first use). When that fails, the response goes
/// on from memory at the client's pace. False if the response cannot go on.
async fn flush(shared: &Shared, temp_dir: &Arc<Path>) -> bool {
    let (batch, offset, truncate, file) = {
        let mut st = shared.lock();
        let batch = st.take_flush();
        let truncate = std::mem::take(&mut st.truncate);
        (batch, st.written, truncate, st.file.clone())
    };
    let dir = temp_dir.clone();
    let written = tokio::task::spawn_blocking(move || {
        let file = match file {
            Some(f) => f,
            None => match TempFile::create(&dir) {
                Ok(f) => Arc::new(f),
                Err(e) => return Err((e, batch)),
            },
        };
        if truncate {
            if let Err(e) = file.truncate() {
                return Err((e, batch));
            }
        }
        match file.write_at(&batch, offset) {
            Ok(n) => Ok((file, n)),
            Err(e) => Err((e, batch)),
        }
    })
    .await;
    let mut st = shared.lock();
    let n = st.flushing;
    st.flushing = 0;
    match written {
        Ok(Ok((file, written))) => {
            st.file = Some(file);
            st.written += written;
            BUFFERS.spilled_response_bytes.inc_by(written);
        }
        Ok(Err((e, mut batch))) => {
            tracing::warn!(
                "cannot buffer a response in {}: {e}; it goes on at the client's pace",
                temp_dir.display()
            );
            // Back in front of what stayed in the tail.
            batch.append(&mut st.tail);
            st.tail = batch;
            st.tail_len += n;
            st.no_spill = true;
        }
        Err(e) => {
            // The write panicked, and the bytes with it.
            st.finish(End::Failed(Some(Box::new(io::Error::other(e)))));
            return false;
        }
    }
    wake(&mut st.reader);
    true
}

/// The client's side of a buffered response.
struct Buffered {
    shared: Arc<Shared>,
    /// A read from the temporary file in flight.
    reading: Option<JoinHandle<io::Result<Bytes>>>,
    pump: AbortHandle,
    /// Bytes still to deliver, when the upstream declared a length.
    remaining: Option<u64>,
}

impl Buffered {
    fn delivered(&mut self, data: Bytes) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(r) = &mut self.remaining {
            *r = r.saturating_sub(data.len() as u64);
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

impl hyper::body::Body for Buffered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(read) = &mut this.reading {
                let chunk = std::task::ready!(spool::poll_chunk(read, cx));
                this.reading = None;
                return match chunk {
                    Ok(data) => {
                        this.shared.lock().file_read(data.len() as u64);
                        this.delivered(data)
                    }
                    Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
                };
            }
            let mut st = this.shared.lock();
            if let Some(data) = st.take_mem() {
                drop(st);
                return this.delivered(data);
            }
            if st.read < st.written {
                if let Some(file) = &st.file {
                    this.reading = Some(spool::read_chunk(file, st.read, st.written));
                    continue;
                }
            }
            if st.spilling() {
                // The only bytes left are on their way to the file.
                st.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            return match &mut st.end {
                Some(end) => Poll::Ready(end.take()),
                None => {
                    st.reader = Some(cx.waker().clone());
                    Poll::Pending
                }
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        // All of a declared length delivered: hyper checked the upstream's framing.
        self.remaining == Some(0) || (self.reading.is_none() && self.shared.lock().is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

impl Drop for Buffered {
    fn drop(&mut self) {
        // The client is gone (or has everything): a pump still reading lets the upstream go.
        self.pump.abort();
    }
}
