//! The response-side desync corpus (issue 23): heads and chunked bodies an upstream might
//! send, honest or not, and what a proxy must make of each. Every refusal here is a 502 to
//! the client and a connection that is not reused; every accepted length is exact.

use bytes::BytesMut;
use http::{Method, StatusCode, Version};
use upstream_h1::chunked::{DecodeError, Decoder};
use upstream_h1::{parse_head, take_head, Framing, Head, HeadError, Limits, Parsed};

/// The head by both entry points, which must agree: `take_head` (what the proxy uses) also
/// leaves exactly the bytes after the head in its buffer.
fn head_for(method: &Method, raw: &str) -> Result<(Head, usize), HeadError> {
    let mut buf = BytesMut::from(raw.as_bytes());
    let taken = take_head(&mut buf, method, &Limits::default());
    let parsed = match parse_head(raw.as_bytes(), method, &Limits::default()) {
        Ok(Parsed::Complete { head, len }) => Ok((head, len)),
        Ok(Parsed::Partial) => panic!("partial: {raw:?}"),
        Err(e) => Err(e),
    };
    match (&parsed, taken) {
        (Ok((p, len)), Ok(Some(t))) => {
            assert_eq!(
                (t.status, t.version, t.framing),
                (p.status, p.version, p.framing)
            );
            assert_eq!((&t.headers, t.keep_alive), (&p.headers, p.keep_alive));
            assert_eq!(&buf[..], &raw.as_bytes()[*len..], "{raw:?}");
        }
        (Err(p), Err(t)) => assert_eq!(*p, t, "{raw:?}"),
        (p, t) => panic!("parse_head {p:?}, take_head {t:?}: {raw:?}"),
    }
    parsed
}

fn head(raw: &str) -> Result<Head, HeadError> {
    head_for(&Method::GET, raw).map(|(h, _)| h)
}

fn framing(raw: &str) -> Result<Framing, HeadError> {
    head(raw).map(|h| h.framing)
}

#[test]
fn a_plain_response_has_its_length_and_keeps_the_connection() {
    let raw = "HTTP/1.1 200 OK\r\nContent-Length: 20\r\nContent-Type: text/plain\r\n\r\nbody";
    let (h, len) = head_for(&Method::GET, raw).unwrap();
    assert_eq!(len, raw.len() - 4);
    assert_eq!((h.status, h.version), (StatusCode::OK, Version::HTTP_11));
    assert_eq!(h.framing, Framing::Length(20));
    assert!(h.keep_alive);
    assert_eq!(h.headers["content-type"], "text/plain");
}

#[test]
fn heads_without_a_body_ignore_their_length_headers() {
    let cl = "Content-Length: 1000\r\n";
    let (h, _) = head_for(&Method::HEAD, &format!("HTTP/1.1 200 OK\r\n{cl}\r\n")).unwrap();
    assert_eq!(h.framing, Framing::Empty);
    assert!(h.keep_alive);
    for status in [
        "204 No Content",
        "304 Not Modified",
        "100 Continue",
        "103 Early Hints",
    ] {
        assert_eq!(
            framing(&format!("HTTP/1.1 {status}\r\n{cl}\r\n")),
            Ok(Framing::Empty)
        );
    }
    let chunked = "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(framing(chunked), Ok(Framing::Empty));
}

#[test]
fn an_interim_response_is_followed_by_the_real_one() {
    let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    let (first, len) = head_for(&Method::POST, raw).unwrap();
    assert_eq!(first.status, StatusCode::CONTINUE);
    let (second, _) = head_for(&Method::POST, &raw[len..]).unwrap();
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(second.framing, Framing::Length(0));
}

#[test]
fn content_length_must_be_one_decimal_number() {
    let with = |v: &str| framing(&format!("HTTP/1.1 200 OK\r\nContent-Length: {v}\r\n\r\n"));
    assert_eq!(with("5, 5"), Ok(Framing::Length(5)));
    assert_eq!(with("0"), Ok(Framing::Length(0)));
    assert_eq!(with("18446744073709551615"), Ok(Framing::Length(u64::MAX)));
    for bad in [
        "abc",
        "-1",
        "+5",
        "5, 6",
        "0x10",
        "5 5",
        "5,",
        "18446744073709551616",
        "99999999999999999999999",
    ] {
        assert_eq!(with(bad), Err(HeadError::ContentLength), "{bad:?}");
    }
    let twice = |a: &str, b: &str| {
        framing(&format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {a}\r\nContent-Length: {b}\r\n\r\n"
        ))
    };
    assert_eq!(twice("7", "7"), Ok(Framing::Length(7)));
    assert_eq!(twice("7", "8"), Err(HeadError::ContentLength));
}

#[test]
fn transfer_encoding_must_be_a_single_chunked() {
    let with = |v: &str| {
        framing(&format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: {v}\r\n\r\n"
        ))
    };
    assert_eq!(with("chunked"), Ok(Framing::Chunked));
    assert_eq!(with("Chunked"), Ok(Framing::Chunked));
    assert_eq!(with(" chunked "), Ok(Framing::Chunked));
    for bad in [
        "chunked, chunked",
        "gzip, chunked",
        "chunked, gzip",
        "identity",
        "gzip",
        "chunked;q=1",
        "chunkedx",
        ",",
    ] {
        assert_eq!(with(bad), Err(HeadError::TransferEncoding), "{bad:?}");
    }
    let two_lines =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(framing(two_lines), Err(HeadError::TransferEncoding));
}

#[test]
fn transfer_encoding_beside_content_length_is_refused_not_resolved() {
    // RFC 9112 §6.3 lets an intermediary drop the Content-Length and go on; nginx refuses
    // the response, and so does this: one of the two is lying.
    for order in [
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
    ] {
        let raw = format!("HTTP/1.1 200 OK\r\n{order}\r\n\r\n");
        assert_eq!(framing(&raw), Err(HeadError::TransferEncoding), "{order}");
    }
    let head_request = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
    assert!(head_for(&Method::HEAD, head_request).is_err());
}

#[test]
fn http_1_0_has_no_transfer_codings() {
    let raw = "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(framing(raw), Err(HeadError::TransferEncoding));
}

#[test]
fn without_a_length_the_body_runs_to_the_close() {
    let h = head("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n").unwrap();
    assert_eq!(h.framing, Framing::UntilClose);
    assert!(
        !h.keep_alive,
        "a body that ends with the connection leaves none to reuse"
    );
}

#[test]
fn keep_alive_follows_the_version_and_the_connection_header() {
    let alive = |raw: &str| head(raw).unwrap().keep_alive;
    assert!(!alive(
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    ));
    assert!(!alive(
        "HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\nContent-Length: 0\r\n\r\n"
    ));
    assert!(!alive("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
    assert!(alive(
        "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
    ));
    assert!(alive(
        "HTTP/1.1 200 OK\r\nConnection: upgrade\r\nContent-Length: 0\r\n\r\n"
    ));
}

#[test]
fn heads_past_the_limits_are_refused() {
    let limits = Limits::default();
    let big = format!("HTTP/1.1 200 OK\r\nX-Big: {}", "a".repeat(limits.max_head));
    let parsed = parse_head(big.as_bytes(), &Method::GET, &limits);
    assert_eq!(parsed.err(), Some(HeadError::TooLarge), "an unending head");
    let complete = format!("{big}\r\nContent-Length: 0\r\n\r\n");
    let parsed = parse_head(complete.as_bytes(), &Method::GET, &limits);
    assert_eq!(
        parsed.err(),
        Some(HeadError::TooLarge),
        "a whole head over the limit"
    );
    let many: String = (0..=limits.max_headers)
        .map(|i| format!("X-{i}: v\r\n"))
        .collect();
    let raw = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
    assert_eq!(framing(&raw), Err(HeadError::TooManyHeaders));
}

#[test]
fn malformed_heads_are_refused() {
    for raw in [
        // obs-fold: a continuation line could hide a header from one reader
        "HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
        // whitespace before the colon (RFC 9112 §5.1: MUST reject)
        "HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-A: a\0b\r\n\r\n",
        "HTTP/2.0 200 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "ICY 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\n: no-name\r\n\r\n",
    ] {
        assert!(head(raw).is_err(), "{raw:?}");
    }
}

#[test]
fn a_head_is_partial_until_its_empty_line() {
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    for end in 0..raw.len() {
        let parsed = parse_head(&raw[..end], &Method::GET, &Limits::default()).unwrap();
        assert!(
            matches!(parsed, Parsed::Partial),
            "complete after {end} bytes"
        );
    }
    let parsed = parse_head(raw, &Method::GET, &Limits::default()).unwrap();
    assert!(matches!(parsed, Parsed::Complete { len, .. } if len == raw.len()));
}

/// Decodes `raw` fed in pieces of `step` bytes: (data, bytes left after the body).
fn decode(raw: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), DecodeError> {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut fed = 0;
    while !decoder.is_done() {
        assert!(fed < raw.len(), "body not ended by {raw:?}");
        let end = (fed + step).min(raw.len());
        buf.extend_from_slice(&raw[fed..end]);
        fed = end;
        while let Some(bytes) = decoder.decode(&mut buf)? {
            data.extend_from_slice(&bytes);
        }
    }
    let mut rest = buf.to_vec();
    rest.extend_from_slice(&raw[fed..]);
    Ok((data, rest))
}

/// The same verdict whatever pieces the bytes arrive in.
fn decode_every_way(raw: &[u8]) -> Result<(Vec<u8>, Vec<u8>), DecodeError> {
    let whole = decode(raw, raw.len());
    for step in [1, 2, 3, 7] {
        assert_eq!(decode(raw, step), whole, "in pieces of {step}: {raw:?}");
    }
    whole
}

fn error_every_way(raw: &[u8]) -> DecodeError {
    // A refusal can only come once the offending byte is there: feed the whole input.
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::from(raw);
    loop {
        match decoder.decode(&mut buf) {
            Err(e) => {
                for step in [1, 3] {
                    let mut d = Decoder::new();
                    let mut b = BytesMut::new();
                    let got = raw.chunks(step).find_map(|piece| {
                        b.extend_from_slice(piece);
                        loop {
                            match d.decode(&mut b) {
                                Err(e) => return Some(e),
                                Ok(Some(_)) => continue,
                                Ok(None) => return None,
                            }
                        }
                    });
                    assert_eq!(got, Some(e), "in pieces of {step}: {raw:?}");
                }
                return e;
            }
            Ok(Some(_)) => continue,
            Ok(None) => panic!("accepted: {raw:?}"),
        }
    }
}

#[test]
fn chunks_are_joined_and_the_bytes_after_the_body_are_left() {
    let raw = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n";
    let (data, rest) = decode_every_way(raw).unwrap();
    assert_eq!(data, b"hello, world");
    assert_eq!(rest, b"HTTP/1.1 200 OK\r\n");
}

#[test]
fn sizes_extensions_and_trailers_within_bounds_are_read() {
    let raw =
        b"A;name=value;x\r\n0123456789\r\na \t;e\r\nabcdefghij\r\n0\r\nX-Sum: 1\r\nY: 2\r\n\r\n";
    let (data, rest) = decode_every_way(raw).unwrap();
    assert_eq!(data, b"0123456789abcdefghij");
    assert!(rest.is_empty());
    let (data, _) = decode_every_way(b"0000000003\r\nabc\r\n0\r\n\r\n").unwrap();
    assert_eq!(data, b"abc");
}

#[test]
fn data_that_looks_like_framing_is_data() {
    let raw = b"9\r\n0\r\n\r\nGET \r\n0\r\n\r\n";
    let (data, rest) = decode_every_way(raw).unwrap();
    assert_eq!(data, b"0\r\n\r\nGET ");
    assert!(rest.is_empty());
}

#[test]
fn the_largest_size_is_taken_and_one_more_digit_refused() {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::from(&b"FFFFFFFFFFFFFFFF\r\nab"[..]);
    assert_eq!(
        decoder.decode(&mut buf).unwrap().as_deref(),
        Some(&b"ab"[..])
    );
    assert!(!decoder.is_done());
    assert_eq!(error_every_way(b"10000000000000000\r\n"), DecodeError::Size);
    assert_eq!(error_every_way(&[b'0'; 65]), DecodeError::Size);
}

#[test]
fn malformed_chunks_are_refused() {
    for (raw, want) in [
        (&b"\r\n"[..], DecodeError::Size),
        (b"-5\r\n", DecodeError::Size),
        (b"+5\r\n", DecodeError::Size),
        (b"0x5\r\n", DecodeError::Size),
        (b"5 x\r\n", DecodeError::Size),
        (b"g\r\n", DecodeError::Size),
        (b"5\nhello\r\n", DecodeError::Size),
        (b"5\r\r\nhello", DecodeError::Delimiter),
        (b"5\r\nhelloX\r\n", DecodeError::Delimiter),
        (b"5\r\nhello\n0\r\n\r\n", DecodeError::Delimiter),
        (b"5\r\nhello\r\r", DecodeError::Delimiter),
        (b"0\r\n\n", DecodeError::Trailers),
        (b"0\r\nX: 1\n\r\n", DecodeError::Trailers),
        (b"0\r\nX: 1\r\r", DecodeError::Delimiter),
        (b"0\r\nX: a\x01b\r\n\r\n", DecodeError::Trailers),
        (b"5;a\x00b\r\n", DecodeError::Extension),
        (b"5;a\nb\r\n", DecodeError::Extension),
    ] {
        assert_eq!(error_every_way(raw), want, "{raw:?}");
    }
}

#[test]
fn extensions_and_trailers_are_bounded() {
    let mut long_ext = b"1;".to_vec();
    long_ext.extend(std::iter::repeat_n(b'x', 4097));
    long_ext.extend_from_slice(b"\r\n");
    assert_eq!(error_every_way(&long_ext), DecodeError::Extension);
    let mut ok_ext = b"1;".to_vec();
    ok_ext.extend(std::iter::repeat_n(b'x', 4096));
    ok_ext.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
    assert_eq!(decode_every_way(&ok_ext).unwrap().0, b"a");

    let mut trailers = b"0\r\n".to_vec();
    for _ in 0..2000 {
        trailers.extend_from_slice(b"X-Long: 0123456789\r\n");
    }
    trailers.extend_from_slice(b"\r\n");
    assert_eq!(error_every_way(&trailers), DecodeError::Trailers);
}
