//! The response head and what it says about the body's length.

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use smallvec::SmallVec;
use std::mem::MaybeUninit;

/// The most header lines a head may have (httparse needs the room up front).
const MAX_HEADERS: usize = 128;

/// Bounds on what an upstream may send as a head.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes, from the status line to the empty line that ends the head.
    pub max_head: usize,
    /// Header lines; at most 128.
    pub max_headers: usize,
}

impl Default for Limits {
    /// hyper's client accepts heads up to ~400 KiB; nginx's proxy_buffer_size is 4-8 KiB.
    /// 64 KiB is room for any app's cookies without letting one response hold much memory.
    fn default() -> Limits {
        Limits {
            max_head: 64 * 1024,
            max_headers: 100,
        }
    }
}

/// How the body after a head ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a 1xx, 204 or 304 response, or any response to HEAD.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding (see [`crate::chunked`]).
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    /// As received, Connection and Transfer-Encoding included: removing the hop-by-hop
    /// headers is the proxy's job.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request once this body has been read.
    pub keep_alive: bool,
}

/// What [`parse_head`] found at the start of the buffer.
#[derive(Debug)]
pub enum Parsed {
    /// A whole head, `len` bytes long; the body (or the next head, after a 1xx) follows.
    Complete { head: Head, len: usize },
    /// Not all of the head has arrived yet.
    Partial,
}

/// Why a head was refused. Each means the connection cannot be trusted any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Longer than `Limits::max_head`.
    TooLarge,
    /// More header lines than `Limits::max_headers`.
    TooManyHeaders,
    /// Not an HTTP/1.x status line and header lines (httparse's verdict, or a name or
    /// value the `http` crate refuses).
    Malformed,
    /// Content-Length values that are not all the same decimal number.
    ContentLength,
    /// Transfer-Encoding other than a single `chunked`, on an HTTP/1.0 response, or
    /// beside a Content-Length (RFC 9112 §6.3: a sign of smuggling; nginx refuses it too).
    TransferEncoding,
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeadError::TooLarge => "response head too large",
            HeadError::TooManyHeaders => "too many response header lines",
            HeadError::Malformed => "malformed response head",
            HeadError::ContentLength => "invalid Content-Length in response",
            HeadError::TransferEncoding => "unusable Transfer-Encoding in response",
        })
    }
}

impl std::error::Error for HeadError {}

/// Parses the response head at the start of `buf`, sent in answer to a `method` request.
/// A 1xx head is returned like any other (with `Framing::Empty`): the caller skips it, or
/// for a 101 hands the connection over, and parses the next one.
pub fn parse_head(buf: &[u8], method: &Method, limits: &Limits) -> Result<Parsed, HeadError> {
    let mut spans = Spans::new();
    let Some(lines) = scan(buf, limits, &mut spans)? else {
        return Ok(Parsed::Partial);
    };
    let len = lines.len;
    let head = build(&Bytes::copy_from_slice(&buf[..len]), &lines, &spans, method)?;
    Ok(Parsed::Complete { head, len })
}

/// [`parse_head`] for a reader's buffer: a complete head is split off the front of `buf`,
/// and its header values share those bytes instead of each being copied (what a proxy
/// does per response; hyper's client does the same). `None`: not all of it is here yet.
pub fn take_head(
    buf: &mut BytesMut,
    method: &Method,
    limits: &Limits,
) -> Result<Option<Head>, HeadError> {
    let mut spans = Spans::new();
    let Some(lines) = scan(buf, limits, &mut spans)? else {
        return Ok(None);
    };
    let head = buf.split_to(lines.len).freeze();
    build(&head, &lines, &spans, method).map(Some)
}

/// Where one header line's name and value lie in the head, as offsets.
#[derive(Debug, Clone, Copy)]
struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

/// On the stack, and left uninitialised until written (a 4 KiB memset per response showed
/// up as a fifth of a proxied GET's instructions).
type Spans = SmallVec<[Span; MAX_HEADERS]>;

/// The status line of a complete head and its length (the header lines' spans are in the
/// caller's `Spans`).
struct Lines {
    len: usize,
    version: Version,
    status: StatusCode,
}

/// httparse's verdict on `buf` within `limits`; `None` when the head is not complete yet.
fn scan(buf: &[u8], limits: &Limits, spans: &mut Spans) -> Result<Option<Lines>, HeadError> {
    let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let slots = &mut slots[..limits.max_headers.min(MAX_HEADERS)];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        slots,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_head => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed),
    };
    if len > limits.max_head {
        return Err(HeadError::TooLarge);
    }
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(HeadError::Malformed),
    };
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(HeadError::Malformed)?;
    // httparse's slices point into `buf`: their offsets survive the buffer's split.
    let at = |part: &[u8]| {
        let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
        (start, start + part.len())
    };
    spans.clear();
    spans.extend(response.headers.iter().map(|h| Span {
        name: at(h.name.as_bytes()),
        value: at(h.value),
    }));
    Ok(Some(Lines {
        len,
        version,
        status,
    }))
}

/// The head from its bytes (`head`, exactly `lines.len` long) and the spans `scan` found.
fn build(head: &Bytes, lines: &Lines, spans: &[Span], method: &Method) -> Result<Head, HeadError> {
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut framers = Framers::default();
    for span in spans {
        let part = |(start, end): (usize, usize)| head.get(start..end).ok_or(HeadError::Malformed);
        let name = HeaderName::from_bytes(part(span.name)?).map_err(|_| HeadError::Malformed)?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(part(span.value)?))
            .map_err(|_| HeadError::Malformed)?;
        framers.note(&name, value.as_bytes());
        headers.append(name, value);
    }
    let (status, version) = (lines.status, lines.version);
    let framing = framers.framing(status, version, method)?;
    let keep_alive = framing != Framing::UntilClose && framers.persistent(version);
    Ok(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    })
}

/// What the header lines say about the body's length and the connection, gathered line
/// by line as the head is built (no lookups in the finished map).
#[derive(Default)]
struct Framers {
    /// Transfer-Encoding lines seen, and the codings in them (each must be `chunked`).
    transfer_encoding: bool,
    codings: usize,
    other_coding: bool,
    /// Every Content-Length value, in every line and list, must be the same number.
    length: Option<u64>,
    bad_length: bool,
    /// Connection tokens.
    close: bool,
    keep_alive: bool,
}

impl Framers {
    fn note(&mut self, name: &HeaderName, value: &[u8]) {
        let items = || {
            value
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|i| !i.is_empty())
        };
        if name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
            for coding in items() {
                self.codings += 1;
                self.other_coding |= !coding.eq_ignore_ascii_case(b"chunked");
            }
        } else if name == CONTENT_LENGTH {
            // An empty item is not a number either.
            for item in value.split(|&b| b == b',') {
                match decimal(item.trim_ascii()) {
                    Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                    _ => self.bad_length = true,
                }
            }
        } else if name == CONNECTION {
            for token in items() {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }

    /// RFC 9112 §6.3, in its order.
    fn framing(
        &self,
        status: StatusCode,
        version: Version,
        method: &Method,
    ) -> Result<Framing, HeadError> {
        let chunked = self.chunked(version)?;
        if self.bad_length {
            return Err(HeadError::ContentLength);
        }
        if chunked && self.length.is_some() {
            return Err(HeadError::TransferEncoding);
        }
        if *method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Empty);
        }
        Ok(match (chunked, self.length) {
            (true, _) => Framing::Chunked,
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::UntilClose,
        })
    }

    /// Whether the body is chunked. Any other coding is refused rather than read until the
    /// close: the proxy removes Transfer-Encoding, so a client would get the coded bytes
    /// with nothing saying how they are coded.
    fn chunked(&self, version: Version) -> Result<bool, HeadError> {
        if self.other_coding {
            return Err(HeadError::TransferEncoding);
        }
        match self.codings {
            0 if self.transfer_encoding => Err(HeadError::TransferEncoding),
            0 => Ok(false),
            // HTTP/1.0 has no transfer codings (RFC 9112 §6.1).
            1 if version == Version::HTTP_11 => Ok(true),
            _ => Err(HeadError::TransferEncoding),
        }
    }

    /// HTTP/1.1 keeps the connection unless it says `close`; HTTP/1.0 only if it says
    /// `keep-alive`.
    fn persistent(&self, version: Version) -> bool {
        !self.close && (version == Version::HTTP_11 || self.keep_alive)
    }
}

/// 1*DIGIT as a u64: no sign, no spaces, no overflow.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}
