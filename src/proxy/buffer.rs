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
//! `max_temp_file`; at that cap the pump waits for the client (one that takes nothing loses
//! its connection after `send_timeout`, and the pump with it). The bytes are delivered in
//! the order `mem`, the file's unread part, `tail` (frames not yet written to the file).
//!
//! Not buffered (streamed by `body::DownBody`): routes with `buffer_responses = false`,
//! responses with `X-Accel-Buffering: no` (nginx's convention, removed here either way),
//! `text/event-stream`, and bodies that are empty. Upgrades never come here.

mod queue;

use super::balance::InFlight;
use super::body::{poll_incoming, DownBody, Stall};
use super::lean::UpstreamBody;
use super::spool::{self, TempFile};
use crate::config::proxy::ProxyConfig;
use crate::http_base::{Body, BoxError};
use crate::metrics::BUFFERS;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use queue::{wake, End, Shared, State};
use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::task::AbortHandle;

static X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// The body of an upstream's response on its way to the client: buffered or streamed as
/// the route and the response ask. `headers` are the response's (X-Accel-Buffering is
/// taken out of them).
pub(crate) fn response_body(
    mut incoming: UpstreamBody,
    headers: &mut HeaderMap,
    cfg: &ProxyConfig,
    in_flight: InFlight,
) -> Body {
    let buffer = match headers.remove(&X_ACCEL_BUFFERING) {
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"no") => false,
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"yes") => true,
        _ => cfg.buffering.responses && !spool::content_type_is(headers, b"text/event-stream"),
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
    let upstream = Upstream {
        idle: cfg.idle_timeout,
        temp_dir: limits.temp_dir.clone(),
        in_flight,
    };
    buffered(incoming, state, upstream, exact).boxed()
}

/// Starts the pump; the client's side of the response.
fn buffered<B, G>(body: B, state: State, upstream: Upstream<G>, exact: Option<u64>) -> Buffered
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    G: Send + 'static,
{
    let shared = Arc::new(Shared(Mutex::new(state)));
    let pump = tokio::spawn(pump(body, shared.clone(), upstream));
    Buffered {
        shared,
        reading: None,
        pump: pump.abort_handle(),
        remaining: exact,
    }
}

/// What the pump needs of the route, and `in_flight`: held until the upstream is done.
struct Upstream<G> {
    idle: Duration,
    temp_dir: Arc<Path>,
    in_flight: G,
}

/// Takes the frames the upstream has delivered already, up to the memory limit; the end
/// of the body if it came too.
fn take_ready(incoming: &mut UpstreamBody, state: &mut State) -> Option<End> {
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
            Poll::Ready(Some(Err(e))) => return Some(End::Failed(Some(e))),
            Poll::Ready(None) => return Some(End::Done(None)),
            Poll::Pending => return None,
        };
    }
    None
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

/// Reads the upstream's response into `shared` until it ends or the client goes away (the
/// task is aborted). Dropping `incoming` at the end hands the connection back to the pool.
async fn pump<B, G>(mut incoming: B, shared: Arc<Shared>, upstream: Upstream<G>)
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let Upstream {
        idle,
        temp_dir,
        in_flight,
    } = upstream;
    let mut stall = Stall::new(idle);
    let mut yielded = false;
    loop {
        let (full, memory_full) = {
            let st = shared.lock();
            (!st.has_room(), !st.spilling() && st.mem_len >= st.memory)
        };
        if full {
            // However long: a client that takes nothing loses its connection after the
            // server's send_timeout, judged at its socket, and this task with it.
            room(&shared).await;
            // That wait was the client's: the upstream's silence is timed from now.
            stall.progress();
        } else if memory_full && !yielded {
            // The next frame would start the temporary file. A body that is always ready
            // (the lean client reads its socket directly; hyper's arrives a frame per run
            // of its connection task) would get there before a client that keeps up had
            // its turn: give it one, and spill only if it took nothing.
            yielded = true;
            tokio::task::yield_now().await;
            continue;
        }
        yielded = memory_full;
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

/// Waits until the client has taken enough for the pump to read again.
async fn room(shared: &Shared) {
    std::future::poll_fn(|cx| {
        let mut st = shared.lock();
        if st.has_room() {
            return Poll::Ready(());
        }
        st.pump = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
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
    let written = super::file_work::run(move || {
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
    reading: Option<spool::ChunkRead>,
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
                if let Some(file) = st.file.clone() {
                    let (from, to) = (st.read, st.written);
                    // Not holding the lock while the file is read: the pump needs it.
                    drop(st);
                    this.reading = Some(spool::read_chunk(&file, from, to));
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    type Sent = Result<Frame<Bytes>, BoxError>;

    /// An upstream body the test writes frame by frame.
    struct Chan(mpsc::Receiver<Sent>);

    impl hyper::body::Body for Chan {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Sent>> {
            self.0.poll_recv(cx)
        }
    }

    fn start(memory: usize, max_temp_file: u64, dir: &Path) -> (mpsc::Sender<Sent>, Buffered) {
        start_idle(memory, max_temp_file, dir, Duration::from_secs(10))
    }

    fn start_idle(
        memory: usize,
        max_temp_file: u64,
        dir: &Path,
        idle: Duration,
    ) -> (mpsc::Sender<Sent>, Buffered) {
        let (tx, rx) = mpsc::channel(1);
        let upstream = Upstream {
            idle,
            temp_dir: dir.into(),
            in_flight: (),
        };
        let state = State::new(memory, max_temp_file);
        (tx, buffered(Chan(rx), state, upstream, None))
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Sends `body` in frames of 1 to ~5000 bytes, pausing now and then.
    fn send_all(tx: mpsc::Sender<Sent>, body: Vec<u8>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let (mut at, mut n) = (0, 0usize);
            while at < body.len() {
                let len = (n * 7919 % 5000 + 1).min(body.len() - at);
                let frame = Frame::data(Bytes::copy_from_slice(&body[at..at + len]));
                tx.send(Ok(frame)).await.unwrap();
                at += len;
                n += 1;
                if n % 13 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    }

    /// Reads the client's side to its end, pausing every few frames so the pump runs
    /// ahead; checks the file never holds more than `cap`.
    async fn read_all(body: &mut Buffered, cap: u64) -> (Vec<u8>, Option<BoxError>) {
        let mut got = Vec::new();
        let mut n = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => got.extend_from_slice(&frame.into_data().unwrap()),
                Err(e) => return (got, Some(e)),
            }
            {
                let st = body.shared.lock();
                assert!(st.written + st.flushing as u64 <= cap, "past the cap");
            }
            n += 1;
            if n % 5 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        (got, None)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_byte_arrives_in_order_through_memory_and_a_capped_file() {
        let dir = tempfile::tempdir().unwrap();
        let spilled_before = BUFFERS.spilled_response_bytes.get();
        let (tx, mut body) = start(1024, 8192, dir.path());
        let expected = pattern(300_000);
        let sender = send_all(tx, expected.clone());
        let (got, err) = read_all(&mut body, 8192).await;
        assert!(err.is_none(), "{err:?}");
        assert!(
            got == expected,
            "the bytes differ ({} of {})",
            got.len(),
            expected.len()
        );
        sender.await.unwrap();
        assert!(BUFFERS.spilled_response_bytes.get() > spilled_before);
        assert!(body.is_end_stream());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_only_when_max_temp_file_is_0() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut body) = start(1024, 0, dir.path());
        let expected = pattern(100_000);
        let sender = send_all(tx, expected.clone());
        let (got, err) = read_all(&mut body, 0).await;
        assert!(err.is_none() && got == expected);
        sender.await.unwrap();
        assert!(body.shared.lock().file.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upstream_failure_reaches_the_client_after_the_bytes_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut body) = start(1024, 1 << 20, dir.path());
        let expected = pattern(50_000);
        send_all(tx.clone(), expected.clone()).await.unwrap();
        tx.send(Err("upstream reset".into())).await.unwrap();
        let (got, err) = read_all(&mut body, 1 << 20).await;
        assert!(got == expected);
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some("upstream reset")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trailers_come_last() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut body) = start(1024, 1 << 20, dir.path());
        let expected = pattern(20_000);
        send_all(tx.clone(), expected.clone()).await.unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "42".parse().unwrap());
        tx.send(Ok(Frame::trailers(trailers))).await.unwrap();
        let mut got = Vec::new();
        let mut last = None;
        while let Some(frame) = body.frame().await {
            match frame.unwrap().into_data() {
                Ok(data) => got.extend_from_slice(&data),
                Err(frame) => last = frame.into_trailers().ok(),
            }
        }
        assert!(got == expected);
        assert_eq!(last.unwrap()["x-checksum"], "42");
    }

    /// The pump waits longer than `idle` for a slow client to make room; the upstream's
    /// silence is timed from when it may read again, not from its last frame. The test
    /// steps by the buffer's state, not by the clock, so a slow machine cannot fail it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_for_a_slow_client_is_not_the_upstreams_silence() {
        let dir = tempfile::tempdir().unwrap();
        let idle = Duration::from_millis(500);
        let (tx, mut body) = start_idle(16 << 10, 256 << 10, dir.path(), idle);
        let expected = pattern(512 << 10);
        let chunks: Vec<Bytes> = expected
            .chunks(16 << 10)
            .map(Bytes::copy_from_slice)
            .collect();
        let mut chunks = chunks.into_iter();
        let shared = body.shared.clone();
        let sender = tokio::spawn(async move {
            // 16 KiB in memory + 256 KiB in the file fill the buffer.
            for c in chunks.by_ref().take(17) {
                tx.send(Ok(Frame::data(c))).await.unwrap();
            }
            wait_until(&shared, false).await;
            // The upstream answers shortly (well under `idle`) after the pump may read again.
            wait_until(&shared, true).await;
            tokio::time::sleep(idle / 5).await;
            for c in chunks {
                tx.send(Ok(Frame::data(c))).await.unwrap();
            }
        });
        // The client takes nothing for longer than `idle`, then drains.
        wait_until(&body.shared, false).await;
        tokio::time::sleep(idle * 2).await;
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            got.extend_from_slice(&frame.expect("cut off").into_data().unwrap());
        }
        assert!(got == expected);
        sender.await.unwrap();
    }

    async fn wait_until(shared: &Shared, room: bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while shared.lock().has_room() != room {
            assert!(
                tokio::time::Instant::now() < deadline,
                "has_room never became {room}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_gone_lets_the_upstream_go() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, body) = start(1024, 1 << 20, dir.path());
        tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
            .await
            .unwrap();
        drop(body);
        tokio::time::timeout(Duration::from_secs(5), tx.closed())
            .await
            .expect("the pump still holds the upstream");
    }
}
