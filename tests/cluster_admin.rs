//! Admin states through the admin API (`PUT /api/v1/clusters/{c}/nodes/{n}/state`)
//! with real Mosquitto nodes: `drain` takes no new clients except those whose sticky
//! entry points there and keeps its sessions; `maint` takes none and closes its
//! sessions; `ready` takes clients again.

use crate::common::admin::set_node_state;
use crate::common::fleet::addresses;
use crate::common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

fn persistent(id: &str) -> Connect {
    Connect::new(id).persistent()
}

/// Connect `n` fresh persistent clients named `{prefix}-{i}` and disconnect them;
/// returns the nodes they landed on.
fn fresh_clients(listen: u16, admin: u16, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            let (c, _) = Client::accepted(listen, &persistent(&id)).expect("fresh client");
            c.disconnect();
            sticky_node(admin, &id).expect("entry written")
        })
        .collect()
}

fn dynsec_fleet(dir: &std::path::Path) -> (Vec<Mosquitto>, Gate, u16, u16) {
    let nodes = Mosquitto::start_nodes(dir, 3);
    let (gate, listen) = Gate::start_with(dir, "gate", |listen, admin| {
        gate_config(listen, admin, "dynsec", &addresses(&nodes), "", "", "")
    });
    let admin = gate.admin_port;
    wait_until(T, "all nodes up", || {
        gate.metric("mqgate_node_up", &[]) == 3.0
    });
    (nodes, gate, listen, admin)
}

#[test]
fn drain_keeps_sticky_clients_and_takes_no_new_ones() {
    let dir = tempdir();
    let (_nodes, gate, listen, admin) = dynsec_fleet(dir.path());
    let (mut home_client, _) = Client::accepted(listen, &persistent("home")).expect("client");
    home_client.subscribe("home/t").expect("subscribe");
    let home = sticky_node(admin, "home").expect("entry for home");

    set_node_state(admin, &home, "drain");
    assert_eq!(
        gate.metric(
            "mqgate_node_admin_state",
            &[("node", &home), ("state", "drain")]
        ),
        1.0
    );
    assert!(home_client.ping(), "drain keeps existing sessions");
    let before = gate.metric("mqgate_connections_total", &[("node", &home)]);
    let landed = fresh_clients(listen, admin, "during-drain", 30);
    assert!(
        !landed.contains(&home),
        "no new client lands on the drained node"
    );
    assert_eq!(
        gate.metric("mqgate_connections_total", &[("node", &home)]),
        before
    );
    // A client whose sticky entry points to the drained node still goes there and
    // finds its session.
    home_client.disconnect();
    let (c, ack) = Client::accepted(listen, &persistent("home")).expect("reconnect");
    assert!(ack.session_present, "back on {home} with its session");
    assert_eq!(sticky_node(admin, "home").as_deref(), Some(home.as_str()));
    c.disconnect();

    set_node_state(admin, &home, "ready");
    let landed = fresh_clients(listen, admin, "after-ready", 30);
    assert!(
        landed.contains(&home),
        "ready again: {home} takes new clients"
    );
}

#[test]
fn maint_closes_sessions_and_takes_none() {
    let dir = tempdir();
    let (nodes, gate, listen, admin) = dynsec_fleet(dir.path());
    let (mut c, _) = Client::accepted(listen, &persistent("m-client")).expect("client");
    let home = sticky_node(admin, "m-client").expect("entry");

    set_node_state(admin, &home, "maint");
    assert!(
        c.closed_within(T),
        "maint closes the sessions through {home}"
    );
    assert!(
        nodes.iter().all(|m| m.is_running()),
        "the broker itself is still running"
    );
    // The client comes back elsewhere; its entry is rewritten.
    let (c, _) = Client::accepted(listen, &persistent("m-client")).expect("reconnect");
    let now = sticky_node(admin, "m-client").expect("entry");
    assert_ne!(now, home, "maint takes no clients, not even sticky ones");
    c.disconnect();
    let landed = fresh_clients(listen, admin, "during-maint", 30);
    assert!(!landed.contains(&home));
    assert_eq!(
        gate.metric(
            "mqgate_node_admin_state",
            &[("node", &home), ("state", "maint")]
        ),
        1.0
    );

    set_node_state(admin, &home, "ready");
    let landed = fresh_clients(listen, admin, "after-maint", 30);
    assert!(
        landed.contains(&home),
        "ready again: {home} takes new clients"
    );
}

#[test]
fn maint_on_the_full_sync_leader() {
    let dir = tempdir();
    let m1 = Mosquitto::start("node1", dir.path());
    let (gate, listen) = Gate::start_with(dir.path(), "gate", |listen, admin| {
        gate_config(
            listen,
            admin,
            "full-sync",
            &[("node1", m1.address())],
            "",
            "",
            "",
        )
    });
    let admin = gate.admin_port;
    wait_until(T, "node1 leader", || {
        gate.metric("mqgate_node_leader", &[("node", "node1")]) == 1.0
    });
    let (mut c, _) = Client::accepted(listen, &Connect::new("fs")).expect("client");

    // drain: the leader keeps its sessions but takes no new client: a new client is
    // held (queue_timeout) and routed as soon as the leader is ready again.
    set_node_state(admin, "node1", "drain");
    assert!(c.ping());
    let held = std::thread::spawn(move || Client::connect(listen, &Connect::new("fs-held")));
    wait_until(T, "the new client is held", || {
        gate.metric("mqgate_queued_connections", &[]) == 1.0
    });
    set_node_state(admin, "node1", "ready");
    let (_, ack) = held.join().expect("client thread").expect("CONNACK");
    assert_eq!(ack.code, 0, "routed once the leader is ready again");
    set_node_state(admin, "node1", "drain");

    // maint: no leader, sessions closed; a new client is held, then closed without a
    // CONNACK when queue_timeout (5 s) runs out.
    set_node_state(admin, "node1", "maint");
    assert!(c.closed_within(T));
    assert_eq!(gate.metric("mqgate_node_leader", &[]), 0.0);
    let got = Client::connect(listen, &Connect::new("fs-new"));
    assert!(got.is_err(), "no CONNACK: {:?}", got.map(|(_, a)| a));
    assert_eq!(
        gate.metric("mqgate_queue_total", &[("result", "timeout")]),
        1.0
    );

    set_node_state(admin, "node1", "ready");
    assert_eq!(gate.metric("mqgate_node_leader", &[("node", "node1")]), 1.0);
    Client::accepted(listen, &Connect::new("fs-back")).expect("accepted again");
}
