//! Messages through the gateway: MQTT 3.1, 3.1.1 and 5.0 clients publish and
//! subscribe, QoS 0/1/2 binary payloads arrive intact, and a persistent session gets
//! the messages queued while it was offline.

use super::*;

#[test]
fn mqtt_31_311_and_5_clients_publish_and_subscribe() {
    let s = setup(1, "", None);
    for (version, label) in [("mqttv31", "3.1"), ("mqttv311", "3.1.1"), ("mqttv5", "5.0")] {
        let msg = format!("hello over {label}");
        let got = cli_round_trip(s.port, &[], version, &format!("cli/{version}"), &msg);
        assert_eq!(got.trim_end(), msg, "{version}");
        assert!(
            s.gate
                .metric("mqgate_connect_packets_total", &[("protocol", label)])
                >= 2.0,
            "{label} CONNECTs counted"
        );
    }
    // Every CONNECT went through and the broker's CONNACKs were observed as accepted.
    let m = s.gate.metrics();
    assert!(metric_value(&m, "mqgate_connections_total", &[("node", "b1")]) >= 6.0);
    assert!(metric_value(&m, "mqgate_connack_total", &[("node", "b1")]) >= 6.0);
    assert!(metric_value(&m, "mqgate_bytes_total", &[("direction", "to_broker")]) > 0.0);
    assert!(metric_value(&m, "mqgate_bytes_total", &[("direction", "to_client")]) > 0.0);
}

/// Payloads that make a byte-mangling proxy visible: all 256 byte values, and 100 KB.
fn payloads() -> Vec<(rumqttc::QoS, Vec<u8>)> {
    let all: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
    let mut big = Vec::with_capacity(100 * 1024);
    let mut x: u32 = 0x1234_5678;
    while big.len() < 100 * 1024 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        big.extend_from_slice(&x.to_le_bytes());
    }
    vec![
        (rumqttc::QoS::AtMostOnce, all.clone()),
        (
            rumqttc::QoS::AtLeastOnce,
            all.iter().rev().cloned().collect(),
        ),
        (rumqttc::QoS::ExactlyOnce, all),
        (rumqttc::QoS::ExactlyOnce, big),
    ]
}

/// Subscribe `<prefix>/#`, publish each of `sent` (QoS, payload) to `<prefix>/<i>`,
/// and check that each arrives once, with its QoS and its payload intact: the same
/// round trip for rumqttc's MQTT 3.1.1 and 5 clients, whose `Client`, `Event` and
/// `Packet` the caller brings into scope; `opts` makes the options for a client id.
macro_rules! binary_round_trip {
    ($opts:expr, $prefix:literal, $sub_qos:expr, $sent:expr) => {{
        let (sub, mut sub_conn) = Client::new($opts(concat!($prefix, "-sub")), 16);
        sub.subscribe(concat!($prefix, "/#"), $sub_qos)
            .expect("subscribe");
        loop {
            match sub_conn.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                other => panic!("no SUBACK: {other:?}"),
            }
        }
        let (publ, mut pub_conn) = Client::new($opts(concat!($prefix, "-pub")), 16);
        let sent = $sent;
        for (i, (qos, p)) in sent.iter().enumerate() {
            publ.publish(format!("{}/{i}", $prefix), *qos, false, p.clone())
                .expect("publish");
        }
        let pub_thread = std::thread::spawn(move || {
            // Drive the publisher until its QoS 2 flows complete (PUBCOMP for the last one).
            let mut comps = 0;
            while comps < 2 {
                match pub_conn.recv_timeout(Duration::from_secs(20)) {
                    Ok(Ok(Event::Incoming(Packet::PubComp(_)))) => comps += 1,
                    Ok(Ok(_)) => {}
                    other => panic!("publisher: {other:?}"),
                }
            }
        });
        let mut got = Vec::new();
        while got.len() < sent.len() {
            match sub_conn.recv_timeout(Duration::from_secs(20)) {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => got.push(p),
                Ok(Ok(_)) => {}
                other => panic!("subscriber after {} messages: {other:?}", got.len()),
            }
        }
        pub_thread.join().expect("publisher thread");
        got.sort_by(|a, b| a.topic.cmp(&b.topic));
        for (i, ((qos, p), m)) in sent.iter().zip(&got).enumerate() {
            let topic: &[u8] = m.topic.as_ref();
            assert_eq!(topic, format!("{}/{i}", $prefix).as_bytes());
            assert_eq!(m.qos, *qos, "{}/{i} QoS", $prefix);
            assert!(
                m.payload.as_ref() == p.as_slice(),
                "{}/{i}: payload of {} bytes intact",
                $prefix,
                p.len()
            );
        }
    }};
}

#[test]
fn qos_0_1_2_binary_payloads_arrive_intact_v311() {
    use rumqttc::{Client, Event, MqttOptions, Packet};
    let s = setup(1, "", None);
    let opts = |id: &str| {
        let mut o = MqttOptions::new(id, "127.0.0.1", s.port);
        o.set_max_packet_size(256 * 1024, 256 * 1024);
        o.set_keep_alive(Duration::from_secs(30));
        o
    };
    binary_round_trip!(opts, "bin", rumqttc::QoS::ExactlyOnce, payloads());
}

#[test]
fn qos_0_1_2_binary_payloads_arrive_intact_v5() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{Client, Event, MqttOptions};
    let s = setup(1, "", None);
    let opts = |id: &str| {
        let mut o = MqttOptions::new(id, "127.0.0.1", s.port);
        o.set_max_packet_size(Some(256 * 1024));
        o.set_keep_alive(Duration::from_secs(30));
        o
    };
    let sent: Vec<(QoS, Vec<u8>)> = payloads()
        .into_iter()
        .map(|(q, p)| {
            let q = match q {
                rumqttc::QoS::AtMostOnce => QoS::AtMostOnce,
                rumqttc::QoS::AtLeastOnce => QoS::AtLeastOnce,
                rumqttc::QoS::ExactlyOnce => QoS::ExactlyOnce,
            };
            (q, p)
        })
        .collect();
    binary_round_trip!(opts, "bin5", QoS::ExactlyOnce, sent);
    assert!(
        s.gate
            .metric("mqgate_connect_packets_total", &[("protocol", "5.0")])
            >= 2.0
    );
}

#[test]
fn persistent_session_gets_messages_queued_while_offline() {
    let s = setup(1, "", None);
    let p = s.port.to_string();
    for (version, session) in [
        ("mqttv311", vec!["-c"]),
        ("mqttv5", vec!["-c", "-x", "300"]),
    ] {
        let id = format!("persist-{version}");
        let topic = format!("sess/{version}");
        let base = [
            "-h",
            "127.0.0.1",
            "-p",
            p.as_str(),
            "-V",
            version,
            "-q",
            "1",
        ];
        // Connect with a session, subscribe, leave (-E: exit once subscribed).
        let st = Command::new("mosquitto_sub")
            .args(base)
            .args(&session)
            .args(["-i", &id, "-t", &topic, "-E"])
            .status()
            .expect("mosquitto_sub");
        assert!(st.success());
        // While it is offline, a message is published.
        let msg = format!("queued for {version}");
        mosquitto_pub(&[
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-q",
            "1",
            "-t",
            &topic,
            "-m",
            &msg,
        ]);
        // Back through the gateway: the broker still has the session and delivers.
        let out = Command::new("mosquitto_sub")
            .args(base)
            .args(&session)
            .args(["-i", &id, "-t", &topic, "-C", "1", "-W", "10"])
            .output()
            .expect("mosquitto_sub");
        assert!(
            out.status.success(),
            "{version}: no queued message: {out:?}"
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), msg);
    }
}
