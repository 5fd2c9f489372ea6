//! Clients on the packet-aware relay (`[clusters.X.sessions]`, persistent clients) are
//! closed by the gateway as byte-relay clients are: an MQTT 5 client is told why with a
//! DISCONNECT before the close — 0x8E when its id went live through another gateway
//! (`single_live`), 0x9C on an evacuation, 0x8B at the gateway's shutdown — and a 3.1.1
//! client gets a plain close; the access log names the cause. Real Mosquitto nodes,
//! raw-socket clients that read the DISCONNECT's reason code.

use crate::common::admin::set_node_state;
use crate::common::fleet::addresses;
use crate::common::*;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

const SESSIONS: &str = "[clusters.brokers.sessions]\nrestore_subscriptions = true\n";

/// What a client got from the server before its connection ended: the reason of a
/// DISCONNECT, if one came, and that the close followed.
fn told_before_close(c: &mut Client) -> (Option<u8>, bool) {
    let said = match c.read_packet(T) {
        Ok((0xE0, b)) => b.first().copied(),
        _ => None,
    };
    (said, c.closed_within(T))
}

fn access_line(file: &Path, needles: &[&str]) -> String {
    wait_line(file, needles, T)
}

fn packet_relays(g: &Gate) -> f64 {
    g.metric(
        "mqgate_relay_connections_total",
        &[("cluster", "brokers"), ("mode", "packet")],
    )
}

/// The same persistent client id through two gateways, each over a node of its own:
/// the older connection, on the packet-aware relay, is closed by its gateway — MQTT 5
/// with DISCONNECT 0x8E "session taken over" first, 3.1.1 plainly — and its access-log
/// line says `taken_over`.
#[test]
fn a_packet_aware_client_taken_over_is_told_0x8e_and_logged() {
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 2);
    let all = addresses(&nodes);
    let sections = format!(
        "{SESSIONS}single_live = true\n\n[log]\naccess = \"{}\"\n",
        dir.path().join("access.log").display()
    );
    let gates = pair::start(
        dir.path(),
        [all[0..1].to_vec(), all[1..2].to_vec()],
        &sections,
        false,
    );
    let ((a, a_listen), (b, b_listen)) = (&gates[0], &gates[1]);
    for (v5, id) in [(true, "twin-pkt-5"), (false, "twin-pkt-3")] {
        let c = Connect::new(id).v5(v5).persistent();
        let (mut old, _) = Client::accepted(*a_listen, &c).expect("through gate-a");
        old.subscribe(&format!("cmd/{id}")).expect("subscribe");
        let (mut new, _) = Client::accepted(*b_listen, &c).expect("through gate-b");
        let (said, closed) = told_before_close(&mut old);
        assert!(closed, "{id}: the older connection is closed");
        if v5 {
            assert_eq!(
                said,
                Some(0x8E),
                "{id}: MQTT 5 is told \"session taken over\""
            );
        } else {
            assert_eq!(said, None, "{id}: 3.1.1 gets a plain close");
        }
        assert!(new.ping(), "{id}: the newer connection stays");
        access_line(
            &dir.path().join("access.log"),
            &[&format!("client_id={id}"), "close=taken_over"],
        );
    }
    assert_eq!(packet_relays(a), 2.0, "gate-a relayed both packet-aware");
    assert_eq!(packet_relays(b), 2.0, "gate-b too");
    assert_eq!(
        a.metric(
            "mqgate_disconnects_sent_total",
            &[("cluster", "brokers"), ("reason", "session_taken_over")]
        ),
        1.0
    );
}

/// An evacuation tells an MQTT 5 client of the packet-aware relay 0x9C and closes a
/// 3.1.1 one plainly; both come back on the other node with their subscriptions
/// restored. Then SIGTERM (paced: `close_rate`) tells the v5 client 0x8B.
#[test]
fn packet_aware_clients_are_told_0x9c_on_evacuation_and_0x8b_at_shutdown() {
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 2);
    let sections = format!(
        "{SESSIONS}\n[clusters.brokers.shaping]\nclose_rate = 10\n\n[limits]\nshutdown_grace = \"3s\"\n"
    );
    let (mut gate, port) = Gate::start_with(dir.path(), "gate", |l, a| {
        gate_config(l, a, "dynsec", &addresses(&nodes), "", "", &sections)
    });
    gate.wait_node_up("node1");
    gate.wait_node_up("node2");
    set_node_state(gate.admin_port, "node2", "drain");
    let ids = [(true, "evac-pkt-5"), (false, "evac-pkt-3")];
    let mut clients: Vec<Client> = ids
        .iter()
        .map(|(v5, id)| {
            let (mut c, _) =
                Client::accepted(port, &Connect::new(id).v5(*v5).persistent()).expect("client");
            c.subscribe(&format!("cmd/{id}")).expect("subscribe");
            c
        })
        .collect();
    assert_eq!(packet_relays(&gate), 2.0, "both on the packet-aware relay");
    wait_until(T, "both subscriptions stored", || {
        gate.metric("mqgate_session_subscriptions", &[("cluster", "brokers")]) == 2.0
    });
    set_node_state(gate.admin_port, "node2", "ready");
    let (status, body) = http(
        "POST",
        gate.admin_port,
        "/api/v1/clusters/brokers/nodes/node1/evacuate",
        Some("{\"rate\": 10}"),
        None,
    )
    .expect("admin API answers");
    assert_eq!(status, 200, "{body}");
    for ((v5, id), c) in ids.iter().zip(clients.iter_mut()) {
        let (said, closed) = told_before_close(c);
        assert!(closed, "{id}: closed by the evacuation");
        let want = if *v5 { Some(0x9C) } else { None };
        assert_eq!(said, want, "{id}: what the client was told");
    }
    assert_eq!(
        gate.metric(
            "mqgate_disconnects_sent_total",
            &[("reason", "use_another_server")]
        ),
        1.0
    );
    // Back on node2, without subscribing again: mqgate replays the subscriptions.
    let mut clients: Vec<Client> = ids
        .iter()
        .map(|(v5, id)| {
            let (c, ack) =
                Client::accepted(port, &Connect::new(id).v5(*v5).persistent()).expect("reconnect");
            assert!(!ack.session_present, "{id}: node2 had no session for it");
            assert_eq!(sticky_node(gate.admin_port, id).as_deref(), Some("node2"));
            c
        })
        .collect();
    wait_until(T, "both replays done", || {
        gate.metric(
            "mqgate_session_replays_total",
            &[("cluster", "brokers"), ("result", "done")],
        ) == 2.0
    });
    let (mut backend, _) =
        Client::accepted(nodes[1].port, &Connect::new("backend")).expect("backend on node2");
    for (_, id) in &ids {
        backend
            .publish(&format!("cmd/{id}"), id.as_bytes())
            .expect("publish");
    }
    backend.disconnect();
    for ((_, id), c) in ids.iter().zip(clients.iter_mut()) {
        let (topic, payload) = c.next_publish(T).expect("the command arrives");
        assert_eq!(
            (topic, payload),
            (format!("cmd/{id}"), id.as_bytes().to_vec())
        );
    }
    gate.signal("TERM");
    for ((v5, id), c) in ids.iter().zip(clients.iter_mut()) {
        let (said, closed) = told_before_close(c);
        assert!(closed, "{id}: closed at shutdown");
        let want = if *v5 { Some(0x8B) } else { None };
        assert_eq!(said, want, "{id}: what the client was told at shutdown");
    }
    assert_eq!(gate.wait_exit(T), Some(0));
}
