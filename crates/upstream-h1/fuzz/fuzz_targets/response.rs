//! One upstream response, as the proxy would read it: the head (both entry points agree), then a chunked body from
//! the bytes after it, fed in pieces whose size the input's first byte picks. No panic,
//! no read past the input, and the same body whatever the pieces.
#![no_main]

use bytes::BytesMut;
use http::Method;
use libfuzzer_sys::fuzz_target;
use upstream_h1::chunked::Decoder;
use upstream_h1::{parse_head, take_head, Limits, Parsed};

fuzz_target!(|input: &[u8]| {
    let Some((&step, raw)) = input.split_first() else {
        return;
    };
    let step = usize::from(step % 16) + 1;
    let parsed = parse_head(raw, &Method::GET, &Limits::default());
    // The proxy's entry point: the same verdict, and the head split off its buffer.
    let mut buf = BytesMut::from(raw);
    let taken = take_head(&mut buf, &Method::GET, &Limits::default());
    let body = match parsed {
        Ok(Parsed::Complete { len, head }) => {
            assert!(len <= raw.len());
            let taken = taken.ok().flatten().expect("take_head agrees");
            assert_eq!((taken.framing, taken.headers), (head.framing, head.headers));
            assert_eq!(&buf[..], &raw[len..]);
            &raw[len..]
        }
        Ok(Parsed::Partial) => {
            assert!(matches!(taken, Ok(None)));
            raw
        }
        Err(e) => {
            assert_eq!(taken.err(), Some(e));
            raw
        }
    };
    let decode = |step: usize| {
        let mut decoder = Decoder::new();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        for piece in body.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(bytes)) => data.extend_from_slice(&bytes),
                    Ok(None) => break,
                    Err(e) => return (data, Some(e)),
                }
            }
            if decoder.is_done() {
                break;
            }
        }
        (data, None)
    };
    let (whole, whole_err) = decode(body.len().max(1));
    let (pieces, pieces_err) = decode(step);
    assert!(whole.len() <= body.len());
    assert_eq!(whole_err, pieces_err);
    if whole_err.is_none() {
        assert_eq!(whole, pieces);
    }
});
