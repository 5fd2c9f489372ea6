//! Fan-out sessions in the access log (issue 28, docs/fanout.md "Access log"): one
//! line per session, with the client id, the nodes it was connected to, the bytes
//! each way and why it ended; and its upstream gauges back to 0 once it ended.

use crate::common::admin::set_node_state;
use crate::common::fleet::addresses;
use crate::common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const RULE: &str = "[[clusters.brokers.fanout]]\nclients = \"backend-*\"\n";

/// mqgate over `nodes` (dynsec, the fan-out rule [`RULE`]) with its access log in
/// `dir/access.log`, every node up: the gateway, its client port and the log's path.
pub(crate) fn gate_with_access_log(dir: &Path, nodes: &[Mosquitto]) -> (Gate, u16, PathBuf) {
    let file = dir.join("access.log");
    let (gate, listen) = Gate::start_with(dir, "gate", |listen, admin| {
        format!(
            "[log]\naccess = \"{}\"\n\n{}",
            file.display(),
            gate_config(listen, admin, "dynsec", &addresses(nodes), "", "", RULE)
        )
    });
    for n in nodes {
        gate.wait_node_up(&n.name);
    }
    (gate, listen, file)
}

fn wait_line(path: &Path, needles: &[&str]) -> String {
    crate::common::wait_line(path, needles, T)
}

/// The number after `key=` in a logfmt line.
fn number(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} in {line}"))
}

#[test]
fn fanout_sessions_write_an_access_log_line_with_nodes_bytes_and_close_reason() {
    let dir = tempdir();
    let d = dir.path();
    let nodes = Mosquitto::start_nodes(d, 2);
    let (gate, listen, file) = gate_with_access_log(d, &nodes);
    let upstreams = |node: &str| {
        gate.metric(
            "mqgate_fanout_upstreams",
            &[("cluster", "brokers"), ("node", node)],
        )
    };

    // A backend that subscribes, receives one message and disconnects: close=client.
    let (mut c, _) = Client::accepted(listen, &Connect::new("backend-log1")).expect("backend");
    c.subscribe("tele/#").expect("subscribe");
    for n in &nodes {
        assert_eq!(upstreams(&n.name), 1.0, "connected to {}", n.name);
    }
    publish(nodes[1].port, 1, "tele/x", "hello");
    let (_, p) = c.next_publish(T).expect("the backend receives");
    assert_eq!(p, b"hello");
    c.disconnect();
    let line = wait_line(&file, &["client_id=backend-log1 "]);
    assert!(line.contains("close=client"), "{line}");
    assert!(line.contains("protocol=3.1.1"), "{line}");
    assert!(line.contains("cluster=brokers"), "{line}");
    assert!(line.contains("connack=0"), "{line}");
    // Every node it was connected to, in the order they accepted it.
    let mut listed = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("node="))
        .unwrap_or_else(|| panic!("node in {line}"))
        .split(',')
        .collect::<Vec<_>>();
    listed.sort_unstable();
    let names = nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>();
    assert_eq!(listed, names, "{line}");
    // CONNECT + SUBSCRIBE + PUBACK + DISCONNECT from the client; CONNACK + SUBACK +
    // the PUBLISH to it.
    assert!(number(&line, "to_broker") > 20, "{line}");
    assert!(number(&line, "to_client") > 4 + 5 + 13, "{line}");
    // Its node connections are gone, and counted so.
    for n in &nodes {
        wait_until(T, &format!("upstreams of {} back to 0", n.name), || {
            upstreams(&n.name) == 0.0
        });
    }

    // A backend closed for a malformed SUBSCRIBE: close=malformed.
    let mut s = raw_session(listen, "backend-log2");
    let _ = s.write_all(&mqtt_packet(0x82, &[0, 1, 0, 1, b'a', 0x07]));
    let (_, ended) = read_to_close(&mut s, T);
    assert_eq!(ended, Ended::Eof, "a clean close");
    let line = wait_line(&file, &["client_id=backend-log2 "]);
    assert!(line.contains("close=malformed"), "{line}");
    assert!(!line.contains("reject="), "{line}");

    // Every node down: the fan-out client is refused like any other (reject=no_node).
    for n in &nodes {
        set_node_state(gate.admin_port, &n.name, "maint");
    }
    let refused = crate::common::mqtt::session(listen, &Connect::new("backend-log3"));
    assert!(refused.is_err(), "refused with no node");
    let line = wait_line(&file, &["client_id=backend-log3 "]);
    assert!(line.contains("close=rejected"), "{line}");
    assert!(line.contains("reject=no_node"), "{line}");
    assert!(line.contains("node=-"), "{line}");
}

/// The keep-alive (MQTT: 1.5 × the CONNECT's): a backend that keeps talking stays
/// past it; one that goes silent is closed once it has passed (`close=keepalive`).
#[test]
fn a_silent_fanout_backend_is_closed_after_one_and_a_half_keep_alives() {
    let dir = tempdir();
    let d = dir.path();
    let nodes = Mosquitto::start_nodes(d, 2);
    let (gate, listen, file) = gate_with_access_log(d, &nodes);
    let connect = |id: &str| {
        crate::common::mqtt::session(listen, &Connect::new(id).keep_alive(1)).expect("session")
    };

    // One pings every 400 ms, the other says nothing after its CONNACK.
    let mut talking = connect("backend-ka1");
    let mut silent = connect("backend-ka2");
    let began = std::time::Instant::now();
    let waiting = std::thread::spawn(move || read_to_close(&mut silent, T).1);
    while !waiting.is_finished() || began.elapsed() < Duration::from_secs(3) {
        assert!(ping(&mut talking), "PINGRESP after {:?}", began.elapsed());
        std::thread::sleep(Duration::from_millis(400));
    }
    assert_ne!(
        waiting.join().expect("reader"),
        Ended::Open,
        "the silent one closed"
    );
    assert!(began.elapsed() >= Duration::from_millis(1500));
    let line = wait_line(&file, &["client_id=backend-ka2 "]);
    assert!(line.contains("close=keepalive"), "{line}");
    assert_eq!(
        gate.metric("mqgate_fanout_closes_total", &[("reason", "keepalive")]),
        1.0
    );
    assert!(ping(&mut talking), "the talking one is still open");
}
