//! Replays the fuzz corpora with plain `cargo test`.
//!
//! Every file in `fuzz/corpus/connect/` and `fuzz/corpus/connack/` goes through the
//! same checks as the cargo-fuzz targets (`fuzz/fuzz_targets/checks.rs`), so a
//! regression is caught without a nightly toolchain. `fuzz/corpus/proxy_header/`
//! and `fuzz/corpus/websocket/` are replayed by their own tests at the end (the
//! WebSocket checks also run on mutated seeds through proptest); other corpus
//! directories are ignored.
//!
//! The seed files are written by `write_seed_corpus` below, from real encoders:
//! `cargo test --test integration -- --ignored write_seed_corpus`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::mqtt::{connect_raw, mqtt_field as s};
use bytes::{Bytes, BytesMut};
use mqgate::mqtt::{connack_reply, encode_connect_v311};

#[path = "../fuzz/fuzz_targets/checks.rs"]
pub(crate) mod checks;

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
}

/// A fuzz target's checks: panics on a violated property.
type Check = fn(&[u8]);

/// The corpus directories this test knows, with the check each one gets.
const TARGETS: &[(&str, Check)] = &[
    ("connect", checks::connect),
    ("connack", checks::connack),
    ("subscribe", checks::subscribe),
];

fn corpus_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn replay_fuzz_corpora() {
    let root = corpus_root();
    let mut failures = Vec::new();
    for &(target, check) in TARGETS {
        let files = corpus_files(&root.join(target));
        assert!(!files.is_empty(), "fuzz/corpus/{target} has no seed files");
        for file in files {
            let data = fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failures.push(file.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "corpus inputs failed: {failures:#?}");
}

/// A CONNECT built by hand (keep alive 60 s), for what no encoder here writes (MQTT
/// 3.1, bad bytes); `rest` is given already encoded (`s`: a length-prefixed field).
fn raw_connect(name: &[u8], level: u8, flags: u8, rest: &[&[u8]]) -> Vec<u8> {
    connect_raw(0x10, name, level, flags, 60, rest)
}

fn connect_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use mqttbytes::{v4, v5, Protocol, QoS};
    let mut seeds = vec![
        ("v311-minimal", encode_connect_v311("c", None, None, 60)),
        (
            "v311-health-check",
            encode_connect_v311("mqgate-health", Some("mqgate-health"), Some(b"s3cret"), 5),
        ),
        (
            "v311-empty-username",
            encode_connect_v311("", Some(""), None, 0),
        ),
        (
            "v31-mqisdp",
            raw_connect(b"MQIsdp", 3, 0x02, &[&s(b"legacy-1")]),
        ),
        (
            "v31-mqisdp-will-login",
            raw_connect(
                b"MQIsdp",
                3,
                0xEC,
                &[
                    &s(b"legacy-2"),
                    &s(b"lwt/legacy-2"),
                    &s(b"gone"),
                    &s(b"u"),
                    &s(b"p"),
                ],
            ),
        ),
        (
            "v311-bridge-bit",
            raw_connect(b"MQTT", 0x84, 0x02, &[&s(b"bridge")]),
        ),
        (
            "v5-password-only",
            raw_connect(b"MQTT", 5, 0x40, &[&[0x00], &s(b"c"), &s(&[0xFF, 0x00])]),
        ),
        // malformed and refused ones
        ("bad-level-6", raw_connect(b"MQTT", 6, 0x02, &[&s(b"c")])),
        ("bad-name", raw_connect(b"MQTX", 4, 0x02, &[&s(b"c")])),
        (
            "bad-reserved-flag",
            raw_connect(b"MQTT", 4, 0x03, &[&s(b"c")]),
        ),
        (
            "bad-will-qos3",
            raw_connect(b"MQTT", 4, 0x1E, &[&s(b"c"), &s(b"t"), &s(b"m")]),
        ),
        (
            "bad-password-only-v311",
            raw_connect(b"MQTT", 4, 0x42, &[&s(b"c"), &s(b"p")]),
        ),
        (
            "bad-utf8-client-id",
            raw_connect(b"MQTT", 4, 0x02, &[&s(&[0xC3, 0x28])]),
        ),
        (
            "bad-nul-username",
            raw_connect(b"MQTT", 4, 0x82, &[&s(b"c"), &s(b"a\0")]),
        ),
        (
            "bad-trailing",
            raw_connect(b"MQTT", 4, 0x02, &[&s(b"c"), &[0x00]]),
        ),
        (
            "bad-past-end",
            raw_connect(b"MQTT", 4, 0x02, &[&[0x00, 0x20, b'c']]),
        ),
        (
            "bad-v5-unknown-property",
            raw_connect(b"MQTT", 5, 0x02, &[&[0x02, 0x7F, 0x00], &s(b"c")]),
        ),
        (
            "bad-v5-duplicate-property",
            raw_connect(
                b"MQTT",
                5,
                0x02,
                &[&[0x06, 0x19, 1, 0x19, 1, 0x17, 1], &s(b"c")],
            ),
        ),
        (
            "bad-5-byte-length",
            vec![0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        ),
        (
            "bad-header-flags",
            vec![0x12, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T'],
        ),
        ("too-large-header", vec![0x10, 0xFF, 0xFF, 0x7F]),
        // not MQTT at all
        (
            "http-get",
            b"GET / HTTP/1.1\r\nHost: mqgate\r\n\r\n".to_vec(),
        ),
        (
            "tls-client-hello",
            vec![
                0x16, 0x03, 0x01, 0x00, 0xF1, 0x01, 0x00, 0x00, 0xED, 0x03, 0x03, 0x5A, 0x1B,
            ],
        ),
        ("pingreq", vec![0xC0, 0x00]),
        (
            "proxy-v1",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 1883\r\n".to_vec(),
        ),
    ];
    let mut followed = encode_connect_v311("pipelined", None, None, 30);
    followed.extend_from_slice(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'#', 0x00]);
    seeds.push(("v311-then-subscribe", followed));

    let mut v4_full = v4::Connect::new("dev-42");
    v4_full.clean_session = false;
    v4_full.keep_alive = 600;
    v4_full.last_will = Some(v4::LastWill::new(
        "status/dev-42",
        b"offline".to_vec(),
        QoS::AtLeastOnce,
        true,
    ));
    v4_full.login = Some(v4::Login::new("alice", "wonderland"));
    seeds.push(("v311-will-login-persistent", write_v4(&v4_full)));

    let mut v5_full = v5::Connect::new("dev-43");
    v5_full.protocol = Protocol::V5;
    v5_full.clean_session = false;
    v5_full.login = Some(v5::Login::new("bob", "builder"));
    v5_full.properties = Some(v5::ConnectProperties {
        session_expiry_interval: Some(86_400),
        receive_maximum: Some(32),
        max_packet_size: Some(1 << 20),
        topic_alias_max: Some(10),
        request_response_info: Some(1),
        request_problem_info: Some(0),
        user_properties: vec![("site".into(), "berlin".into())],
        authentication_method: Some("SCRAM-SHA-256".into()),
        authentication_data: Some(Bytes::from_static(b"n,,n=bob,r=abc")),
    });
    v5_full.last_will = Some(v5::LastWill {
        topic: "status/dev-43".into(),
        message: Bytes::from_static(b"{\"online\":false}"),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: Some(v5::WillProperties {
            delay_interval: Some(30),
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(3600),
            content_type: Some("application/json".into()),
            response_topic: Some("reply/dev-43".into()),
            correlation_data: Some(Bytes::from_static(&[1, 2, 3])),
            user_properties: vec![("k".into(), "v".into())],
        }),
    });
    seeds.push(("v5-session-expiry-will-auth", write_v5(&v5_full)));
    seeds.push(("v5-minimal", write_v5(&v5::Connect::new("v5"))));
    seeds
}

fn write_v4(packet: &mqttbytes::v4::Connect) -> Vec<u8> {
    let mut buf = BytesMut::new();
    packet.write(&mut buf).expect("mqttbytes encodes");
    buf.to_vec()
}

fn write_v5(packet: &mqttbytes::v5::Connect) -> Vec<u8> {
    let mut buf = BytesMut::new();
    packet.write(&mut buf).expect("mqttbytes encodes");
    buf.to_vec()
}

fn connack_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use mqttbytes::{v4, v5};
    let mut seeds = Vec::new();
    for (name, v5, code) in [
        ("reply-v3-protocol", false, 0x01),
        ("reply-v3-unavailable", false, 0x03),
        ("reply-v5-unavailable", true, 0x88),
        ("reply-v5-busy", true, 0x89),
    ] {
        let (bytes, len) = connack_reply(v5, code);
        seeds.push((name, bytes[..len].to_vec()));
    }
    let mut buf = BytesMut::new();
    v4::ConnAck::new(v4::ConnectReturnCode::Success, true)
        .write(&mut buf)
        .expect("mqttbytes encodes");
    seeds.push(("v3-accepted-session-present", buf.to_vec()));
    let mut buf = BytesMut::new();
    v4::ConnAck::new(v4::ConnectReturnCode::NotAuthorized, false)
        .write(&mut buf)
        .expect("mqttbytes encodes");
    seeds.push(("v3-not-authorized", buf.to_vec()));

    let mut props = v5::ConnAckProperties::new();
    props.session_expiry_interval = Some(3600);
    props.receive_max = Some(100);
    props.max_qos = Some(1);
    props.assigned_client_identifier = Some("auto-8F3A".into());
    props.reason_string = Some("r".repeat(150));
    props.server_keep_alive = Some(60);
    let mut ack = v5::ConnAck::new(v5::ConnectReturnCode::Success, false);
    ack.properties = Some(props);
    let mut buf = BytesMut::new();
    ack.write(&mut buf).expect("mqttbytes encodes");
    seeds.push(("v5-accepted-properties", buf.to_vec()));

    let mut then_publish = vec![0x20, 0x02, 0x00, 0x00];
    then_publish.extend_from_slice(&[0x30, 0x05, 0x00, 0x01, b't', b'h', b'i']);
    seeds.push(("v3-accepted-then-publish", then_publish));
    seeds.push(("bad-short", vec![0x20, 0x01, 0x00]));
    seeds.push(("bad-ack-flags", vec![0x20, 0x02, 0x02, 0x00]));
    seeds.push((
        "bad-5-byte-length",
        vec![0x20, 0x80, 0x80, 0x80, 0x80, 0x01],
    ));
    seeds.push((
        "not-connack-connect",
        encode_connect_v311("c", None, None, 60),
    ));
    seeds.push((
        "not-connack-http",
        b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
    ));
    seeds
}

/// Streams for the `subscribe` target: byte 0 = MQTT 5 flag and split point, then
/// relayed packets (SUBSCRIBE, UNSUBSCRIBE, SUBACK, UNSUBACK among others).
fn subscribe_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use mqgate::mqtt::subscribe::encode_subscribe;
    let p = |first: u8, body: &[u8]| crate::common::mqtt::mqtt_packet(first, body);
    let v311_sub = encode_subscribe(1, false, &[], "a/+/c", 1);
    let v5_sub = encode_subscribe(
        2,
        true,
        &[0x0B, 7, 0x26, 0, 1, b'k', 0, 1, b'v'],
        "d/#",
        0x25,
    );
    let publish = p(0x32, &[0, 3, b'a', b'/', b'b', 0, 9, b'x']);
    let unsub = p(0xA2, &[0, 3, 0, 5, b'a', b'/', b'+', b'/', b'c']);
    let suback = p(0x90, &[0, 1, 1]);
    let unsuback_v5 = p(0xB0, &[0, 3, 0, 0x11]);
    let cat = |head: u8, parts: &[&[u8]]| {
        let mut v = vec![head];
        for x in parts {
            v.extend_from_slice(x);
        }
        v
    };
    vec![
        ("v311-sub", cat(0x08, &[&v311_sub])),
        ("v5-sub-props", cat(0x0B, &[&v5_sub])),
        (
            "v311-stream",
            cat(
                0x10,
                &[&publish, &v311_sub, &suback, &unsub, &p(0xB0, &[0, 3])],
            ),
        ),
        ("v5-unsuback", cat(0x05, &[&unsuback_v5, &publish])),
        ("bad-suback-code", cat(0x04, &[&p(0x90, &[0, 1, 0x42])])),
        (
            "bad-five-byte-length",
            cat(0x06, &[&[0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]]),
        ),
        (
            "bad-sub-qos3",
            cat(0x02, &[&p(0x82, &[0, 1, 0, 1, b'a', 3])]),
        ),
        ("cut-sub", cat(0x00, &[&v311_sub[..5]])),
    ]
}

/// Regenerates the seed corpora (run by hand, see the module doc).
#[test]
#[ignore = "writes fuzz/corpus/; run by hand to regenerate the seeds"]
fn write_seed_corpus() {
    let root = corpus_root();
    for (target, seeds) in [
        ("connect", connect_seeds()),
        ("connack", connack_seeds()),
        ("subscribe", subscribe_seeds()),
    ] {
        let dir = root.join(target);
        fs::create_dir_all(&dir).expect("create corpus dir");
        for (name, bytes) in seeds {
            fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
        }
    }
}

#[test]
fn seeds_are_what_they_claim() {
    use mqgate::mqtt::{observe_connack, parse_connect, ConnectError, Parse};
    for (name, bytes) in connect_seeds() {
        let parsed = parse_connect(&bytes);
        let ok = parsed.is_ok();
        let expect_ok = name.starts_with("v3") || name.starts_with("v5");
        assert_eq!(ok, expect_ok, "{name}: {parsed:?}");
        if name.starts_with("bad-level") {
            assert_eq!(parsed, Err(ConnectError::UnsupportedProtocol(6)));
        }
    }
    for (name, bytes) in connack_seeds() {
        let observed = observe_connack(&bytes);
        let ok = matches!(observed, Ok(Parse::Complete(_)));
        assert_eq!(
            ok,
            !name.starts_with("bad") && !name.starts_with("not"),
            "{name}: {observed:?}"
        );
    }
}

#[path = "../fuzz/fuzz_targets/proxy_checks.rs"]
mod proxy_checks;

/// The PROXY header target's corpus (`fuzz/corpus/proxy_header/`), replayed through
/// the same checks as `fuzz/fuzz_targets/proxy_header.rs`.
#[test]
fn replay_proxy_header_corpus() {
    let dir = corpus_root().join("proxy_header");
    let files = corpus_files(&dir);
    assert!(
        !files.is_empty(),
        "fuzz/corpus/proxy_header has no seed files"
    );
    let failures: Vec<String> = files
        .iter()
        .filter(|file| {
            let data = fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            std::panic::catch_unwind(|| proxy_checks::proxy_header(&data)).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(failures.is_empty(), "corpus inputs failed: {failures:#?}");
}

#[path = "../fuzz/fuzz_targets/ws_checks.rs"]
mod ws_checks;

/// Seeds of the `websocket` target: upgrade requests (good and each refusal) and
/// client frame sequences (split CONNECT, ping, close, and each refused frame).
fn websocket_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let req = |extra: &str| {
        format!(
            "GET /mqtt HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .into_bytes()
    };
    let frame = |b0: u8, payload: &[u8]| {
        let mask = [1u8, 2, 3, 4];
        let mut v = vec![b0, 0x80 | payload.len() as u8];
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    };
    let connect = encode_connect_v311("ws", None, None, 60);
    let mut split = frame(0x02, &connect[..4]);
    split.extend(frame(0x89, b"ping"));
    split.extend(frame(0x80, &connect[4..]));
    split.extend(frame(0x88, &[3, 232]));
    let mut huge = vec![0x82, 0xFF];
    huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
    huge.extend_from_slice(&[0; 4]);
    vec![
        ("upgrade-ok", req("Sec-WebSocket-Protocol: mqtt\r\n")),
        (
            "upgrade-mqttv31",
            req("Sec-WebSocket-Protocol: mqttv3.1\r\n"),
        ),
        ("upgrade-no-protocol", req("")),
        (
            "upgrade-origin",
            req("Origin: https://evil.example\r\nSec-WebSocket-Protocol: mqtt\r\n"),
        ),
        (
            "plain-get",
            b"GET /mqtt HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        ),
        (
            "wrong-path",
            b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        ),
        ("frames-connect", frame(0x82, &connect)),
        ("frames-split-ping-close", split),
        (
            "frame-unmasked",
            [&[0x82, connect.len() as u8][..], &connect].concat(),
        ),
        ("frame-text", frame(0x81, b"{}")),
        ("frame-len-2-63", huge),
        (
            "frames-16-bit-length",
            [&[0x82, 0xFE, 0x01, 0x00, 0, 0, 0, 0][..], &[0; 256]].concat(),
        ),
        ("frame-continuation-first", frame(0x80, b"x")),
        (
            "frame-long-ping",
            [&[0x89, 0xFE, 0, 126, 0, 0, 0, 0][..], &[0; 126]].concat(),
        ),
    ]
}

/// The `websocket` target's corpus (`fuzz/corpus/websocket/`), replayed through the
/// same checks as `fuzz/fuzz_targets/websocket.rs`.
#[test]
fn replay_websocket_corpus() {
    let dir = corpus_root().join("websocket");
    let files = corpus_files(&dir);
    assert!(
        files.len() >= websocket_seeds().len(),
        "fuzz/corpus/websocket: seeds missing"
    );
    let failures: Vec<String> = files
        .iter()
        .filter(|file| {
            let data = fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            std::panic::catch_unwind(|| ws_checks::websocket(&data)).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(failures.is_empty(), "corpus inputs failed: {failures:#?}");
}

/// Regenerates `fuzz/corpus/websocket/` (run by hand, like `write_seed_corpus`).
#[test]
#[ignore = "writes fuzz/corpus/websocket; run by hand to regenerate the seeds"]
fn write_websocket_seed_corpus() {
    let dir = corpus_root().join("websocket");
    fs::create_dir_all(&dir).expect("create corpus dir");
    for (name, bytes) in websocket_seeds() {
        fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
    }
}

#[test]
fn websocket_seeds_are_what_they_claim() {
    use mqgate::ws::stream::deframe;
    for (name, bytes) in websocket_seeds() {
        if let Some(frames) = name.strip_prefix("frame") {
            let (out, end) = deframe(&bytes, &[], 65_536);
            let ok = frames.starts_with("s-");
            assert_eq!(end.is_ok(), ok, "{name}: {end:?}");
            if ok && name != "frames-16-bit-length" {
                assert_eq!(out, encode_connect_v311("ws", None, None, 60), "{name}");
            }
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// The `websocket` checks on seeds with bytes overwritten, cut or extended: what
    /// a short fuzzing run would try first, on every `cargo test`.
    #[test]
    fn websocket_checks_hold_on_mutated_seeds(
        seed in 0usize..64,
        edits in proptest::collection::vec((0usize..512, proptest::num::u8::ANY), 0..6),
        cut in 0usize..600,
        tail in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
    ) {
        let seeds = websocket_seeds();
        let mut data = seeds[seed % seeds.len()].1.clone();
        for (at, b) in edits {
            if !data.is_empty() {
                let i = at % data.len();
                data[i] = b;
            }
        }
        data.truncate(cut);
        data.extend(tail);
        ws_checks::websocket(&data);
    }
}
