//! What the `proxy_header` fuzz target asserts, shared with `tests/fuzz_corpus.rs`
//! (`replay_proxy_header_corpus`) so that plain `cargo test` replays the corpus through
//! exactly the same checks.
//!
//! Beyond "no panic": the decision (complete or error) is made once and never changes
//! as more bytes arrive; "incomplete" never lasts past the size limits; a complete
//! header is self-delimiting; and what mqgate would send on for it parses back to the
//! same addresses.

use mqgate::proxy::{self, parse::V1_MAX, parse::V2_MAX_BODY, Parsed};

pub fn proxy_header(data: &[u8]) {
    let full = proxy::parse(data);
    if full == Ok(Parsed::Incomplete) {
        assert!(
            data.len() < 16 + V2_MAX_BODY,
            "incomplete after {} bytes",
            data.len()
        );
        if data.first() == Some(&b'P') {
            assert!(data.len() < V1_MAX, "v1 incomplete past 107 bytes");
        }
    }

    // The first prefix that decides must agree with the whole input.
    for n in 0..=data.len() {
        let now = proxy::parse(&data[..n]);
        if now != Ok(Parsed::Incomplete) {
            assert_eq!(now, full, "decision at {n} bytes changed later");
            break;
        }
    }

    if let Ok(Parsed::Complete { len, info }) = &full {
        assert!(*len <= data.len());
        assert_eq!(
            proxy::parse(&data[..*len]),
            full,
            "header is self-delimiting"
        );
        let addrs = info.source.zip(info.destination);
        for out in [proxy::v1_header(addrs), proxy::v2_header(addrs, None)] {
            match proxy::parse(&out) {
                Ok(Parsed::Complete { len, info: back }) => {
                    assert_eq!(len, out.len());
                    if let Some((s, d)) = addrs {
                        let v4 = |a: std::net::SocketAddr| match a.ip() {
                            std::net::IpAddr::V6(v6) => v6
                                .to_ipv4_mapped()
                                .map(|ip| std::net::SocketAddr::new(ip.into(), a.port()))
                                .unwrap_or(a),
                            _ => a,
                        };
                        assert_eq!(back.source.map(v4), Some(v4(s)));
                        assert_eq!(back.destination.map(v4), Some(v4(d)));
                    } else {
                        assert_eq!(back.source, None);
                    }
                }
                other => panic!("our own header does not parse: {other:?} {out:?}"),
            }
        }
    }
}
