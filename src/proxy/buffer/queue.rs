//! What the pump has read and the client not yet taken: frames in memory, the temporary
//! file's unread part, and the frames waiting to be written to it, delivered in that order;
//! and how the body ended. The pump and the client's body share it behind a mutex, each
//! waking the other (the client when bytes arrive, the pump when room is made).

use crate::http_base::BoxError;
use crate::proxy::spool::TempFile;
use bytes::Bytes;
use http::header::HeaderMap;
use hyper::body::Frame;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

/// How a response body ended.
pub(super) enum End {
    Done(Option<HeaderMap>),
    /// The upstream failed (or its temporary file did); the error goes to the client
    /// once, after the bytes before it.
    Failed(Option<BoxError>),
}

impl End {
    /// The frame that ends a body, the first time; `None` after.
    pub(super) fn take(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        match self {
            End::Done(trailers) => trailers.take().map(|t| Ok(Frame::trailers(t))),
            End::Failed(e) => Some(Err(e
                .take()
                .unwrap_or_else(|| "upstream response failed".into()))),
        }
    }

    pub(super) fn is_clean_end(&self) -> bool {
        matches!(self, End::Done(None))
    }
}

/// What the pump has read and the client not yet taken.
pub(super) struct State {
    pub(super) mem: VecDeque<Bytes>,
    pub(super) mem_len: usize,
    pub(super) memory: usize,
    pub(super) file: Option<Arc<TempFile>>,
    /// The file's unread bytes are `read..written`.
    pub(super) read: u64,
    pub(super) written: u64,
    pub(super) max_temp_file: u64,
    /// The file was emptied: truncate it before writing to it again.
    pub(super) truncate: bool,
    /// Frames after the file's, not yet written to it.
    pub(super) tail: Vec<Bytes>,
    pub(super) tail_len: usize,
    /// Bytes on their way from `tail` to the file.
    pub(super) flushing: usize,
    /// Nothing more goes to the file: `max_temp_file` is 0, or writing failed.
    pub(super) no_spill: bool,
    pub(super) end: Option<End>,
    /// The client's body, waiting for bytes.
    pub(super) reader: Option<Waker>,
    /// The pump, waiting for room.
    pub(super) pump: Option<Waker>,
}

impl State {
    pub(super) fn new(memory: usize, max_temp_file: u64) -> State {
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
        }
    }

    /// Bytes that come after `mem` wait in the file or its tail.
    pub(super) fn spilling(&self) -> bool {
        self.read < self.written || self.tail_len > 0 || self.flushing > 0
    }

    /// Whether the pump may read another frame.
    pub(super) fn has_room(&self) -> bool {
        if !self.spilling() && self.mem_len < self.memory {
            return true;
        }
        let file_size = self.written + (self.flushing + self.tail_len) as u64;
        !self.no_spill && file_size < self.max_temp_file
    }

    /// Adds a frame; true when the tail should now be written to the file.
    pub(super) fn push(&mut self, data: Bytes) -> bool {
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
    pub(super) fn take_flush(&mut self) -> Vec<Bytes> {
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

    pub(super) fn finish(&mut self, end: End) {
        self.end = Some(end);
        wake(&mut self.reader);
    }

    /// The client's next bytes from memory, if they are there.
    pub(super) fn take_mem(&mut self) -> Option<Bytes> {
        if self.mem.is_empty() && self.read == self.written && self.flushing == 0 {
            // The file is drained: the tail is next.
            self.mem_len = self.tail_len;
            self.mem.extend(self.tail.drain(..));
            self.tail_len = 0;
        }
        let data = self.mem.pop_front()?;
        self.mem_len -= data.len();
        wake(&mut self.pump);
        Some(data)
    }

    /// `n` bytes of the file were delivered.
    pub(super) fn file_read(&mut self, n: u64) {
        self.read += n;
        if self.read == self.written && self.flushing == 0 {
            // Start over at the beginning, giving the disk space back first.
            self.read = 0;
            self.written = 0;
            self.truncate = true;
        }
        wake(&mut self.pump);
    }

    pub(super) fn is_end_stream(&self) -> bool {
        self.mem.is_empty() && !self.spilling() && self.end.as_ref().is_some_and(End::is_clean_end)
    }
}

pub(super) fn wake(waker: &mut Option<Waker>) {
    if let Some(w) = waker.take() {
        w.wake();
    }
}

pub(super) struct Shared(pub(super) Mutex<State>);

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever a panicking holder did.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
