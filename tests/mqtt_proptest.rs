//! Property tests for `mqgate::mqtt` against an independent encoder.
//!
//! Random CONNECTs and CONNACKs are encoded with `mqttbytes` (the MQTT codec of the
//! rumqtt project) and read back with mqgate's own parser: every field must come
//! back as it was encoded. Random and mutated bytes must never panic, and every
//! truncation of a valid packet must be "need more bytes" for `frame_len` and
//! "length past end" for `parse_connect`.

use bytes::{Bytes, BytesMut};
use mqgate::mqtt::{
    frame_len, observe_connack, parse_connect, ConnackInfo, Connect, ConnectError, Parse,
    ProtocolVersion, Will,
};
use mqttbytes::QoS;
use proptest::prelude::*;

/// MQTT strings: any characters but U+0000 (which MQTT forbids).
fn mqtt_string(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[^\\x00]{{0,{max}}}")).expect("valid regex")
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn binary(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=max)
}

fn user_properties() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((mqtt_string(8), mqtt_string(8)), 0..3)
}

/// The fields common to both versions, as the test generated them.
#[derive(Debug, Clone)]
struct Fields {
    client_id: String,
    login: Option<(String, String)>,
    will: Option<(String, Vec<u8>, QoS, bool)>,
    keep_alive: u16,
    clean_session: bool,
}

fn fields() -> impl Strategy<Value = Fields> {
    (
        mqtt_string(30),
        proptest::option::of((mqtt_string(12), mqtt_string(12))),
        proptest::option::of((mqtt_string(20), binary(40), qos(), any::<bool>())),
        any::<u16>(),
        any::<bool>(),
    )
        .prop_map(
            |(client_id, login, will, keep_alive, clean_session)| Fields {
                client_id,
                login,
                will,
                keep_alive,
                clean_session,
            },
        )
}

/// What mqgate must read back. mqttbytes writes the username and the password
/// only when they are non-empty.
fn check_common(c: &Connect<'_>, f: &Fields) {
    assert_eq!(c.client_id, f.client_id);
    assert_eq!(c.keep_alive, f.keep_alive);
    assert_eq!(c.clean_session, f.clean_session);
    let (user, pass) = match &f.login {
        Some((u, p)) => (
            Some(u.as_str()).filter(|u| !u.is_empty()),
            Some(p.as_bytes()).filter(|p| !p.is_empty()),
        ),
        None => (None, None),
    };
    assert_eq!(c.username, user);
    assert_eq!(c.password, pass);
    let will = f.will.as_ref().map(|(topic, payload, qos, retain)| Will {
        topic,
        payload,
        qos: *qos as u8,
        retain: *retain,
    });
    assert_eq!(c.will, will);
}

/// password flag set without the username flag
fn password_only(f: &Fields) -> bool {
    matches!(&f.login, Some((u, p)) if u.is_empty() && !p.is_empty())
}

fn encode_v4(f: &Fields) -> Vec<u8> {
    use mqttbytes::v4;
    let packet = v4::Connect {
        protocol: mqttbytes::Protocol::V4,
        keep_alive: f.keep_alive,
        client_id: f.client_id.clone(),
        clean_session: f.clean_session,
        last_will: f.will.as_ref().map(|(topic, payload, qos, retain)| {
            v4::LastWill::new(topic.clone(), payload.clone(), *qos, *retain)
        }),
        login: f
            .login
            .as_ref()
            .map(|(u, p)| v4::Login::new(u.clone(), p.clone())),
    };
    let mut buf = BytesMut::new();
    packet.write(&mut buf).expect("mqttbytes encodes");
    buf.to_vec()
}

#[derive(Debug, Clone)]
struct V5Extra {
    session_expiry: Option<u32>,
    receive_maximum: Option<u16>,
    max_packet_size: Option<u32>,
    topic_alias_max: Option<u16>,
    request_response_info: Option<u8>,
    request_problem_info: Option<u8>,
    user_properties: Vec<(String, String)>,
    authentication: Option<(String, Option<Vec<u8>>)>,
    will_properties: Option<WillProps>,
}

#[derive(Debug, Clone)]
struct WillProps {
    delay_interval: Option<u32>,
    payload_format_indicator: Option<u8>,
    message_expiry_interval: Option<u32>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<Vec<u8>>,
    user_properties: Vec<(String, String)>,
}

fn will_props() -> impl Strategy<Value = WillProps> {
    (
        proptest::option::of(any::<u32>()),
        proptest::option::of(0u8..=1),
        proptest::option::of(any::<u32>()),
        proptest::option::of(mqtt_string(10)),
        proptest::option::of(mqtt_string(10)),
        proptest::option::of(binary(10)),
        user_properties(),
    )
        .prop_map(|(d, p, m, c, r, cd, u)| WillProps {
            delay_interval: d,
            payload_format_indicator: p,
            message_expiry_interval: m,
            content_type: c,
            response_topic: r,
            correlation_data: cd,
            user_properties: u,
        })
}

fn v5_extra() -> impl Strategy<Value = V5Extra> {
    (
        proptest::option::of(any::<u32>()),
        proptest::option::of(1u16..),
        proptest::option::of(1u32..),
        proptest::option::of(any::<u16>()),
        proptest::option::of(0u8..=1),
        proptest::option::of(0u8..=1),
        user_properties(),
        proptest::option::of((mqtt_string(10), proptest::option::of(binary(10)))),
        proptest::option::of(will_props()),
    )
        .prop_map(|(se, rm, mps, tam, rri, rpi, up, auth, wp)| V5Extra {
            session_expiry: se,
            receive_maximum: rm,
            max_packet_size: mps,
            topic_alias_max: tam,
            request_response_info: rri,
            request_problem_info: rpi,
            user_properties: up,
            authentication: auth,
            will_properties: wp,
        })
}

fn encode_v5(f: &Fields, x: &V5Extra) -> Vec<u8> {
    use mqttbytes::v5;
    let properties = v5::ConnectProperties {
        session_expiry_interval: x.session_expiry,
        receive_maximum: x.receive_maximum,
        max_packet_size: x.max_packet_size,
        topic_alias_max: x.topic_alias_max,
        request_response_info: x.request_response_info,
        request_problem_info: x.request_problem_info,
        user_properties: x.user_properties.clone(),
        authentication_method: x.authentication.as_ref().map(|(m, _)| m.clone()),
        authentication_data: x
            .authentication
            .as_ref()
            .and_then(|(_, d)| d.clone().map(Bytes::from)),
    };
    let will_properties = x.will_properties.as_ref().map(|w| v5::WillProperties {
        delay_interval: w.delay_interval,
        payload_format_indicator: w.payload_format_indicator,
        message_expiry_interval: w.message_expiry_interval,
        content_type: w.content_type.clone(),
        response_topic: w.response_topic.clone(),
        correlation_data: w.correlation_data.clone().map(Bytes::from),
        user_properties: w.user_properties.clone(),
    });
    let packet = v5::Connect {
        protocol: mqttbytes::Protocol::V5,
        keep_alive: f.keep_alive,
        client_id: f.client_id.clone(),
        clean_session: f.clean_session,
        last_will: f
            .will
            .as_ref()
            .map(|(topic, payload, qos, retain)| v5::LastWill {
                topic: topic.clone(),
                message: Bytes::from(payload.clone()),
                qos: *qos,
                retain: *retain,
                properties: will_properties,
            }),
        login: f
            .login
            .as_ref()
            .map(|(u, p)| v5::Login::new(u.clone(), p.clone())),
        properties: Some(properties),
    };
    let mut buf = BytesMut::new();
    packet.write(&mut buf).expect("mqttbytes encodes");
    buf.to_vec()
}

/// Frame and parse a complete packet the way the connection task does.
fn frame_and_parse(packet: &[u8]) -> Result<Connect<'_>, ConnectError> {
    assert_eq!(
        frame_len(packet, 1 << 20),
        Ok(Parse::Complete(packet.len()))
    );
    parse_connect(packet)
}

/// Every strict prefix of a valid packet: never an error from `frame_len`,
/// always "length past end" from `parse_connect`.
fn check_truncations(packet: &[u8]) {
    for n in 0..packet.len() {
        let cut = &packet[..n];
        match frame_len(cut, 1 << 20) {
            Ok(Parse::Incomplete) => {}
            Ok(Parse::Complete(len)) => assert_eq!(len, packet.len()),
            Err(e) => panic!("frame_len({n} bytes) = {e:?}"),
        }
        assert_eq!(
            parse_connect(cut),
            Err(ConnectError::Malformed("length past end")),
            "{n} bytes"
        );
    }
}

/// Whatever `bytes` are, the parsers answer without panicking and consistently.
fn check_no_panic(bytes: &[u8], max: usize) {
    let framed = frame_len(bytes, max);
    let parsed = parse_connect(bytes);
    match &framed {
        Err(ConnectError::NotConnect) => assert_eq!(parsed, Err(ConnectError::NotConnect)),
        Err(ConnectError::TooLarge(len)) => assert!(*len > max),
        Err(ConnectError::UnsupportedProtocol(_)) => panic!("frame_len never looks that far"),
        Err(ConnectError::Malformed(_)) => {
            assert!(matches!(parsed, Err(ConnectError::Malformed(_))))
        }
        Ok(Parse::Complete(len)) => {
            assert!(*len <= max);
            if *len > bytes.len() {
                assert_eq!(parsed, Err(ConnectError::Malformed("length past end")));
            } else {
                // only the framed bytes matter
                assert_eq!(parse_connect(&bytes[..*len]), parsed);
            }
        }
        Ok(Parse::Incomplete) => assert!(bytes.len() < 5),
    }
    if let Ok(c) = parsed {
        // a successful parse is a consistent view
        let _ = (c.keeps_session(), c.version.as_str(), format!("{c:?}"));
        if let Some(w) = &c.will {
            assert!(w.qos <= 2);
        }
        assert!(c.session_expiry.is_none() || c.version.is_v5());
    }
    let _ = observe_connack(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn v4_connect_round_trips(f in fields()) {
        let packet = encode_v4(&f);
        let parsed = frame_and_parse(&packet);
        if password_only(&f) {
            prop_assert_eq!(parsed, Err(ConnectError::Malformed("password without username")));
        } else {
            let c = parsed.expect("valid v4 CONNECT");
            prop_assert_eq!(c.version, ProtocolVersion::V3_1_1);
            prop_assert_eq!(c.session_expiry, None);
            prop_assert_eq!(c.keeps_session(), !f.clean_session);
            check_common(&c, &f);
        }
        check_truncations(&packet);
    }

    #[test]
    fn v5_connect_round_trips(f in fields(), x in v5_extra()) {
        let packet = encode_v5(&f, &x);
        let c = frame_and_parse(&packet).expect("valid v5 CONNECT");
        prop_assert_eq!(c.version, ProtocolVersion::V5);
        prop_assert_eq!(c.session_expiry, x.session_expiry);
        prop_assert_eq!(c.keeps_session(), x.session_expiry.unwrap_or(0) > 0);
        check_common(&c, &f);
        check_truncations(&packet);
    }

    #[test]
    fn random_bytes_never_panic(bytes in binary(300), max in 0usize..1000) {
        check_no_panic(&bytes, max);
        check_no_panic(&bytes, usize::MAX);
    }

    #[test]
    fn random_body_behind_a_connect_header_never_panics(
        level in prop_oneof![Just(3u8), Just(4), Just(5), any::<u8>()],
        rest in binary(200),
    ) {
        // a plausible start, so the random bytes reach the flags, properties and payload
        let name: &[u8] = if level == 3 { b"\x00\x06MQIsdp" } else { b"\x00\x04MQTT" };
        let mut body = name.to_vec();
        body.push(level);
        body.extend_from_slice(&rest);
        let mut packet = vec![0x10];
        let mut len = body.len();
        loop {
            let byte = (len % 128) as u8;
            len /= 128;
            packet.push(if len > 0 { byte | 0x80 } else { byte });
            if len == 0 { break; }
        }
        packet.extend_from_slice(&body);
        check_no_panic(&packet, usize::MAX);
    }

    #[test]
    fn mutated_valid_packets_never_panic(
        f in fields(),
        x in v5_extra(),
        v5 in any::<bool>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut packet = if v5 { encode_v5(&f, &x) } else { encode_v4(&f) };
        for (at, byte) in edits {
            let i = at.index(packet.len());
            packet[i] = byte;
        }
        check_no_panic(&packet, usize::MAX);
    }

    #[test]
    fn size_limit_is_decided_from_the_header(f in fields(), max in 0usize..200) {
        let packet = encode_v4(&f);
        let want = if packet.len() > max {
            Err(ConnectError::TooLarge(packet.len()))
        } else {
            Ok(Parse::Complete(packet.len()))
        };
        // the header alone (at most 5 bytes) is enough
        let header = &packet[..packet.len().min(5)];
        prop_assert_eq!(frame_len(header, max), want.clone());
        prop_assert_eq!(frame_len(&packet, max), want);
    }

    #[test]
    fn v4_connack_observed(code in 0u8..=5, session_present in any::<bool>()) {
        use mqttbytes::v4::{ConnAck, ConnectReturnCode as C};
        let rc = [C::Success, C::RefusedProtocolVersion, C::BadClientId,
            C::ServiceUnavailable, C::BadUserNamePassword, C::NotAuthorized][usize::from(code)];
        let mut buf = BytesMut::new();
        ConnAck::new(rc, session_present).write(&mut buf).expect("mqttbytes encodes");
        check_connack(&buf, 4, ConnackInfo { code, session_present, len: buf.len() });
    }

    #[test]
    fn v5_connack_observed(
        session_present in any::<bool>(),
        reason in prop::sample::select(vec![0u8, 0x80, 0x84, 0x86, 0x87, 0x88, 0x89, 0x8A]),
        assigned in proptest::option::of(mqtt_string(20)),
        reason_string in proptest::option::of(mqtt_string(200)),
        receive_max in proptest::option::of(any::<u16>()),
    ) {
        use mqttbytes::v5::{ConnAck, ConnAckProperties, ConnectReturnCode as C};
        let rc = match reason {
            0 => C::Success,
            0x80 => C::UnspecifiedError,
            0x84 => C::UnsupportedProtocolVersion,
            0x86 => C::BadUserNamePassword,
            0x87 => C::NotAuthorized,
            0x88 => C::ServerUnavailable,
            0x89 => C::ServerBusy,
            _ => C::Banned,
        };
        let mut props = ConnAckProperties::new();
        props.assigned_client_identifier = assigned;
        props.reason_string = reason_string;
        props.receive_max = receive_max;
        let mut ack = ConnAck::new(rc, session_present);
        ack.properties = Some(props);
        let mut buf = BytesMut::new();
        ack.write(&mut buf).expect("mqttbytes encodes");
        let header_len = if buf[1] & 0x80 == 0 { 2 } else { 3 };
        check_connack(&buf, header_len + 2, ConnackInfo { code: reason, session_present, len: buf.len() });
    }
}

/// Incomplete before `ready` bytes, then `want` for every longer prefix.
fn check_connack(packet: &[u8], ready: usize, want: ConnackInfo) {
    for n in 0..=packet.len() {
        let got = observe_connack(&packet[..n]);
        if n < ready {
            assert_eq!(got, Ok(Parse::Incomplete), "{n} bytes");
        } else {
            assert_eq!(got, Ok(Parse::Complete(want)), "{n} bytes");
        }
    }
}

use crate::fuzz_corpus::checks as fuzz_checks;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// SUBSCRIBEs written by mqttbytes read back filter by filter (packet-aware relay).
    #[test]
    fn v4_subscribe_round_trips(
        pkid in 1u16..,
        filters in proptest::collection::vec(("[a-z/+#]{1,12}", qos()), 1..5),
    ) {
        use mqgate::mqtt::subscribe::parse_subscribe;
        let s = mqttbytes::v4::Subscribe {
            pkid,
            filters: filters
                .iter()
                .map(|(p, q)| mqttbytes::v4::SubscribeFilter::new(p.clone(), *q))
                .collect(),
        };
        let mut buf = BytesMut::new();
        s.write(&mut buf).expect("encode");
        let parsed = parse_subscribe(&buf, false).expect("parses");
        prop_assert_eq!(parsed.id, pkid);
        let got: Vec<(String, u8)> = parsed
            .filters()
            .map(|f| (f.topic.to_string(), f.options))
            .collect();
        let want: Vec<(String, u8)> = filters.iter().map(|(p, q)| (p.clone(), *q as u8)).collect();
        prop_assert_eq!(got, want);
        // And through the fuzz target's checks, as part of a stream.
        let mut stream = vec![0x10];
        stream.extend_from_slice(&buf);
        stream.extend_from_slice(&[0xC0, 0x00]);
        fuzz_checks::subscribe(&stream);
    }

    /// Random streams never panic the scanner or the views, and nothing is lost.
    #[test]
    fn random_streams_through_the_packet_scanner(data in binary(600)) {
        fuzz_checks::subscribe(&data);
    }
}
