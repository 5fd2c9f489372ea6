//! The peer-frame fuzz corpus (`fuzz/corpus/peer_frame/`) replays cleanly, and the
//! ignored test that writes its seeds.

use super::*;

/// The fuzz corpus of `fuzz/fuzz_targets/peer_frame.rs`, replayed without a nightly
/// toolchain: every input decodes or fails cleanly, and what decodes re-encodes to the
/// same bytes.
#[test]
fn peer_frame_corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/peer_frame");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("corpus dir") {
        let data = std::fs::read(e.expect("entry").path()).expect("read seed");
        peer_frame_check(&data);
        n += 1;
    }
    assert!(n >= 5, "seed corpus present ({n})");
}

#[path = "../../fuzz/fuzz_targets/peer_frame_check.rs"]
mod peer_frame_check_mod;
use peer_frame_check_mod::peer_frame_check;

/// Writes the seed corpus (run by hand):
/// `cargo test --test integration -- --ignored write_peer_frame_seeds`.
#[test]
#[ignore = "writes fuzz/corpus/peer_frame"]
fn write_peer_frame_seeds() {
    use mqgate::peers::frame::{Frame, VERSION};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/peer_frame");
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    let u = |k: &str, n: Option<&str>| mqgate::sticky::Update {
        key: k.into(),
        node: n.map(Into::into),
        stamp: 1_700_000_000_000,
        origin: "gate-a".into(),
        idle_ms: 1234,
    };
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "hello",
            encode(&Frame::Hello {
                version: VERSION,
                name: "gate-a".into(),
                nonce: [3; 32],
            }),
        ),
        ("auth", encode(&Frame::Auth { mac: [4; 32] })),
        (
            "updates",
            encode(&Frame::Updates {
                cluster: "brokers".into(),
                updates: vec![u("dev-1", Some("node1")), u("dev-2", None)],
            }),
        ),
        (
            "sync",
            [
                encode(&Frame::SyncBegin),
                encode(&Frame::SyncEnd { entries: 2 }),
            ]
            .concat(),
        ),
        ("heartbeat", encode(&Frame::Heartbeat)),
        (
            "error",
            encode(&Frame::Error {
                reason: "authentication failed".into(),
            }),
        ),
        ("bad-version", {
            let mut h = encode(&Frame::Hello {
                version: VERSION,
                name: "x".into(),
                nonce: [0; 32],
            });
            h[9] = 9;
            h
        }),
        ("bad-too-large", vec![0x7F, 0xFF, 0xFF, 0xFF, 3]),
        (
            "bad-truncated",
            encode(&Frame::Updates {
                cluster: "c".into(),
                updates: vec![u("k", Some("n"))],
            })[..20]
                .to_vec(),
        ),
        ("bad-http", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        (
            "subs",
            encode(&Frame::Subs {
                cluster: "brokers".into(),
                clients: vec![(
                    "dev-1".into(),
                    1_700_000_000_000_000,
                    vec![mqgate::sticky::subs::Sub {
                        topic: "cmd/dev-1".into(),
                        options: 1,
                        properties: Box::new([]),
                    }],
                )],
            }),
        ),
        (
            "pull",
            [
                encode(&Frame::SyncRequest { scope: 1 }),
                encode(&Frame::SyncDone {
                    scope: 0,
                    entries: 3,
                }),
            ]
            .concat(),
        ),
        (
            "live",
            encode(&Frame::Live {
                cluster: "brokers".into(),
                ids: vec![("dev-1".into(), 1_700_000_000_000, "192.0.2.7:5000".into())],
            }),
        ),
        ("bad-scope", {
            let mut f = encode(&Frame::SyncRequest { scope: 0 });
            if let Some(last) = f.last_mut() {
                *last = 7;
            }
            f
        }),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
    }
}
