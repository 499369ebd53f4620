//! A chunked response body (RFC 9112 §7.1), decoded as its bytes arrive.
//!
//! Strict where the RFC allows leniency, since a lenient reading of one response can make
//! the next one's head out of its body: every line ends in CRLF (no bare LF), a chunk's
//! data is followed by exactly CRLF, sizes are hexadecimal without sign or overflow, and
//! chunk extensions and trailer fields are bounded and dropped (the proxy forwards
//! neither).

use bytes::{Buf, Bytes, BytesMut};

/// Most bytes of extensions on one chunk line (nginx allows none beyond its line buffer).
const MAX_EXTENSION: usize = 4096;
/// Most bytes of the trailer section.
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A chunk size that is not hexadecimal, or larger than 2^64 - 1.
    Size,
    /// Chunk extensions longer than 4 KiB, or with a control character.
    Extension,
    /// A line or a chunk's data not ended by CRLF.
    Delimiter,
    /// A trailer section longer than 16 KiB, or with a control character.
    Trailers,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DecodeError::Size => "invalid chunk size",
            DecodeError::Extension => "invalid chunk extension",
            DecodeError::Delimiter => "chunk not ended by CRLF",
            DecodeError::Trailers => "invalid trailer section",
        })
    }
}

impl std::error::Error for DecodeError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (`digits` so far).
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size, before `;` or CR.
    AfterSize {
        size: u64,
    },
    /// After `;`: extensions, up to CR.
    Extension {
        size: u64,
    },
    /// The LF of the chunk line.
    SizeLf {
        size: u64,
    },
    /// Data bytes still to come.
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the empty line that ends the body.
    TrailerStart,
    /// Inside a trailer line, up to CR.
    TrailerLine,
    /// The LF of a trailer line.
    TrailerLf,
    /// The LF of the final empty line.
    EndLf,
    Done,
}

/// Decodes one chunked body. Feed it the bytes that follow the head, as they arrive.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// Bytes of extensions on the current line, or of the whole trailer section.
    counted: usize,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            state: State::Size { size: 0, digits: 0 },
            counted: 0,
        }
    }

    /// Whether the whole body, trailers and final CRLF included, has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes what it can from the front of `buf`: `Some(data)` for body bytes (split off
    /// without copying), `None` when `buf` holds no more body (read more, unless
    /// [`Decoder::is_done`]). Bytes after the body's end are left in `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        while !buf.is_empty() {
            if let State::Data { left } = self.state {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                self.state = match left - n as u64 {
                    0 => State::DataCr,
                    left => State::Data { left },
                };
                return Ok(Some(buf.split_to(n).freeze()));
            }
            if self.state == State::Done {
                return Ok(None);
            }
            let byte = buf[0];
            buf.advance(1);
            self.state = self.step(byte)?;
        }
        Ok(None)
    }

    /// One framing byte.
    fn step(&mut self, b: u8) -> Result<State, DecodeError> {
        Ok(match self.state {
            State::Size { size, digits } => {
                if let Some(d) = hex(b) {
                    // Another digit must not push a bit out of the u64; leading zeros
                    // are bounded too.
                    if size >> 60 != 0 || digits >= 64 {
                        return Err(DecodeError::Size);
                    }
                    State::Size {
                        size: (size << 4) | u64::from(d),
                        digits: digits + 1,
                    }
                } else if digits == 0 {
                    return Err(DecodeError::Size);
                } else {
                    match b {
                        b'\r' => State::SizeLf { size },
                        b';' => self.extension_start(size),
                        b' ' | b'\t' => State::AfterSize { size },
                        _ => return Err(DecodeError::Size),
                    }
                }
            }
            State::AfterSize { size } => match b {
                b' ' | b'\t' => State::AfterSize { size },
                b';' => self.extension_start(size),
                b'\r' => State::SizeLf { size },
                _ => return Err(DecodeError::Size),
            },
            State::Extension { size } => match b {
                b'\r' => State::SizeLf { size },
                b'\t' | b' '..=b'~' | 0x80..=0xff => {
                    self.counted += 1;
                    if self.counted > MAX_EXTENSION {
                        return Err(DecodeError::Extension);
                    }
                    State::Extension { size }
                }
                _ => return Err(DecodeError::Extension),
            },
            State::SizeLf { size } => match (b, size) {
                (b'\n', 0) => {
                    self.counted = 0;
                    State::TrailerStart
                }
                (b'\n', left) => State::Data { left },
                _ => return Err(DecodeError::Delimiter),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(DecodeError::Delimiter),
            },
            State::DataLf => match b {
                b'\n' => State::Size { size: 0, digits: 0 },
                _ => return Err(DecodeError::Delimiter),
            },
            State::TrailerStart => match b {
                b'\r' => State::EndLf,
                _ => self.trailer_byte(b)?,
            },
            State::TrailerLine => match b {
                b'\r' => State::TrailerLf,
                _ => self.trailer_byte(b)?,
            },
            State::TrailerLf | State::EndLf => match (b, self.state) {
                (b'\n', State::EndLf) => State::Done,
                (b'\n', _) => State::TrailerStart,
                _ => return Err(DecodeError::Delimiter),
            },
            // `decode` takes data and stops at the end without stepping.
            state @ (State::Data { .. } | State::Done) => state,
        })
    }

    fn extension_start(&mut self, size: u64) -> State {
        self.counted = 0;
        State::Extension { size }
    }

    fn trailer_byte(&mut self, b: u8) -> Result<State, DecodeError> {
        self.counted += 1;
        if self.counted > MAX_TRAILERS || !(b == b'\t' || b >= b' ') || b == 0x7f {
            return Err(DecodeError::Trailers);
        }
        Ok(State::TrailerLine)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
