//! SPEC section 3, "what a bad or unlucky client gets": every row of the table against
//! a real mqgate in front of a real Mosquitto. Each case checks the reply bytes, that
//! the connection is closed, that it is counted once in
//! `mqgate_connections_rejected_total{reason=...}`, that a debug line names the peer
//! address, and that a legitimate client still gets through afterwards.

use crate::common::mqtt::{connack_v5_with_reason, connect_raw};
use crate::common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

const REJECTED: &str = "mqgate_connections_rejected_total";

/// One mqgate (dynsec, one node) with short limits, in front of one broker.
struct Setup {
    // Drop order: the gateway (it prints its log on failure), the broker, the files.
    gate: Gate,
    _broker: Mosquitto,
    _dir: tempfile::TempDir,
    port: u16,
}

fn setup(limits: &str) -> Setup {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let (port, admin) = (free_port(), free_port());
    let mut toml = basic_config(port, admin, "dynsec", &[&broker], "");
    toml.push_str(&format!("\n[limits]\n{limits}\n"));
    let gate = Gate::start(dir.path(), "gate", &toml, admin);
    gate.wait_node_up("b1");
    Setup {
        _dir: dir,
        _broker: broker,
        gate,
        port,
    }
}

/// Send `bytes`, then expect `reply` and a close; the rejection is counted under
/// `reason`, logged at debug with the peer address, and a normal client still works.
fn expect_refusal(s: &Setup, what: &str, bytes: &[u8], reply: &[u8], reason: &str) {
    let before = s
        .gate
        .metric(REJECTED, &[("listener", "mqtt"), ("reason", reason)]);
    let mut c = tcp(s.port);
    let me = c.local_addr().expect("local addr").to_string();
    // The gateway may close before reading everything (too_large): a failed write is fine.
    let _ = c.write_all(bytes);
    let (got, ended) = read_to_close(&mut c, Duration::from_secs(10));
    assert_eq!(got, reply, "{what}: reply");
    assert_ne!(ended, Ended::Open, "{what}: connection must be closed");
    wait_until(
        Duration::from_secs(5),
        &format!("{what}: counted as {reason}"),
        || {
            s.gate
                .metric(REJECTED, &[("listener", "mqtt"), ("reason", reason)])
                == before + 1.0
        },
    );
    wait_until(
        Duration::from_secs(5),
        &format!("{what}: debug log line"),
        || {
            s.gate
                .log_text()
                .lines()
                .any(|l| l.contains("DEBUG") && l.contains(&me) && l.contains("refused"))
        },
    );
    let mut ok = raw_session(s.port, &format!("after-{reason}"));
    assert!(ping(&mut ok), "{what}: a legitimate client still works");
}

/// A fresh MQTT 3.1.1 CONNECT as `id`: answered with CONNACK "accepted"?
fn accepted(port: u16, id: &str) -> bool {
    let mut c = tcp(port);
    let _ = c.write_all(&connect_v311(id));
    let (got, _) = read_to_close(&mut c, Duration::from_millis(300));
    got.starts_with(&[0x20, 0x02, 0x00, 0x00])
}

/// A CONNECT (keep alive 60 s) with `rest` as given: properties and payload fields.
fn connect_body(name: &[u8], level: u8, flags: u8, rest: &[&[u8]]) -> Vec<u8> {
    connect_raw(0x10, name, level, flags, 60, rest)
}

#[test]
fn invalid_first_bytes_are_closed_without_contacting_a_broker() {
    let s = setup("connect_timeout = \"2s\"");
    let cases: &[(&str, &[u8])] = &[
        ("HTTP request", b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"),
        (
            "TLS ClientHello on the plain port",
            &[
                0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03,
            ],
        ),
        ("garbage", b"\xff\xfe\x00hello garbage"),
        ("PINGREQ before CONNECT", &[0xC0, 0x00]),
        (
            "SUBSCRIBE before CONNECT",
            &[0x82, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00],
        ),
    ];
    let connects_before = s.gate.metric("mqgate_connack_total", &[]);
    for (what, bytes) in cases {
        expect_refusal(&s, what, bytes, &[], "invalid");
    }
    // Every CONNACK observed came from the legitimate sessions, none from the bad ones.
    assert_eq!(
        s.gate.metric("mqgate_connack_total", &[]) - connects_before,
        cases.len() as f64,
        "no broker contacted for invalid input"
    );
}

#[test]
fn malformed_connects_are_closed() {
    let s = setup("connect_timeout = \"2s\"");
    let v5_props = |props: &[u8]| {
        let mut p = vec![props.len() as u8];
        p.extend_from_slice(props);
        p
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "client id length past the end",
            connect_body(b"MQTT", 4, 0x02, &[&[0x00, 0x64], b"abc"]),
        ),
        (
            "5-byte remaining length",
            vec![0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        ),
        ("fixed header flags set", {
            let mut p = connect_v311("flags");
            p[0] = 0x12;
            p
        }),
        (
            "reserved connect flag set",
            connect_body(b"MQTT", 4, 0x03, &[&mqtt_field(b"id")]),
        ),
        (
            "will QoS 3",
            connect_body(
                b"MQTT",
                4,
                0x1E,
                &[&mqtt_field(b"id"), &mqtt_field(b"t"), &mqtt_field(b"p")],
            ),
        ),
        (
            "bad UTF-8 in client id",
            connect_body(b"MQTT", 4, 0x02, &[&mqtt_field(b"\xff\xfe")]),
        ),
        (
            "bad UTF-8 in username",
            connect_body(
                b"MQTT",
                4,
                0x82,
                &[&mqtt_field(b"id"), &mqtt_field(b"\xc3\x28")],
            ),
        ),
        (
            "bad UTF-8 in will topic",
            connect_body(
                b"MQTT",
                4,
                0x06,
                &[
                    &mqtt_field(b"id"),
                    &mqtt_field(b"a\xffb"),
                    &mqtt_field(b"p"),
                ],
            ),
        ),
        (
            "v5 unknown property",
            connect_body(
                b"MQTT",
                5,
                0x02,
                &[&v5_props(&[0x7F, 0x00]), &mqtt_field(b"id")],
            ),
        ),
        (
            "v5 duplicate session expiry",
            connect_body(
                b"MQTT",
                5,
                0x02,
                &[
                    &v5_props(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]),
                    &mqtt_field(b"id"),
                ],
            ),
        ),
        (
            "v5 property length past the end",
            connect_body(b"MQTT", 5, 0x02, &[&[0x20, 0x11, 0, 0]]),
        ),
    ];
    for (what, bytes) in &cases {
        expect_refusal(&s, what, bytes, &[], "malformed");
    }
}

#[test]
fn unsupported_protocol_level_gets_connack_0x01() {
    let s = setup("connect_timeout = \"2s\"");
    let level6 = connect_body(b"MQTT", 6, 0x02, &[&mqtt_field(b"future")]);
    expect_refusal(
        &s,
        "MQTT level 6",
        &level6,
        &[0x20, 0x02, 0x00, 0x01],
        "protocol",
    );
    let mqisdp4 = connect_body(b"MQIsdp", 4, 0x02, &[&mqtt_field(b"old")]);
    expect_refusal(
        &s,
        "MQIsdp level 4",
        &mqisdp4,
        &[0x20, 0x02, 0x00, 0x01],
        "protocol",
    );
}

#[test]
fn incomplete_connect_times_out() {
    let s = setup("connect_timeout = \"500ms\"");
    let full = connect_v311("slowpoke");
    let started = Instant::now();
    expect_refusal(&s, "half a CONNECT", &full[..7], &[], "timeout");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed at the deadline, not before"
    );
    // Nothing at all is a timeout too.
    expect_refusal(&s, "silent client", &[], &[], "timeout");
}

#[test]
fn oversized_connects_are_closed_without_reading_them() {
    let s = setup("max_connect_size = 1024\nconnect_timeout = \"5s\"");
    // Declares 256 MB; we send 64 KB of it and the gateway closes long before the rest.
    let mut declared = vec![0x10, 0xFF, 0xFF, 0xFF, 0x7F];
    declared.extend(std::iter::repeat_n(0u8, 64 * 1024));
    expect_refusal(&s, "CONNECT declaring 256 MB", &declared, &[], "too_large");
    // A real, complete CONNECT just over the limit.
    let big = connect_v311(&"x".repeat(1100));
    assert!(big.len() > 1024);
    expect_refusal(&s, "CONNECT of 1.1 KB", &big, &[], "too_large");
    // Exactly at the limit is fine.
    let mut body_len = 1024 - 3; // fixed header of a 1021-byte body is 3 bytes
    body_len -= 12; // protocol name, level, flags, keep alive, client id length
    let fits = connect_v311(&"y".repeat(body_len));
    assert_eq!(fits.len(), 1024);
    let mut c = tcp(s.port);
    c.write_all(&fits).expect("send CONNECT");
    assert_eq!(read_exact_n(&mut c, 4), [0x20, 0x02, 0x00, 0x00]);
}

#[test]
fn over_max_connections_gets_server_busy() {
    let s = setup("max_connections = 1");
    let mut holder = raw_session(s.port, "holder");
    let v3_before = s.gate.metric(REJECTED, &[("reason", "busy")]);
    let mut c = tcp(s.port);
    c.write_all(&connect_v311("second")).expect("send");
    let (got, ended) = read_to_close(&mut c, Duration::from_secs(10));
    assert_eq!(got, [0x20, 0x02, 0x00, 0x03], "v3: server unavailable");
    assert_ne!(ended, Ended::Open);
    let mut c = tcp(s.port);
    c.write_all(&connect_v5("second-v5")).expect("send");
    let (got, ended) = read_to_close(&mut c, Duration::from_secs(10));
    assert_eq!(got, [0x20, 0x03, 0x00, 0x89, 0x00], "v5: server busy");
    assert_ne!(ended, Ended::Open);
    assert_eq!(
        s.gate.metric(REJECTED, &[("reason", "busy")]),
        v3_before + 2.0
    );
    assert!(s
        .gate
        .log_text()
        .contains("refused: max_connections reached"));
    // The session that holds the slot is undisturbed; once it leaves, a new one fits.
    assert!(ping(&mut holder));
    drop(holder);
    wait_until(Duration::from_secs(10), "slot freed", || {
        accepted(s.port, "third")
    });
}

/// No node can take the client: it is held for `queue_timeout`, then closed without a
/// CONNACK (`no_node_reply = "close"`, the default: a refusing CONNACK ends the
/// reconnect loop of mosquitto_sub and MQTT.js, a close does not). A client held
/// while the node comes up is routed on the same connection.
#[test]
fn no_node_holds_the_client_then_closes_or_routes() {
    let dir = tempdir();
    let broker_port = free_port(); // nothing listens here yet
    let (port, admin) = (free_port(), free_port());
    let toml = |queue_timeout: &str| {
        format!(
            "{}\n[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:{port}\"\ncluster = \"brokers\"\n\
             [clusters.brokers]\nmode = \"dynsec\"\nconnect_timeout = \"1s\"\nqueue_timeout = \"{queue_timeout}\"\n\
             nodes = [ {{ name = \"b1\", address = \"127.0.0.1:{broker_port}\" }} ]\n\
             [clusters.brokers.health]\ninterval = \"200ms\"\nfast_interval = \"50ms\"\ndown_interval = \"100ms\"\nrise = 1\nfall = 1\n",
            Gate::admin_section(admin)
        )
    };
    let gate = Gate::start(dir.path(), "gate", &toml("1s"), admin);
    let s = |v5: bool| {
        let mut c = tcp(port);
        let me = c.local_addr().expect("addr").to_string();
        c.write_all(&if v5 {
            connect_v5("nn5")
        } else {
            connect_v311("nn3")
        })
        .expect("send");
        let (got, ended) = read_to_close(&mut c, Duration::from_secs(10));
        assert_ne!(ended, Ended::Open);
        (got, me)
    };
    let (got, me) = s(false);
    assert_eq!(got, [0u8; 0], "v3: closed without a CONNACK");
    let (got5, _) = s(true);
    assert_eq!(got5, [0u8; 0], "v5: closed without a CONNACK");
    assert_eq!(gate.metric(REJECTED, &[("reason", "no_node")]), 2.0);
    assert_eq!(
        gate.metric("mqgate_queue_total", &[("result", "timeout")]),
        2.0,
        "both were held until queue_timeout"
    );
    wait_until(Duration::from_secs(5), "debug line", || {
        gate.log_text().lines().any(|l| {
            l.contains(&me) && l.contains("refused: no node is up after holding the client")
        })
    });

    // A long queue_timeout: a client held while the broker starts is routed.
    gate.reload_with(&toml("60s"));
    let mut held = tcp(port);
    held.write_all(&connect_v311("held")).expect("send");
    wait_until(Duration::from_secs(10), "client held", || {
        gate.metric("mqgate_queued_connections", &[("cluster", "brokers")]) == 1.0
    });
    let _broker = Mosquitto::start_on("b1", dir.path(), broker_port, MosquittoOpts::default());
    let mut connack = [0u8; 4];
    held.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    std::io::Read::read_exact(&mut held, &mut connack).expect("CONNACK after the wait");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "accepted by the broker");
    assert!(ping(&mut held), "the session works");
    assert_eq!(
        gate.metric("mqgate_queue_total", &[("result", "routed")]),
        1.0
    );
    assert_eq!(
        gate.metric("mqgate_queued_connections", &[("cluster", "brokers")]),
        0.0
    );
    assert_eq!(gate.metric(REJECTED, &[("reason", "no_node")]), 2.0);
}

#[test]
fn client_leaving_mid_connect_is_counted_as_closed() {
    let s = setup("connect_timeout = \"5s\"");
    let before = s.gate.metric(REJECTED, &[("reason", "closed")]);
    let mut c = tcp(s.port);
    c.write_all(&connect_v311("leaver")[..5]).expect("send");
    c.shutdown(std::net::Shutdown::Both).expect("shutdown");
    drop::<TcpStream>(c);
    wait_until(Duration::from_secs(5), "counted as closed", || {
        s.gate.metric(REJECTED, &[("reason", "closed")]) == before + 1.0
    });
}

#[test]
fn over_per_ip_connect_rate_is_closed_at_accept() {
    let s = setup("per_ip_connect_rate = 2");
    // The bucket holds one second's worth (2); the third connection in a burst is over.
    let mut first = raw_session(s.port, "rate-1");
    let _second = raw_session(s.port, "rate-2");
    let mut c = tcp(s.port);
    let _ = c.write_all(&connect_v311("rate-3"));
    let (got, ended) = read_to_close(&mut c, Duration::from_secs(5));
    assert!(got.is_empty(), "no reply: {got:02x?}");
    assert_ne!(ended, Ended::Open);
    assert_eq!(s.gate.metric(REJECTED, &[("reason", "rate")]), 1.0);
    assert!(s
        .gate
        .log_text()
        .contains("refused: over per_ip_connect_rate"));
    // Established sessions are not affected, and the bucket refills.
    assert!(ping(&mut first));
    wait_until(
        Duration::from_secs(5),
        "accepted again after the refill",
        || accepted(s.port, "rate-4"),
    );
}

/// A gateway behind a PROXY-protocol balancer on 127.0.0.1 (`per_ip_connect_rate =
/// 1`), in front of one broker.
struct Balanced {
    // Drop order: the gateway (it prints its log on failure), the broker, the files.
    gate: Gate,
    _broker: Mosquitto,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Balanced {
    fn start() -> Balanced {
        let dir = tempdir();
        let broker = Mosquitto::start("b1", dir.path());
        let (gate, port) = Gate::start_with(dir.path(), "gate", |port, admin| {
            format!(
                "{}\n[limits]\nper_ip_connect_rate = 1\n\n[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:{port}\"\n\
                 cluster = \"brokers\"\nproxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]\n\n\
                 [clusters.brokers]\nmode = \"dynsec\"\nnodes = [ {{ name = \"b1\", address = \"{}\" }} ]\n",
                Gate::admin_section(admin),
                broker.address()
            )
        });
        Balanced {
            gate,
            _broker: broker,
            _dir: dir,
            port,
        }
    }

    /// A client `id` at `src` (a PROXY v1 header of `family`, from `src` to `dst`),
    /// then its CONNECT. Answered with CONNACK "accepted"?
    fn client(&self, family: &str, src: &str, dst: &str, id: &str) -> bool {
        let mut c = tcp(self.port);
        let mut bytes = format!("PROXY {family} {src} {dst} 40000 1883\r\n").into_bytes();
        bytes.extend(connect_v311(id));
        let _ = c.write_all(&bytes);
        let mut got = [0u8; 4];
        std::io::Read::read_exact(&mut c, &mut got).is_ok() && got == CONNACK_ACCEPTED
    }
}

#[test]
fn per_ip_rate_behind_a_proxy_applies_to_the_real_client() {
    let b = Balanced::start();
    let gate = &b.gate;
    let via_proxy = |src: &str, id: &str| b.client("TCP4", src, "10.9.9.9", id);
    wait_until(Duration::from_secs(10), "first client through", || {
        via_proxy("10.0.0.1", "p1")
    });
    // All connections come from the balancer (127.0.0.1); only the real source counts.
    assert!(
        !via_proxy("10.0.0.1", "p1-again"),
        "same client over its rate"
    );
    assert!(
        via_proxy("10.0.0.2", "p2"),
        "another client behind the same balancer"
    );
    assert_eq!(gate.metric(REJECTED, &[("reason", "rate")]), 1.0);
    let log = gate.log_text();
    assert!(log
        .lines()
        .any(|l| l.contains("refused: over per_ip_connect_rate") && l.contains("10.0.0.1")));
}

/// A node that accepts TCP and never answers (it does not even read): the client gets
/// "server unavailable" once `connack_timeout` passes instead of waiting forever, it is
/// counted as `mqgate_connack_total{code="timeout"}`, and `fall` such misses in a row
/// mark the node down although its TCP check passes.
#[test]
fn silent_node_gets_a_connack_deadline_and_is_marked_down() {
    let dir = tempdir();
    let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hole_port = hole.local_addr().expect("addr").port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for s in hole.incoming().flatten() {
            keep.lock().unwrap_or_else(|p| p.into_inner()).push(s);
        }
    });
    let (port, admin) = (free_port(), free_port());
    let toml = format!(
        "{}\n[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:{port}\"\ncluster = \"brokers\"\n\
         [clusters.brokers]\nmode = \"dynsec\"\nconnack_timeout = \"1s\"\nqueue_timeout = \"0s\"\n\
         nodes = [ {{ name = \"hole\", address = \"127.0.0.1:{hole_port}\" }} ]\n\
         [clusters.brokers.health]\ncheck = \"tcp\"\ninterval = \"1h\"\nfast_interval = \"50ms\"\n\
         down_interval = \"50ms\"\nrise = 1\nfall = 2\n",
        Gate::admin_section(admin)
    );
    let gate = Gate::start(dir.path(), "gate", &toml, admin);
    gate.wait_node_up("hole");
    let reason = b"mqgate: no CONNACK from the broker within 1s";
    let v5_reply = connack_v5_with_reason(0x88, reason);
    let mut first = tcp(port);
    first.write_all(&connect_v311("silent3")).expect("send");
    let (got, ended) = read_to_close(&mut first, Duration::from_secs(10));
    assert_eq!(got, [0x20, 0x02, 0x00, 0x03], "v3: server unavailable");
    assert_ne!(ended, Ended::Open);
    assert_eq!(
        gate.metric("mqgate_connack_total", &[("code", "timeout")]),
        1.0
    );
    assert_eq!(
        gate.metric("mqgate_node_up", &[("node", "hole")]),
        1.0,
        "one miss"
    );
    let mut second = tcp(port);
    second.write_all(&connect_v5("silent5")).expect("send");
    let (got, _) = read_to_close(&mut second, Duration::from_secs(10));
    assert_eq!(got, v5_reply, "v5: server unavailable with a reason string");
    // Marked down (counted: its TCP check may bring it back up at once, below).
    wait_until(Duration::from_secs(5), "node marked down", || {
        gate.metric(
            "mqgate_node_state_changes_total",
            &[("node", "hole"), ("state", "down")],
        ) == 1.0
    });
    assert!(gate
        .log_text()
        .contains("node is down: clients got no CONNACK in time"));
    assert_eq!(
        gate.metric("mqgate_connections_active", &[("node", "hole")]),
        0.0
    );
    // Its TCP check passes, so it comes back after `rise` checks.
    wait_until(Duration::from_secs(10), "node up again", || {
        gate.metric(
            "mqgate_node_state_changes_total",
            &[("node", "hole"), ("state", "up")],
        ) == 2.0
            && gate.metric("mqgate_node_up", &[("node", "hole")]) == 1.0
    });
}

/// `per_ip_connect_rate` counts an IPv6 client by its /64 (one host or subscriber line
/// usually holds a whole /64): a second address in the same /64 is over the budget, the
/// next /64 has its own. Sources are given in PROXY headers.
#[test]
fn per_ip_rate_counts_ipv6_clients_by_their_slash_64() {
    let b = Balanced::start();
    let gate = &b.gate;
    let via_proxy = |src: &str, id: &str| b.client("TCP6", src, "2001:db8::9", id);
    gate.wait_node_up("b1");
    assert!(
        via_proxy("2001:db8:1:2::1", "v6-a"),
        "first address of the /64"
    );
    assert!(
        !via_proxy("2001:db8:1:2:8000::77", "v6-b"),
        "another address of the same /64 shares its budget"
    );
    assert!(
        via_proxy("2001:db8:1:3::1", "v6-c"),
        "the next /64 has its own budget"
    );
    assert_eq!(gate.metric(REJECTED, &[("reason", "rate")]), 1.0);
    assert!(gate
        .log_text()
        .lines()
        .any(|l| l.contains("refused: over per_ip_connect_rate")
            && l.contains("2001:db8:1:2:8000::77")));
}
