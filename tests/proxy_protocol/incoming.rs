//! PROXY headers in: v1 and v2 from a trusted proxy carry the real client address
//! (out as v1), a missing, malformed or untrusted header is refused and counted, and the
//! per-IP connect rate applies to the real client, not the balancer.

use super::*;

fn v2_in(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h
}

#[test]
fn v1_and_v2_in_from_trusted_proxy_carry_the_real_address_out_as_v1() {
    let (_dir, _broker, rec, gate, listen) = setup("v1", "127.0.0.0/8");

    let ack = mqtt_through(
        listen,
        b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 1883\r\n",
        "pp-v1",
    );
    assert_eq!(
        ack,
        [0x20, 0x02, 0x00, 0x00],
        "real CONNACK through the recorder"
    );
    let ack = mqtt_through(
        listen,
        &v2_in([203, 0, 113, 8], 40002, [198, 51, 100, 1], 1883),
        "pp-v2",
    );
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    // LOCAL command (a balancer's own health check): the TCP peer stays the source.
    let mut local = v2_in([0; 4], 0, [0; 4], 0);
    local[12] = 0x20;
    assert_eq!(
        mqtt_through(listen, &local, "pp-local"),
        [0x20, 0x02, 0x00, 0x00]
    );

    wait_until(Duration::from_secs(5), "three headers recorded", || {
        rec.headers().len() == 3
    });
    let got: Vec<String> = rec
        .headers()
        .iter()
        .map(|h| String::from_utf8_lossy(h).to_string())
        .collect();
    assert!(
        got.contains(&"PROXY TCP4 203.0.113.7 198.51.100.1 40001 1883\r\n".to_string()),
        "{got:?}"
    );
    assert!(
        got.contains(&"PROXY TCP4 203.0.113.8 198.51.100.1 40002 1883\r\n".to_string()),
        "{got:?}"
    );
    let local_line = got
        .iter()
        .find(|h| h.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 "))
        .expect("LOCAL keeps peer");
    assert!(
        local_line.ends_with(&format!(" {listen}\r\n")),
        "{local_line}"
    );

    // The gateway's own health checks (check = "tcp") carry `PROXY UNKNOWN`.
    assert!(
        rec.check_headers()
            .iter()
            .all(|h| h.as_slice() == b"PROXY UNKNOWN\r\n"),
        "{:?}",
        rec.check_headers()
    );
    assert!(
        !rec.check_headers().is_empty(),
        "health checks send a header"
    );

    wait_until(Duration::from_secs(5), "real address in the log", || {
        let log = gate.log_text();
        log.contains("203.0.113.7:40001") && log.contains("203.0.113.8:40002")
    });
    assert_eq!(
        gate.metric("mqgate_connections_rejected_total", &[("reason", "proxy")]),
        0.0
    );
}

#[test]
fn missing_or_malformed_header_is_refused_and_counted() {
    let (_dir, _broker, rec, gate, listen) = setup("off", "127.0.0.0/8");
    // A plain CONNECT where a header is expected, a broken v1 line, a bad v2 version.
    assert!(mqtt_through(listen, b"", "no-header").is_empty());
    assert!(mqtt_through(listen, b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n", "bad-v1").is_empty());
    let mut bad = v2_in([1, 2, 3, 4], 1, [5, 6, 7, 8], 2);
    bad[12] = 0x31;
    assert!(mqtt_through(listen, &bad, "bad-v2").is_empty());
    wait_until(Duration::from_secs(5), "3 refusals counted", || {
        gate.metric("mqgate_connections_rejected_total", &[("reason", "proxy")]) == 3.0
    });
    assert!(rec.headers().is_empty(), "no broker contacted");
    // Still serving well-formed headers (and nothing to send out with "off").
    let ack = mqtt_through(listen, b"PROXY UNKNOWN\r\n", "ok");
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    wait_until(Duration::from_secs(5), "relayed", || {
        rec.headers().len() == 1
    });
    assert!(
        rec.headers()[0].is_empty(),
        "send_proxy_protocol = off sends no header"
    );
}

#[test]
fn header_from_untrusted_source_is_closed_and_counted() {
    let (_dir, _broker, rec, gate, listen) = setup("v2", "10.0.0.0/8");
    let ack = mqtt_through(
        listen,
        b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 1883\r\n",
        "spoof",
    );
    assert!(ack.is_empty(), "closed without a CONNACK");
    wait_until(Duration::from_secs(5), "counted as proxy", || {
        gate.metric("mqgate_connections_rejected_total", &[("reason", "proxy")]) == 1.0
    });
    assert!(rec.headers().is_empty(), "no broker contacted");
}

#[test]
fn per_ip_connect_rate_applies_to_the_real_client_not_the_balancer() {
    let (_dir, _broker, _rec, gate, listen) = setup("off", "127.0.0.0/8");
    // per_ip_connect_rate = 3: all connections come from the balancer (127.0.0.1), but
    // only the fourth from the same real client in one burst is over the rate.
    let from = |ip: &str, port: u16| format!("PROXY TCP4 {ip} 198.51.100.1 {port} 1883\r\n");
    for i in 0..3 {
        let ack = mqtt_through(
            listen,
            from("203.0.113.9", 41000 + i).as_bytes(),
            &format!("r{i}"),
        );
        assert_eq!(
            ack,
            [0x20, 0x02, 0x00, 0x00],
            "connection {i} of 203.0.113.9"
        );
    }
    assert!(mqtt_through(listen, from("203.0.113.9", 41003).as_bytes(), "r3").is_empty());
    let ack = mqtt_through(listen, from("203.0.113.10", 41004).as_bytes(), "other");
    assert_eq!(
        ack,
        [0x20, 0x02, 0x00, 0x00],
        "another real client is not limited"
    );
    assert_eq!(
        gate.metric("mqgate_connections_rejected_total", &[("reason", "rate")]),
        1.0
    );
}
