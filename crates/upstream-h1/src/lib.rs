//! An upstream's HTTP/1.1 response as a reverse proxy reads it: the head (parsed by
//! httparse) and the framing of its body (RFC 9112 §6.3), then a chunked body decoded as
//! it arrives.
//!
//! This is the response side of gatehouse's purpose-built upstream client
//! (`src/proxy/lean.rs`; issue 23, "the proxy decision"). Only upstream responses come
//! through here: hyper parses every byte a
//! client sends. The rules are nginx's where RFC 9112 leaves a choice: a response whose
//! length cannot be told for certain is an error (a 502 to the client), never a guess,
//! since a guess is how one response's bytes become the next one's head.

pub mod chunked;
mod head;

pub use head::{parse_head, take_head, Framing, Head, HeadError, Limits, Parsed};
