//! Unit tests of the CONNECT parser and encoder (`super`, `mqtt/connect.rs`).

use super::*;
use crate::mqtt::wire::put_varint;

const M: fn(&'static str) -> ConnectError = ConnectError::Malformed;

/// A u16-length-prefixed field.
fn s(bytes: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A CONNECT: fixed header, protocol name and level, flags, keep alive, then `rest`
/// (v5 properties and payload fields, already encoded).
fn connect(name: &[u8], level: u8, flags: u8, keep_alive: u16, rest: &[&[u8]]) -> Vec<u8> {
    let mut body = s(name);
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    for part in rest {
        body.extend_from_slice(part);
    }
    let mut out = vec![0x10];
    put_varint(&mut out, body.len());
    out.extend(body);
    out
}

fn v311(flags: u8, rest: &[&[u8]]) -> Vec<u8> {
    connect(b"MQTT", 4, flags, 60, rest)
}

fn v5(flags: u8, rest: &[&[u8]]) -> Vec<u8> {
    connect(b"MQTT", 5, flags, 60, rest)
}

/// frame_len must agree with the packet's length before parse_connect runs.
fn parse(packet: &[u8]) -> Result<Connect<'_>, ConnectError> {
    if let Ok(Parse::Complete(len)) = frame_len(packet, usize::MAX) {
        if len == packet.len() {
            return parse_connect(packet);
        }
    }
    panic!("frame_len disagrees with packet length: {packet:02x?}");
}

#[test]
fn v3_1_mqisdp() {
    let p = connect(b"MQIsdp", 3, 0x00, 30, &[&s(b"sensor-1")]);
    let c = parse(&p).unwrap();
    assert_eq!(c.version, ProtocolVersion::V3_1);
    assert_eq!(c.version.as_str(), "3.1");
    assert_eq!(c.client_id, "sensor-1");
    assert_eq!(c.keep_alive, 30);
    assert!(!c.clean_session);
    assert!(c.keeps_session());
    assert_eq!(
        (c.username, c.password, c.will, c.session_expiry),
        (None, None, None, None)
    );
}

#[test]
fn v3_1_1_minimal_with_empty_client_id() {
    let p = v311(0x02, &[&s(b"")]);
    assert_eq!(
        parse(&p),
        Ok(Connect {
            version: ProtocolVersion::V3_1_1,
            client_id: "",
            username: None,
            password: None,
            clean_session: true,
            keep_alive: 60,
            will: None,
            session_expiry: None,
        })
    );
    assert!(!parse(&p).unwrap().keeps_session());
}

#[test]
fn v3_1_1_will_and_credentials() {
    // will flag, QoS 2, retain, password, username
    let flags = 0x04 | (2 << 3) | 0x20 | 0x40 | 0x80;
    let p = v311(
        flags,
        &[
            &s("cl€nt".as_bytes()),
            &s(b"status/cl"),
            &s(b"\x00\xFFoffline"),
            &s(b"alice"),
            &s(b"pw"),
        ],
    );
    let c = parse(&p).unwrap();
    assert_eq!(c.client_id, "cl€nt");
    assert_eq!(
        c.will,
        Some(Will {
            topic: "status/cl",
            payload: b"\x00\xFFoffline",
            qos: 2,
            retain: true
        })
    );
    assert_eq!(c.username, Some("alice"));
    assert_eq!(c.password, Some(&b"pw"[..]));
    assert!(!c.clean_session);
}

#[test]
fn username_absent_vs_empty() {
    let absent = v311(0x02, &[&s(b"c")]);
    let empty = v311(0x82, &[&s(b"c"), &s(b"")]);
    assert_eq!(parse(&absent).unwrap().username, None);
    assert_eq!(parse(&empty).unwrap().username, Some(""));
    let empty_pw = v311(0xC2, &[&s(b"c"), &s(b"u"), &s(b"")]);
    assert_eq!(parse(&empty_pw).unwrap().password, Some(&b""[..]));
}

#[test]
fn password_is_binary_and_never_printed() {
    let pw = [0xFF, 0xFE, 0x00, 0xC3, 0x28];
    let p = v311(0xC2, &[&s(b"c"), &s(b"u"), &s(&pw)]);
    let c = parse(&p).unwrap();
    assert_eq!(c.password, Some(&pw[..]));
    let debug = format!("{c:?}");
    assert!(debug.contains("***"), "{debug}");
    assert!(!debug.contains("255"), "{debug}");
}

#[test]
fn v5_with_properties_and_session_expiry() {
    let props: &[u8] = &[
        0x11, 0x00, 0x00, 0x0E, 0x10, // session expiry 3600
        0x21, 0x00, 0x14, // receive maximum 20
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
    ];
    let mut block = vec![u8::try_from(props.len()).unwrap()];
    block.extend_from_slice(props);
    let p = v5(
        0x02 | 0x80 | 0x40,
        &[&block, &s(b"dev-9"), &s(b"bob"), &s(&[0x80])],
    );
    let c = parse(&p).unwrap();
    assert_eq!(c.version, ProtocolVersion::V5);
    assert_eq!(c.version.as_str(), "5.0");
    assert!(c.version.is_v5());
    assert_eq!(c.session_expiry, Some(3600));
    assert_eq!(c.client_id, "dev-9");
    assert_eq!(c.username, Some("bob"));
    assert_eq!(c.password, Some(&[0x80][..]));
    assert!(c.clean_session);
    assert!(
        c.keeps_session(),
        "v5: session expiry decides, not clean start"
    );
}

#[test]
fn v5_session_expiry_absent_or_zero_means_no_session() {
    let p = v5(0x00, &[&[0x00], &s(b"c")]);
    let c = parse(&p).unwrap();
    assert_eq!(c.session_expiry, None);
    assert!(!c.clean_session);
    assert!(!c.keeps_session());
    let p = v5(0x00, &[&[0x05, 0x11, 0, 0, 0, 0], &s(b"c")]);
    let c = parse(&p).unwrap();
    assert_eq!(c.session_expiry, Some(0));
    assert!(!c.keeps_session());
}

#[test]
fn v5_will_with_properties() {
    let will_props: &[u8] = &[0x07, 0x18, 0, 0, 0, 10, 0x01, 0x01];
    let p = v5(
        0x04 | (1 << 3) | 0x02,
        &[&[0x00], &s(b"c"), will_props, &s(b"t/w"), &s(b"bye")],
    );
    let c = parse(&p).unwrap();
    assert_eq!(
        c.will,
        Some(Will {
            topic: "t/w",
            payload: b"bye",
            qos: 1,
            retain: false
        })
    );
}

#[test]
fn v5_password_without_username_is_allowed() {
    let p = v5(0x40, &[&[0x00], &s(b"c"), &s(b"secret")]);
    let c = parse(&p).unwrap();
    assert_eq!((c.username, c.password), (None, Some(&b"secret"[..])));
}

#[test]
fn bridge_bit_in_level_is_accepted() {
    let p = connect(b"MQTT", 0x84, 0x02, 60, &[&s(b"bridge")]);
    assert_eq!(parse(&p).unwrap().version, ProtocolVersion::V3_1_1);
    let p = connect(b"MQIsdp", 0x83, 0x02, 60, &[&s(b"bridge")]);
    assert_eq!(parse(&p).unwrap().version, ProtocolVersion::V3_1);
}

#[test]
fn bytes_after_the_packet_are_ignored() {
    let mut p = v311(0x02, &[&s(b"c")]);
    let len = p.len();
    p.extend_from_slice(&[0xC0, 0x00]); // a PINGREQ right behind it
    assert_eq!(frame_len(&p, 1024), Ok(Parse::Complete(len)));
    assert_eq!(parse_connect(&p).unwrap().client_id, "c");
}

#[test]
fn not_connect() {
    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03,
        ],
        &[0xC0, 0x00],             // PINGREQ
        &[0x20, 0x02, 0x00, 0x00], // CONNACK
        &[0x30, 0x00],             // PUBLISH
        &[0x00],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    ];
    for buf in cases {
        assert_eq!(
            frame_len(buf, 65536),
            Err(ConnectError::NotConnect),
            "{buf:02x?}"
        );
        // decided from the first byte alone
        assert_eq!(frame_len(&buf[..1], 65536), Err(ConnectError::NotConnect));
        assert_eq!(parse_connect(buf), Err(ConnectError::NotConnect));
    }
    assert_eq!(ConnectError::NotConnect.reason(), "invalid");
}

#[test]
fn unsupported_protocol_levels() {
    for (name, level) in [
        (&b"MQTT"[..], 6u8),
        (b"MQTT", 3),
        (b"MQTT", 0),
        (b"MQIsdp", 4),
        (b"MQIsdp", 5),
    ] {
        let p = connect(name, level, 0x02, 60, &[&s(b"c")]);
        assert_eq!(parse(&p), Err(ConnectError::UnsupportedProtocol(level)));
    }
    // decided at the level byte, whatever follows
    let p = connect(b"MQTT", 6, 0xFF, 0, &[&[0xFF; 3]]);
    assert_eq!(parse(&p), Err(ConnectError::UnsupportedProtocol(6)));
    assert_eq!(ConnectError::UnsupportedProtocol(6).reason(), "protocol");
}

#[test]
fn unknown_protocol_name_is_malformed() {
    for name in [&b"MQTX"[..], b"mqtt", b"", b"MQIsdpX", b"HTTP"] {
        let p = connect(name, 4, 0x02, 60, &[&s(b"c")]);
        assert_eq!(parse(&p), Err(M("protocol name")), "{name:?}");
    }
}

#[test]
fn too_large_from_header_alone() {
    // remaining length 0x0F_FFFF (1,048,575): refuse from the 4 header bytes.
    let header = [0x10, 0xFF, 0xFF, 0x3F];
    assert_eq!(
        frame_len(&header, 65536),
        Err(ConnectError::TooLarge(1_048_579))
    );
    assert_eq!(frame_len(&header[..3], 65536), Ok(Parse::Incomplete));
    let p = v311(0x02, &[&s(b"c")]);
    assert_eq!(frame_len(&p, p.len()), Ok(Parse::Complete(p.len())));
    assert_eq!(
        frame_len(&p, p.len() - 1),
        Err(ConnectError::TooLarge(p.len()))
    );
    assert_eq!(ConnectError::TooLarge(1).reason(), "too_large");
}

#[test]
fn frame_len_byte_at_a_time() {
    // 200-byte client id: a 2-byte Remaining Length.
    let id = [b'x'; 200];
    let p = v311(0x02, &[&s(&id)]);
    assert_eq!(p.len(), 3 + 10 + 2 + 200);
    for n in 0..3 {
        assert_eq!(
            frame_len(&p[..n], 65536),
            Ok(Parse::Incomplete),
            "{n} bytes"
        );
    }
    for n in 3..=p.len() {
        assert_eq!(
            frame_len(&p[..n], 65536),
            Ok(Parse::Complete(p.len())),
            "{n} bytes"
        );
    }
    assert_eq!(parse(&p).unwrap().client_id.len(), 200);

    let small = v311(0x02, &[&s(b"c")]);
    assert_eq!(frame_len(&small[..1], 65536), Ok(Parse::Incomplete));
    assert_eq!(
        frame_len(&small[..2], 65536),
        Ok(Parse::Complete(small.len()))
    );
}

#[test]
fn five_byte_remaining_length() {
    let p = [0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x00];
    let want = M("remaining length longer than 4 bytes");
    // known as soon as the 4th length byte shows its continuation bit
    assert_eq!(frame_len(&p[..5], usize::MAX), Err(want.clone()));
    assert_eq!(frame_len(&p, usize::MAX), Err(want.clone()));
    assert_eq!(parse_connect(&p), Err(want));
    assert_eq!(frame_len(&p[..4], usize::MAX), Ok(Parse::Incomplete));
}

#[test]
fn fixed_header_flags() {
    for first in [0x11, 0x12, 0x15, 0x17, 0x18, 0x1F] {
        let mut p = v311(0x02, &[&s(b"c")]);
        p[0] = first;
        assert_eq!(frame_len(&p[..1], 65536), Ok(Parse::Incomplete));
        assert_eq!(frame_len(&p, 65536), Ok(Parse::Complete(p.len())));
        assert_eq!(parse_connect(&p), Err(M("fixed header flags")));
        let mut p = v5(0x02, &[&[0x00], &s(b"c")]);
        p[0] = first;
        assert_eq!(parse_connect(&p), Err(M("fixed header flags")));
        // MQTT 3.1 did not reserve them (Mosquitto accepts them).
        let mut p = connect(b"MQIsdp", 3, 0x02, 60, &[&s(b"c")]);
        p[0] = first;
        assert!(
            parse_connect(&p).is_ok(),
            "3.1 with first byte {first:#04x}"
        );
    }
}

#[test]
fn health_check_connects_parse_back() {
    for v5 in [false, true] {
        let p = encode_connect(v5, "mqgate-hc-1", Some("u"), Some(b"\xffpw"), 10);
        let c = parse(&p).unwrap_or_else(|e| panic!("v5={v5}: {e:?}"));
        assert_eq!(c.version.is_v5(), v5);
        assert_eq!((c.client_id, c.username), ("mqgate-hc-1", Some("u")));
        assert_eq!(c.password, Some(&b"\xffpw"[..]));
        assert!(c.clean_session);
        assert_eq!(c.session_expiry, None);
    }
}

/// The two MQTT 3.1 CONNECTs of Mosquitto's own test data (`CONNECT.json`, group
/// "v3.1 CONNECT", cases "10 ok" and "14 ok") that Mosquitto accepts.
#[test]
fn mosquitto_accepts_these_v3_1_connects_and_so_do_we() {
    let ten = [
        0x10, 0x0F, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x01, 0x00, 0x0A, 0x00,
        0x01, 0x70,
    ];
    let mut fourteen = ten;
    fourteen[0] = 0x14;
    for p in [ten, fourteen] {
        let c = parse_connect(&p).unwrap_or_else(|e| panic!("{p:02x?}: {e:?}"));
        assert_eq!(c.version, ProtocolVersion::V3_1);
        assert_eq!(c.client_id, "p");
        assert_eq!(c.keep_alive, 10);
    }
    // Username / password flags without the fields: ignored on 3.1 only.
    let p = connect(b"MQIsdp", 3, 0xC2, 60, &[&s(b"c")]);
    let c = parse(&p).expect("3.1: flags without fields are ignored");
    assert_eq!((c.username, c.password), (None, None));
    let p = connect(b"MQIsdp", 3, 0xC2, 60, &[&s(b"c"), &s(b"u")]);
    let c = parse(&p).expect("3.1: password flag without the field");
    assert_eq!((c.username, c.password), (Some("u"), None));
    assert_eq!(
        parse(&v311(0xC2, &[&s(b"c")])),
        Err(M(PAST_END)),
        "3.1.1 requires them"
    );
}

#[test]
fn lengths_past_the_end() {
    let valid = v311(
        0xC2 | 0x04,
        &[&s(b"client"), &s(b"t"), &s(b"m"), &s(b"user"), &s(b"pass")],
    );
    assert!(parse(&valid).is_ok());
    // Every truncation of the packet is either incomplete framing or past the end.
    for n in 0..valid.len() {
        let cut = &valid[..n];
        assert!(matches!(
            frame_len(cut, 65536),
            Ok(Parse::Incomplete) | Ok(Parse::Complete(_))
        ));
        assert_eq!(parse_connect(cut), Err(M(PAST_END)), "{n} bytes");
    }
    // A field length that runs past the end of the packet, in each field.
    let cases: Vec<Vec<u8>> = vec![
        v311(0x02, &[&[0x00, 0x09, b'c']]),               // client id
        v311(0x06, &[&s(b"c"), &[0x00, 0x05, b't']]),     // will topic
        v311(0x06, &[&s(b"c"), &s(b"t"), &[0x01, 0x00]]), // will payload
        v311(0x82, &[&s(b"c"), &[0xFF, 0xFF]]),           // username
        v311(0xC2, &[&s(b"c"), &s(b"u"), &[0x00, 0x02, 0x01]]), // password
        v311(0x82, &[&s(b"c")]),                          // username missing
        connect(b"MQTT", 4, 0x02, 60, &[]),               // no client id
        vec![0x10, 0x03, 0x00, 0x09, b'M'],               // protocol name
        vec![0x10, 0x06, 0x00, 0x04, b'M', b'Q', b'T', b'T'], // no level
        vec![0x10, 0x00],                                 // empty body
        v5(0x02, &[]),                                    // no properties
        v5(0x02, &[&[0x05, 0x11, 0x00]]),                 // properties
        v5(0x06, &[&[0x00], &s(b"c")]),                   // no will properties
    ];
    for p in &cases {
        assert_eq!(parse(p), Err(M(PAST_END)), "{p:02x?}");
    }
    // Declared remaining length longer than the bytes given.
    let mut short = v311(0x02, &[&s(b"c")]);
    short[1] += 1;
    assert_eq!(parse_connect(&short), Err(M(PAST_END)));
}

#[test]
fn trailing_bytes_inside_the_packet() {
    let p = v311(0x02, &[&s(b"c"), &[0x00]]);
    assert_eq!(parse(&p), Err(M("trailing bytes after payload")));
    // a username with the username flag off is trailing garbage
    let p = v311(0x02, &[&s(b"c"), &s(b"u")]);
    assert_eq!(parse(&p), Err(M("trailing bytes after payload")));
}

#[test]
fn bad_connect_flags() {
    let c = s(b"c");
    let cases: &[(u8, &str)] = &[
        (0x03, "reserved connect flag set"),
        (0x01, "reserved connect flag set"),
        (0x04 | 0x18, "will QoS 3"),
        (0x08, "will QoS or retain without will flag"),
        (0x10, "will QoS or retain without will flag"),
        (0x20, "will QoS or retain without will flag"),
        (0x40, "password without username"),
    ];
    for &(flags, reason) in cases {
        let p = v311(flags, &[&c, &s(b"t"), &s(b"m"), &s(b"p")]);
        assert_eq!(parse(&p), Err(M(reason)), "flags {flags:#04x}");
    }
    // Will QoS / retain without the will flag: accepted on 3.1, as Mosquitto does.
    for flags in [0x08, 0x10, 0x20, 0x28] {
        let p = connect(b"MQIsdp", 3, flags | 0x02, 60, &[&c]);
        let got = parse(&p).unwrap_or_else(|e| panic!("flags {flags:#04x}: {e:?}"));
        assert!(got.will.is_none());
    }
    let p = connect(b"MQIsdp", 3, 0x40, 60, &[&c, &s(b"p")]);
    assert_eq!(parse(&p), Err(M("password without username")));
    let p = v5(0x01, &[&[0x00], &c]);
    assert_eq!(parse(&p), Err(M("reserved connect flag set")));
    let p = v5(0x1C, &[&[0x00], &c, &[0x00], &s(b"t"), &s(b"m")]);
    assert_eq!(parse(&p), Err(M("will QoS 3")));
}

#[test]
fn bad_utf8() {
    let bad: &[&[u8]] = &[
        &[0xC3, 0x28],
        &[0xFF],
        b"a\0b",
        &[0xED, 0xA0, 0x80],
        &[0xE2, 0x82],
    ];
    for b in bad {
        let p = v311(0x02, &[&s(b)]);
        assert_eq!(parse(&p), Err(M("bad UTF-8 in client id")), "{b:02x?}");
        let p = v311(0x82, &[&s(b"c"), &s(b)]);
        assert_eq!(parse(&p), Err(M("bad UTF-8 in username")), "{b:02x?}");
        let p = v311(0x06, &[&s(b"c"), &s(b), &s(b"m")]);
        assert_eq!(parse(&p), Err(M("bad UTF-8 in will topic")), "{b:02x?}");
        // will payload and password are binary
        let p = v311(0xC6, &[&s(b"c"), &s(b"t"), &s(b), &s(b"u"), &s(b)]);
        assert!(parse(&p).is_ok());
    }
    let p = connect(b"MQIsdp", 3, 0x02, 60, &[&s(&[0xFF])]);
    assert_eq!(parse(&p), Err(M("bad UTF-8 in client id")));
    let p = v5(0x02, &[&[0x00], &s(&[0xFF])]);
    assert_eq!(parse(&p), Err(M("bad UTF-8 in client id")));
}

#[test]
fn bad_v5_properties() {
    let c = s(b"c");
    let cases: &[(&[u8], &str)] = &[
        (&[0x02, 0x00, 0x00], "unknown property"),
        (&[0x02, 0x40, 0x00], "unknown property"),
        (&[0x02, 0x01, 0x00], "property not allowed in CONNECT"),
        (&[0x05, 0x02, 0, 0, 0, 1], "property not allowed in CONNECT"),
        (
            &[0x0A, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 1],
            "duplicate property",
        ),
        (&[0x03, 0x21, 0x00, 0x00], "property value out of range"),
        (&[0x04, 0x15, 0x00, 0x01, 0xFF], "bad UTF-8 in property"),
        (
            &[0x04, 0x16, 0x00, 0x01, 0xFF],
            "authentication data without authentication method",
        ),
        (&[0x04, 0x11, 0, 0, 0], PAST_END), // value cut by the block length
        (&[0x80, 0x80, 0x80, 0x80], "variable byte integer too long"),
    ];
    for &(props, reason) in cases {
        let p = v5(0x02, &[props, &c]);
        assert_eq!(parse(&p), Err(M(reason)), "{props:02x?}");
    }
    // will properties are walked the same way, with their own allowed set
    let will_cases: &[(&[u8], &str)] = &[
        (&[0x05, 0x11, 0, 0, 0, 1], "property not allowed in will"),
        (&[0x02, 0x7E, 0x00], "unknown property"),
        (&[0x04, 0x03, 0x00, 0x01, 0xFF], "bad UTF-8 in property"),
        (&[0x09, 0x01], PAST_END),
    ];
    for &(props, reason) in will_cases {
        let p = v5(0x06, &[&[0x00], &c, props, &s(b"t"), &s(b"m")]);
        assert_eq!(parse(&p), Err(M(reason)), "{props:02x?}");
    }
}

#[test]
fn encoder_round_trips() {
    let p = encode_connect_v311("mqgate-health", Some("health"), Some(b"\x00pw\xFF"), 5);
    let c = parse(&p).unwrap();
    assert_eq!(
        c,
        Connect {
            version: ProtocolVersion::V3_1_1,
            client_id: "mqgate-health",
            username: Some("health"),
            password: Some(b"\x00pw\xFF"),
            clean_session: true,
            keep_alive: 5,
            will: None,
            session_expiry: None,
        }
    );
    let p = encode_connect_v311("", None, None, 0);
    assert_eq!(
        p,
        [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 0]
    );
    let long = "n".repeat(300);
    let p = encode_connect_v311(&long, Some(""), None, 60);
    let c = parse(&p).unwrap();
    assert_eq!((c.client_id.len(), c.username), (300, Some("")));
    let huge = "h".repeat(70_000);
    let p = encode_connect_v311("c", Some(&huge), None, 60);
    assert_eq!(parse(&p).unwrap().username.map(str::len), Some(65_535));
}

#[test]
fn error_display() {
    assert_eq!(ConnectError::NotConnect.to_string(), "not an MQTT CONNECT");
    assert_eq!(M("will QoS 3").to_string(), "malformed CONNECT: will QoS 3");
    assert_eq!(
        ConnectError::UnsupportedProtocol(6).to_string(),
        "unsupported MQTT protocol level 6"
    );
    assert_eq!(
        ConnectError::TooLarge(70_000).to_string(),
        "CONNECT of 70000 bytes exceeds the size limit"
    );
    assert_eq!(ProtocolVersion::V3_1_1.to_string(), "3.1.1");
    let e: Box<dyn std::error::Error> = Box::new(M("x"));
    assert_eq!(e.to_string(), "malformed CONNECT: x");
}
