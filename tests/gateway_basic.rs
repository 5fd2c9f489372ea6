//! The core gateway with real clients and real Mosquitto brokers: MQTT 3.1, 3.1.1 and
//! 5.0 clients publish and subscribe through mqgate, QoS 0/1/2 payloads arrive intact,
//! persistent sessions survive a reconnect, odd-but-legal byte streams (1-byte writes,
//! packets right behind the CONNECT, half-close) work, a client's reset reaches the
//! broker as a reset, a dead broker makes the next node take the client,
//! `limits.threads` spreads sessions over that many connection threads, and
//! `mqgate check` reports what an operator needs.

use crate::common::mqtt::connack_v5_with_reason;
use crate::common::*;
use std::io::Write;
use std::net::Shutdown;
use std::process::Command;
use std::time::Duration;

/// One gateway (dynsec, listener "mqtt") in front of `nodes`.
struct Setup {
    // Drop order: the gateway (it prints its log on failure), the brokers, the files.
    gate: Gate,
    brokers: Vec<Mosquitto>,
    dir: tempfile::TempDir,
    port: u16,
}

fn setup(n: usize, cluster_extra: &str, health: Option<&str>) -> Setup {
    let dir = tempdir();
    let brokers: Vec<Mosquitto> = (1..=n)
        .map(|i| Mosquitto::start(&format!("b{i}"), dir.path()))
        .collect();
    let (port, admin) = (free_port(), free_port());
    let refs: Vec<&Mosquitto> = brokers.iter().collect();
    let mut toml = basic_config(port, admin, "dynsec", &refs, cluster_extra);
    if let Some(h) = health {
        // Replace the helper's health section with the caller's.
        let i = toml
            .find("[clusters.brokers.health]")
            .expect("health section");
        toml.truncate(i);
        toml.push_str(h);
    }
    let gate = Gate::start(dir.path(), "gate", &toml, admin);
    for b in &brokers {
        gate.wait_node_up(&b.name);
    }
    Setup {
        dir,
        brokers,
        gate,
        port,
    }
}

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
    let (sub, mut sub_conn) = Client::new(opts("bin-sub"), 16);
    sub.subscribe("bin/#", rumqttc::QoS::ExactlyOnce)
        .expect("subscribe");
    loop {
        match sub_conn.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            other => panic!("no SUBACK: {other:?}"),
        }
    }
    let (publ, mut pub_conn) = Client::new(opts("bin-pub"), 16);
    let sent = payloads();
    for (i, (qos, p)) in sent.iter().enumerate() {
        publ.publish(format!("bin/{i}"), *qos, false, p.clone())
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
        assert_eq!(m.topic, format!("bin/{i}"));
        assert_eq!(m.qos, *qos, "bin/{i} QoS");
        assert!(
            m.payload.as_ref() == p.as_slice(),
            "bin/{i}: payload of {} bytes intact",
            p.len()
        );
    }
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
    let (sub, mut sub_conn) = Client::new(opts("bin5-sub"), 16);
    sub.subscribe("bin5/#", QoS::ExactlyOnce)
        .expect("subscribe");
    loop {
        match sub_conn.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            other => panic!("no SUBACK: {other:?}"),
        }
    }
    let (publ, mut pub_conn) = Client::new(opts("bin5-pub"), 16);
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
    for (i, (qos, p)) in sent.iter().enumerate() {
        publ.publish(format!("bin5/{i}"), *qos, false, p.clone())
            .expect("publish");
    }
    let pub_thread = std::thread::spawn(move || {
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
        assert_eq!(m.topic.as_ref(), format!("bin5/{i}").as_bytes());
        assert_eq!(m.qos, *qos, "bin5/{i} QoS");
        assert!(
            m.payload.as_ref() == p.as_slice(),
            "bin5/{i}: payload of {} bytes intact",
            p.len()
        );
    }
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

#[test]
fn connect_split_into_single_byte_writes_is_accepted() {
    let s = setup(1, "", None);
    for pkt in [connect_v311("dribble3"), connect_v5("dribble5")] {
        let mut c = tcp(s.port);
        c.set_nodelay(true).expect("nodelay");
        for b in &pkt {
            c.write_all(std::slice::from_ref(b))
                .expect("write one byte");
            // Not synchronisation: a pause so that each byte leaves as its own segment.
            std::thread::sleep(Duration::from_millis(3));
        }
        let reply = read_exact_n(&mut c, 4);
        assert_eq!(reply[0], 0x20, "CONNACK");
        assert_eq!(reply[3], 0x00, "accepted"); // v3: return code; v5: reason code
    }
}

#[test]
fn bytes_sent_with_the_connect_reach_the_broker() {
    let s = setup(1, "", None);
    let mut c = tcp(s.port);
    let mut first = connect_v311("eager");
    first.extend(subscribe_v311(7, "eager/t", 1));
    first.extend([0xC0, 0x00]); // PINGREQ
    c.write_all(&first).expect("one write");
    let reply = read_exact_n(&mut c, 4 + 5 + 2);
    assert_eq!(
        reply,
        [0x20, 0x02, 0x00, 0x00, 0x90, 0x03, 0x00, 0x07, 0x01, 0xD0, 0x00],
        "CONNACK, SUBACK (packet id 7, QoS 1), PINGRESP"
    );
}

#[test]
fn half_closed_client_still_receives_what_the_broker_sends() {
    let s = setup(1, "", None);
    let b = &s.brokers[0];
    // A retained message the client will get right after its SUBACK.
    mosquitto_pub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &b.port.to_string(),
        "-r",
        "-q",
        "1",
        "-t",
        "hc/t",
        "-m",
        "still here",
    ]);
    let mut c = tcp(s.port);
    let mut bytes = connect_v311("halfclose");
    bytes.extend(subscribe_v311(1, "hc/t", 0));
    c.write_all(&bytes).expect("send");
    c.shutdown(Shutdown::Write).expect("half-close");
    let (got, ended) = read_to_close(&mut c, Duration::from_secs(10));
    assert!(
        got.starts_with(&[0x20, 0x02, 0x00, 0x00, 0x90, 0x03, 0x00, 0x01, 0x00]),
        "{got:02x?}"
    );
    assert!(
        got.windows(10).any(|w| w == b"still here"),
        "retained PUBLISH delivered after the client's FIN: {got:02x?}"
    );
    assert_eq!(ended, Ended::Eof, "then closed cleanly");
}

#[test]
fn dead_broker_makes_the_next_node_take_the_client() {
    // Health checks see both nodes up once, then never again (interval 1h, fall high):
    // the gateway does not know b1 died, so only the connect-time retry can save clients.
    let health =
        "[clusters.brokers.health]\ncheck = \"tcp\"\ninterval = \"1h\"\nfast_interval = \"1h\"\n\
                  down_interval = \"1h\"\nrise = 1\nfall = 100\n";
    let mut s = setup(
        2,
        "balance = \"round-robin\"\nretries = 1\nconnect_timeout = \"1s\"\n\
         queue_timeout = \"1s\"\nno_node_reply = \"connack\"\n",
        Some(health),
    );
    s.brokers[0].stop();
    for i in 0..4 {
        let mut c = raw_session(s.port, &format!("retry-{i}"));
        assert!(ping(&mut c));
    }
    let m = s.gate.metrics();
    assert_eq!(
        metric_value(&m, "mqgate_connections_total", &[("node", "b2")]),
        4.0
    );
    assert_eq!(
        metric_value(&m, "mqgate_connections_total", &[("node", "b1")]),
        0.0
    );
    assert!(
        s.gate.log_text().contains("trying the next"),
        "retry logged"
    );

    // Both dead: retries exhausted, and again while held for queue_timeout; then, with
    // no_node_reply = "connack", the client gets "server unavailable" (v5: with a
    // reason string that says why).
    s.brokers[1].stop();
    let reason = b"mqgate: 2 node(s) refused the connection after holding the client for 1s";
    let v5_reply = connack_v5_with_reason(0x88, reason);
    for (pkt, want) in [
        (connect_v311("none3"), vec![0x20, 0x02, 0x00, 0x03]),
        (connect_v5("none5"), v5_reply),
    ] {
        let mut c = tcp(s.port);
        c.write_all(&pkt).expect("send");
        let (got, ended) = read_to_close(&mut c, Duration::from_secs(10));
        assert_eq!(
            got,
            want,
            "{:?}",
            String::from_utf8_lossy(got.get(8..).unwrap_or_default())
        );
        assert_eq!(ended, Ended::Eof);
    }
    assert_eq!(
        s.gate.metric(
            "mqgate_connections_rejected_total",
            &[("reason", "no_node")]
        ),
        2.0
    );
    let _ = &s.dir;
}

#[test]
fn check_reports_every_error_with_file_line_and_key() {
    let dir = tempdir();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[limits]\nconnect_timeout = \"soon\"\n\n[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:1883\"\n\
         cluster = \"nope\"\n\n[clusters.brokers]\nmode = \"dynsec\"\n\
         nodes = [ { name = \"n1\", address = \"127.0.0.1:1884\" } ]\n",
    )
    .expect("write");
    let out = mqgate(&["check", "-c", bad.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:2:") && err.contains("limits.connect_timeout"),
        "{err}"
    );
    assert!(
        err.contains("bad.toml:7:") && err.contains("listeners[0].cluster"),
        "{err}"
    );
    assert!(err.contains("2 error(s)"), "{err}");

    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[limits]\nmax_conections = 5\n").expect("write");
    let out = mqgate(&["check", "-c", unknown.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown.toml:2:") && err.contains("max_conections"),
        "{err}"
    );

    let missing = mqgate(&[
        "check",
        "-c",
        dir.path().join("nope.toml").to_str().expect("path"),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.toml"));
}

#[test]
fn check_prints_a_summary_of_a_valid_file() {
    let dir = tempdir();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:1883\"\ncluster = \"brokers\"\n\n\
         [clusters.brokers]\nmode = \"full-sync\"\n\
         nodes = [ { name = \"n1\", address = \"127.0.0.1:1884\" }, { name = \"n2\", address = \"127.0.0.1:1885\" } ]\n",
    )
    .expect("write");
    let out = mqgate(&["check", "-c", good.to_str().expect("path")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "OK",
        "mqtt",
        "127.0.0.1:1883",
        "brokers",
        "full-sync",
        "n1",
        "n2",
        "127.0.0.1:1885",
    ] {
        assert!(text.contains(want), "summary lacks {want:?}:\n{text}");
    }
    let v = mqgate(&["version"]);
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn client_ignoring_the_brokers_close_is_closed_after_the_linger() {
    let s = setup(1, "", None);
    let active = || {
        s.gate
            .metric("mqgate_connections_active", &[("node", "b1")])
    };
    let mut first = raw_session(s.port, "taken-over");
    // Same client id again: Mosquitto closes the first connection (session takeover).
    let mut second = raw_session(s.port, "taken-over");
    let (_, ended) = read_to_close(&mut first, Duration::from_secs(10));
    assert_eq!(ended, Ended::Eof, "the broker's close is passed on");
    assert_eq!(
        active(),
        2.0,
        "the first client has not closed its side yet"
    );
    // It never does; the gateway closes the connection after the linger (5 s).
    wait_until(
        Duration::from_secs(15),
        "half-closed connection ended",
        || active() == 1.0,
    );
    assert!(ping(&mut second), "the new session is unaffected");
}

#[test]
fn client_reset_is_passed_on_to_the_broker_and_leaves_no_time_wait() {
    // One health check when the gateway starts, then none for the rest of the test:
    // the only connection from the gateway to the broker is the client's.
    let health = "[clusters.brokers.health]\ninterval = \"1h\"\nrise = 1\nfall = 1\n";
    let s = setup(1, "", Some(health));
    let b = &s.brokers[0];
    // A subscriber on the broker itself, to see the will of the client below.
    let mut sub = raw_session(b.port, "will-watcher");
    sub.write_all(&subscribe_v311(1, "reset/will", 0))
        .expect("SUBSCRIBE");
    assert_eq!(read_exact_n(&mut sub, 5)[0], 0x90, "SUBACK");

    // CONNECT 3.1.1 with a will (flags: clean session, will, QoS 0), keep-alive 60.
    let connect = Connect::new("resetter").will("reset/will", b"gone");
    let mut c = tcp(s.port);
    c.write_all(&connect.bytes()).expect("CONNECT");
    assert_eq!(
        read_exact_n(&mut c, 4),
        [0x20, 0x02, 0x00, 0x00],
        "accepted"
    );
    // Connections towards the broker: the gateway's for this client, and the
    // subscriber's own (left out).
    let upstream = local_ports_towards(b.port, "01");
    let sub_port = sub.local_addr().expect("subscriber address").port();
    let upstream: Vec<u16> = upstream.into_iter().filter(|p| *p != sub_port).collect();
    assert_eq!(upstream.len(), 1, "one relayed connection: {upstream:?}");

    // The client aborts (SO_LINGER 0: a reset, no FIN).
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .expect("linger 0");
    drop(c);
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"gone") {
        let mut buf = [0u8; 64];
        let n = std::io::Read::read(&mut sub, &mut buf).expect("the will arrives");
        assert!(n > 0, "subscriber closed");
        got.extend_from_slice(&buf[..n]);
    }
    wait_until(Duration::from_secs(10), "relayed connection gone", || {
        !local_ports_towards(b.port, "01").contains(&upstream[0])
    });
    assert!(
        !local_ports_towards(b.port, "06").contains(&upstream[0]),
        "the gateway reset its broker connection too (no TIME_WAIT left on its port)"
    );
    assert!(ping(&mut sub), "the broker serves on");
}

/// The TCP sockets of process `pid`, by inode: (local port, remote port).
fn tcp_sockets(pid: u32) -> std::collections::HashMap<u64, (u16, u16)> {
    let mut out = std::collections::HashMap::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |addr: &str| {
                addr.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if let (Some(l), Some(r), Some(Ok(ino))) = (
                f.get(1).and_then(|a| port(a)),
                f.get(2).and_then(|a| port(a)),
                f.get(9).map(|i| i.parse::<u64>()),
            ) {
                out.insert(ino, (l, r));
            }
        }
    }
    out
}

/// For each epoll instance of process `pid`: the inodes of the sockets in its set.
fn epoll_sets(pid: u32) -> Vec<Vec<u64>> {
    let socket_inode = |fd: &str| -> Option<u64> {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
        let l = link.to_string_lossy().into_owned();
        l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
    };
    let mut sets = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("list fds") {
        let Ok(e) = e else { continue };
        let fd = e.file_name().to_string_lossy().into_owned();
        let is_epoll = std::fs::read_link(e.path())
            .map(|l| l.to_string_lossy().contains("eventpoll"))
            .unwrap_or(false);
        if !is_epoll {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let members: Vec<u64> = info
            .lines()
            .filter_map(|l| l.strip_prefix("tfd:"))
            .filter_map(|rest| rest.split_whitespace().next())
            .filter_map(socket_inode)
            .collect();
        sets.push(members);
    }
    // tokio keeps two descriptors of each epoll instance (the driver's and a
    // duplicate for registrations): the same set twice.
    for s in &mut sets {
        s.sort_unstable();
    }
    sets.sort();
    sets.dedup();
    sets
}

/// The names of process `pid`'s connection threads, as `top -H` shows them.
fn connection_threads(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("list threads")
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| c.starts_with("mqgate-conn-"))
        .collect()
}

/// `limits.threads` unset: one connection thread per CPU, less one for each broker
/// node on this host (loopback, `localhost`, or an address of one of its interfaces;
/// told apart by port, so the same node in two clusters or under two of this host's
/// addresses counts once), at least one; a node elsewhere takes none. The start-up log
/// says how many and why.
#[test]
fn unset_threads_leave_a_cpu_to_each_broker_on_this_host() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (p1, p2) = (free_port(), free_port());
    // This host's own non-loopback address, when it has one (the source address of a
    // route to a documentation address; UDP connect sends nothing).
    let own = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").and(s.local_addr()))
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
    let elsewhere = "198.51.100.1";
    assert!(
        std::net::UdpSocket::bind((elsewhere, 0)).is_err(),
        "{elsewhere} is an address of this host: the test needs one that is not"
    );
    let mut cases = vec![
        ("one loopback node", vec![format!("127.0.0.1:{p1}")], 1),
        (
            "two nodes on this host, one of them in two clusters",
            vec![format!("127.0.0.1:{p1}"), format!("localhost:{p2}")],
            2,
        ),
        (
            "one node named two ways on one port",
            vec![format!("localhost:{p1}"), format!("127.0.0.1:{p1}")],
            1,
        ),
        (
            "a node elsewhere (TEST-NET-2)",
            vec![format!("{elsewhere}:1883")],
            0,
        ),
    ];
    match own {
        Some(ip) => {
            cases.push((
                "a node on this host's own address",
                vec![format!("{ip}:{p1}")],
                1,
            ));
            cases.push((
                "a node on its own address and on loopback, and one more",
                vec![
                    format!("{ip}:{p1}"),
                    format!("127.0.0.1:{p1}"),
                    format!("{ip}:{p2}"),
                ],
                2,
            ));
        }
        None => eprintln!("no non-loopback address on this host: that case is left out"),
    }
    for (what, nodes, local) in cases {
        let dir = tempdir();
        let admin = free_port();
        let node_list: Vec<String> = nodes
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{{ name = \"n{i}\", address = \"{a}\" }}"))
            .collect();
        let toml = format!(
            "{}\n[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:{}\"\ncluster = \"a\"\n\n\
             [clusters.a]\nmode = \"dynsec\"\nnodes = [ {} ]\n\n\
             [clusters.b]\nmode = \"dynsec\"\nnodes = [ {} ]\n",
            Gate::admin_section(admin),
            free_port(),
            node_list.join(", "),
            node_list[0],
        );
        let gate = Gate::start(dir.path(), "gate", &toml, admin);
        let want = cpus.saturating_sub(local).max(1);
        let names = connection_threads(gate.pid().expect("gateway pid"));
        assert_eq!(
            names.len(),
            want,
            "{what}: {cpus} CPUs, {local} broker node(s) on this host: connection threads {names:?}"
        );
        let log = gate.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("connection threads"))
            .unwrap_or_else(|| panic!("{what}: no start-up line on connection threads:\n{log}"));
        assert!(
            line.contains(&format!("threads={want}"))
                && line.contains(&format!("broker_nodes_on_this_host={local}")),
            "{what}: start-up line {line:?}"
        );
    }
}

/// `limits.threads = N`: N connection threads (named, as `top -H` shows them), and
/// sessions are handed out in turn, each with both its sockets (client side and broker
/// side) in one thread's event loop. `threads = 0`: every session on the gateway's
/// own runtime, one event loop.
#[test]
fn connection_threads_take_sessions_in_turn_with_both_sockets_on_one_thread() {
    for (threads, want) in [(3usize, vec![4usize, 4, 4]), (0, vec![12])] {
        let dir = tempdir();
        let broker = Mosquitto::start("b1", dir.path());
        let (port, admin) = (free_port(), free_port());
        let toml = format!(
            "[limits]\nthreads = {threads}\n\n{}",
            basic_config(port, admin, "dynsec", &[&broker], "")
        );
        let gate = Gate::start(dir.path(), "gate", &toml, admin);
        gate.wait_node_up("b1");
        let pid = gate.pid().expect("gateway pid");
        let names = connection_threads(pid);
        assert_eq!(names.len(), threads, "connection threads: {names:?}");

        let mut sessions: Vec<_> = (0..6)
            .map(|i| raw_session(port, &format!("spread-{i}")))
            .collect();
        for s in &mut sessions {
            assert!(ping(s), "session answers through the gateway");
        }
        let broker_port = broker.port;
        // The gateway's ends of the 6 sessions: 6 accepted (local port = listener)
        // and 6 to the broker (remote port = broker). Health checks also connect to
        // the broker, from the gateway's own runtime, for a moment every 200 ms:
        // polled until a moment without one.
        let per_loop = || {
            let tcp = tcp_sockets(pid);
            let proxied = |ino: &u64| {
                tcp.get(ino)
                    .is_some_and(|&(l, r)| (l == port && r != 0) || r == broker_port)
            };
            let mut n: Vec<usize> = epoll_sets(pid)
                .iter()
                .map(|set| set.iter().filter(|i| proxied(i)).count())
                .filter(|&n| n > 0)
                .collect();
            n.sort_unstable();
            n
        };
        let mut seen = Vec::new();
        let found = (0..100).any(|_| {
            seen = per_loop();
            seen == want || {
                std::thread::sleep(Duration::from_millis(20));
                false
            }
        });
        assert!(
            found,
            "proxied sockets per event loop with threads = {threads}: {seen:?}, want {want:?}"
        );
        drop(sessions);
    }
}
