//! Odd but legal byte streams and ends of connections: a CONNECT in 1-byte writes,
//! bytes right behind the CONNECT, a half-closed client, a client ignoring the broker's
//! close, a client's reset passed on as a reset, and a dead broker's clients taken by
//! the next node.

use super::*;

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
