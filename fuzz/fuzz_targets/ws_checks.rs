//! What the `websocket` fuzz target asserts, shared with `tests/fuzz_corpus.rs`
//! (`replay_websocket_corpus`) so that plain `cargo test` replays the corpus through
//! exactly the same checks.
//!
//! Beyond "no panic": the upgrade request gets a `101` with a well-formed accept key
//! or one of the documented refusals; a frame header's decision, once made, never
//! changes as bytes arrive and stays within 14 bytes; and de-framing does not depend
//! on how the bytes were cut into reads (the stream adapter reads whatever the socket
//! gives), nor does it ever produce more bytes than it was given.

use mqgate::ws::frame::{parse_header, MAX_CONTROL, MAX_HEADER};
use mqgate::ws::handshake::{head_end, respond, Policy, MAX_HEAD};
use mqgate::ws::stream::deframe;

pub fn websocket(data: &[u8]) {
    handshake(data);
    header(data);
    frames(data);
}

fn handshake(data: &[u8]) {
    let head = match head_end(data) {
        Some(end) => &data[..end],
        None => &data[..data.len().min(MAX_HEAD)],
    };
    let origins = ["https://app.example.com".to_string()];
    for allowed in [&origins[..], &[]] {
        let policy = Policy {
            path: "/mqtt",
            allowed_origins: allowed,
        };
        match respond(head, &policy) {
            Ok(resp) => {
                let text = String::from_utf8(resp).expect("response is text");
                assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
                let key = text
                    .split("Sec-WebSocket-Accept: ")
                    .nth(1)
                    .and_then(|t| t.split("\r\n").next())
                    .expect("accept key");
                assert_eq!(key.len(), 28, "base64 of 20 bytes");
                assert!(text.ends_with("\r\n\r\n"));
            }
            Err(r) => {
                assert!(matches!(r.status, 400 | 403 | 404 | 426), "{r:?}");
                let resp = r.response();
                assert!(resp.starts_with(format!("HTTP/1.1 {} ", r.status).as_bytes()));
            }
        }
    }
}

fn header(data: &[u8]) {
    let full = parse_header(data);
    if let Ok(Some(h)) = full {
        assert!(h.header_len <= MAX_HEADER && h.header_len <= data.len());
        assert!(h.len >> 63 == 0);
        if h.opcode.is_control() {
            assert!(h.fin && h.len <= MAX_CONTROL);
        }
    }
    if full == Ok(None) {
        assert!(
            data.len() < MAX_HEADER,
            "undecided after {} bytes",
            data.len()
        );
    }
    for n in 0..=data.len() {
        let now = parse_header(&data[..n]);
        if now != Ok(None) {
            assert_eq!(now, full, "decision at {n} bytes changed later");
            break;
        }
    }
}

fn frames(data: &[u8]) {
    for cap in [65_536, 16] {
        let whole = deframe(data, &[], cap);
        assert!(whole.0.len() <= data.len());
        let cuts: [&[usize]; 4] = [
            &[1],
            &[2, 3, 9],
            &[data.len() / 2],
            &[5, 6, 7, 8, 13, 14, 15, 130, 131],
        ];
        for c in cuts {
            let split = deframe(data, c, cap);
            match (&whole.1, &split.1) {
                (Ok(_), Ok(_)) => assert_eq!(whole, split, "cut at {c:?}"),
                (Err(a), Err(b)) => assert_eq!(a, b, "cut at {c:?}"),
                _ => panic!("cut at {c:?}: {:?} vs {:?}", whole.1, split.1),
            }
        }
    }
}
