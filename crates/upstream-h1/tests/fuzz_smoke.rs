//! A bounded, deterministic stand-in for the fuzz target (`fuzz/`, run with cargo-fuzz on
//! nightly): the corpus mutated at random, fed whole and byte by byte. Neither reader may
//! panic, and the two feedings must agree, since a decoder whose verdict depends on how
//! the bytes were split would frame the same response two ways.

use bytes::BytesMut;
use http::Method;
use upstream_h1::chunked::{DecodeError, Decoder};
use upstream_h1::{parse_head, take_head, Framing, Limits, Parsed};

const HEADS: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\nContent-Type: text/plain\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
    b"HTTP/1.0 304 Not Modified\r\nContent-Length: 5, 5\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n",
];

const BODIES: &[&[u8]] = &[
    b"5\r\nhello\r\n0\r\n\r\n",
    b"A;ext=1\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\nHTTP/1.1",
    b"1 \t\r\na\r\nff\r\n",
];

/// xorshift64*: the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A copy of `seed` with a few random edits, biased to bytes that matter to framing.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    const INTERESTING: &[u8] = b"\r\n :;,0123456789abcdefABCDEF\t\0\x7f\xff-+x";
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(v.len() + 1);
        let byte = if rng.below(2) == 0 {
            INTERESTING[rng.below(INTERESTING.len())]
        } else {
            rng.next() as u8
        };
        match rng.below(4) {
            0 if at < v.len() => v[at] = byte,
            1 => v.insert(at, byte),
            2 if at < v.len() => {
                v.remove(at);
            }
            _ => {
                let end = (at + rng.below(8)).min(v.len());
                let piece = v[at..end].to_vec();
                v.splice(at..at, piece);
            }
        }
    }
    v
}

/// (data, done, error) after feeding `raw` in pieces of `step`.
fn run_decoder(raw: &[u8], step: usize) -> (Vec<u8>, bool, Option<DecodeError>) {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    for piece in raw.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(bytes)) => data.extend_from_slice(&bytes),
                Ok(None) => break,
                Err(e) => return (data, false, Some(e)),
            }
        }
        if decoder.is_done() {
            break;
        }
    }
    (data, decoder.is_done(), None)
}

#[test]
fn mutated_heads_never_panic_and_never_overrun() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let limits = Limits::default();
    for i in 0..20_000 {
        let raw = mutate(&mut rng, HEADS[i % HEADS.len()]);
        for method in [Method::GET, Method::HEAD] {
            if let Ok(Parsed::Complete { head, len }) = parse_head(&raw, &method, &limits) {
                assert!(len <= raw.len());
                if head.framing == Framing::UntilClose {
                    assert!(!head.keep_alive, "{raw:?}");
                }
                if method == Method::HEAD {
                    assert_eq!(head.framing, Framing::Empty, "{raw:?}");
                }
                // Whatever came after the head is not part of it: parsing the head alone
                // gives the same length.
                let again = parse_head(&raw[..len], &method, &limits);
                assert!(matches!(again, Ok(Parsed::Complete { len: l, .. }) if l == len));
                // The proxy's entry point agrees, and leaves what came after the head.
                let mut buf = BytesMut::from(&raw[..]);
                let taken = take_head(&mut buf, &method, &limits).unwrap().unwrap();
                assert_eq!((taken.framing, taken.headers), (head.framing, head.headers));
                assert_eq!(&buf[..], &raw[len..]);
            }
        }
    }
}

#[test]
fn mutated_chunked_bodies_decode_the_same_whatever_the_pieces() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for i in 0..20_000 {
        let raw = mutate(&mut rng, BODIES[i % BODIES.len()]);
        let whole = run_decoder(&raw, raw.len().max(1));
        assert!(whole.0.len() <= raw.len());
        for step in [1, 1 + rng.below(5)] {
            let pieces = run_decoder(&raw, step);
            if whole.2.is_some() {
                // The same refusal, though perhaps after less data in smaller pieces.
                assert_eq!(pieces.2, whole.2, "{raw:?} in pieces of {step}");
                assert!(whole.0.starts_with(&pieces.0) || pieces.0.starts_with(&whole.0));
            } else {
                assert_eq!(pieces, whole, "{raw:?} in pieces of {step}");
            }
        }
    }
}
