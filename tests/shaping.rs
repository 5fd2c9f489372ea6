//! Reconnect-storm shaping (`[clusters.X.shaping]`): CONNECT admission rates per
//! cluster and per node. Real Mosquitto nodes, raw MQTT 3.1.1 and 5 clients that send
//! their CONNECTs all at once (a storm); those over the rate get CONNACK "server busy"
//! (0x89, v5) or "server unavailable" (0x03, 3.1.1) and a clean close, and are counted.

use crate::common::admin::set_node_state;
use crate::common::fleet::addresses;
use crate::common::mqtt::read_packet;
use crate::common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Open `n` connections (even ones MQTT 5), write every CONNECT, then read each
/// answer: (is v5, CONNACK code, stream) per client.
fn storm(port: u16, prefix: &str, n: usize) -> Vec<(bool, u8, TcpStream)> {
    let mut open = Vec::new();
    for i in 0..n {
        let v5 = i.is_multiple_of(2);
        let c = Connect::new(&format!("{prefix}-{i}")).v5(v5);
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to mqgate");
        s.set_read_timeout(Some(T)).expect("read timeout");
        s.write_all(&c.bytes()).expect("write CONNECT");
        open.push((v5, s));
    }
    open.into_iter()
        .map(|(v5, mut s)| match read_packet(&mut s) {
            Ok((0x20, body)) if body.len() >= 2 => (v5, body[1], s),
            other => panic!("CONNACK expected, got {other:?}"),
        })
        .collect()
}

fn config(listen: u16, admin: u16, nodes: &[Mosquitto], shaping: &str) -> String {
    gate_config(
        listen,
        admin,
        "dynsec",
        &addresses(nodes),
        "balance = \"round-robin\"",
        "",
        shaping,
    )
}

#[test]
fn connect_rate_answers_a_storm_with_server_busy_and_counts_it() {
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 2);
    let shaping = "[clusters.brokers.shaping]\nconnect_rate = 1\n";
    let (gate, port) = Gate::start_with(dir.path(), "gate", |l, a| config(l, a, &nodes, shaping));
    gate.wait_node_up("node1");
    gate.wait_node_up("node2");

    let answers = storm(port, "storm", 60);
    let busy = |v5: bool| {
        answers
            .iter()
            .filter(|(is5, code, _)| *is5 == v5 && *code == if v5 { 0x89 } else { 0x03 })
            .count()
    };
    let accepted: Vec<_> = answers.iter().filter(|(_, c, _)| *c == 0).collect();
    let (busy5, busy3) = (busy(true), busy(false));
    assert_eq!(
        accepted.len() + busy5 + busy3,
        answers.len(),
        "every client is either accepted or told the server is busy"
    );
    assert!(!accepted.is_empty(), "the rate admits clients");
    assert!(
        busy5 > 0 && busy3 > 0,
        "v5: {busy5} busy, 3.1.1: {busy3} busy"
    );
    // Refused clients are closed; accepted ones have working sessions.
    for (_, code, s) in answers.iter() {
        let mut s = s.try_clone().expect("clone stream");
        if *code == 0 {
            assert!(ping(&mut s), "an admitted session answers PINGREQ");
        } else {
            assert!(
                crate::common::mqtt::closed_within(&mut s, T),
                "a busy client is closed"
            );
        }
    }
    let refused = (busy5 + busy3) as f64;
    assert_eq!(
        gate.metric(
            "mqgate_connections_rejected_total",
            &[("listener", "mqtt"), ("reason", "connect_rate")]
        ),
        refused
    );
    assert_eq!(
        gate.metric(
            "mqgate_admissions_refused_total",
            &[("cluster", "brokers"), ("reason", "cluster_rate")]
        ),
        refused
    );
    // Only admitted clients reached a broker.
    let relayed: f64 = ["node1", "node2"]
        .iter()
        .map(|n| gate.metric("mqgate_connections_total", &[("node", n)]))
        .sum();
    assert_eq!(relayed, accepted.len() as f64);
    // A client that backs off gets in: a rate, not a wall.
    wait_until(T, "a retrying client is admitted", || {
        matches!(
            crate::common::mqtt::connect_and_ack(port, &Connect::new("late").v5(true)),
            Ok((_, 0))
        )
    });
}

#[test]
fn node_connect_rate_spills_over_then_refuses_and_reload_lifts_it() {
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 2);
    let shaping = "[clusters.brokers.shaping]\nnode_connect_rate = 1\n";
    let (gate, port) = Gate::start_with(dir.path(), "gate", |l, a| config(l, a, &nodes, shaping));
    gate.wait_node_up("node1");
    gate.wait_node_up("node2");

    let answers = storm(port, "node", 40);
    let accepted = answers.iter().filter(|(_, c, _)| *c == 0).count();
    let busy = answers
        .iter()
        .filter(|(v5, c, _)| *c == if *v5 { 0x89 } else { 0x03 })
        .count();
    assert_eq!(accepted + busy, answers.len());
    assert!(busy > 0, "the per-node rate refuses part of the storm");
    // Over one node's rate, clients go to the other: both nodes took clients.
    for n in ["node1", "node2"] {
        assert!(
            gate.metric("mqgate_connections_total", &[("node", n)]) >= 1.0,
            "node {n} took clients"
        );
    }
    assert_eq!(
        gate.metric(
            "mqgate_admissions_refused_total",
            &[("cluster", "brokers"), ("reason", "node_rate")]
        ),
        busy as f64
    );
    drop(answers);

    // Hot reload: no limit any more, the same storm is admitted whole.
    let lifted = config(
        port,
        gate.admin_port,
        &nodes,
        "[clusters.brokers.shaping]\nnode_connect_rate = 0\n",
    );
    gate.reload_with(&lifted);
    let again = storm(port, "after", 40);
    assert!(
        again.iter().all(|(_, c, _)| *c == 0),
        "after the reload every client is admitted"
    );
}

#[test]
fn check_refuses_out_of_range_rates() {
    let dir = tempdir();
    let path = dir.path().join("bad.toml");
    let text = gate_config(
        1883,
        8080,
        "dynsec",
        &[("node1", "127.0.0.1:1".to_string())],
        "",
        "",
        "[clusters.brokers.shaping]\nconnect_rate = -5\nnode_connect_rate = 2000000\n",
    );
    std::fs::write(&path, text).expect("write config");
    let (code, out, err) = mqgate_check(&path);
    let err = format!("{out}{err}");
    assert_ne!(code, Some(0));
    assert!(
        err.contains("clusters.brokers.shaping.connect_rate"),
        "{err}"
    );
    assert!(
        err.contains("clusters.brokers.shaping.node_connect_rate"),
        "{err}"
    );
}

/// `maint` with a `close_rate` closes the node's sessions paced; putting the node back
/// to `ready` meanwhile stops that close (as cancelling an evacuation does): the
/// sessions not closed yet stay, and those that come afterwards are not closed by it.
/// Before, the paced close ran on to its end and then closed every session of the node.
#[test]
fn ready_again_stops_the_paced_close_of_maint() {
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 1);
    // 24 sessions at 4 a second: the close would take about 6 s.
    let shaping = "[clusters.brokers.shaping]\nclose_rate = 4\n";
    let (gate, port) = Gate::start_with(dir.path(), "gate", |l, a| config(l, a, &nodes, shaping));
    gate.wait_node_up("node1");
    let mut held: Vec<TcpStream> = (0..24)
        .map(|i| {
            crate::common::mqtt::session(port, &Connect::new(&format!("stay-{i}")))
                .expect("session")
        })
        .collect();
    let active = || gate.metric("mqgate_connections_active", &[("node", "node1")]);
    wait_until(Duration::from_secs(10), "24 sessions counted", || {
        active() == 24.0
    });

    set_node_state(gate.admin_port, "node1", "maint");
    wait_until(Duration::from_secs(10), "the paced close under way", || {
        active() < 24.0
    });
    set_node_state(gate.admin_port, "node1", "ready");
    wait_until(Duration::from_secs(10), "the paced close stopped", || {
        gate.metric("mqgate_paced_close_lanes_left", &[("node", "node1")]) == 0.0
    });
    // (Without the stop, the gauge got to 0 only at the end of the whole close, after
    // its final close of every session of the node.)
    let mut later = crate::common::mqtt::session(port, &Connect::new("later")).expect("session");
    assert!(
        ping(&mut later),
        "a session that came after `ready` is open"
    );
    let open = held.iter_mut().map(ping).filter(|ok| *ok).count();
    assert!(open > 0, "the sessions not closed yet stay");
    assert_eq!(active(), (open + 1) as f64);
}
