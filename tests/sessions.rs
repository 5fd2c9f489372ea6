//! Packet-aware sessions in dynsec mode (`[clusters.X.sessions] restore_subscriptions`):
//! subscriptions survive a node's death. Three real Mosquitto nodes, 12 paho-mqtt
//! devices (half MQTT 3.1.1 clean session 0, half MQTT 5 with a session expiry) that
//! subscribe once and auto-reconnect. The node holding most of them is killed
//! (SIGKILL) — or put in `maint`, or a rebalance moves some — and after they have reconnected through mqgate to
//! nodes that never saw them, a backend publishes at QoS 1 on every live node directly:
//! every device must receive its command. Clients that keep no session stay on the
//! byte relay.
//!
//! Needs python3 with paho-mqtt (integration/test installs it).

use crate::common::admin::{set_node_state, status_json};
use crate::common::fleet::addresses;
use crate::common::mqtt::read_packet;
use crate::common::paho::{transcripts, Device};
use crate::common::*;
use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
const DEVICES: usize = 12;

const SESSIONS: &str = "[clusters.brokers.sessions]\nrestore_subscriptions = true\n";
const WITH_ORPHANS: &str =
    "[clusters.brokers.sessions]\nrestore_subscriptions = true\nclean_orphans = true\n";

/// How devices are moved: the node holding most of them leaves, or a rebalance moves
/// those whose hash owner is a node that was drained while they connected.
#[derive(Clone, Copy, Debug)]
enum Leave {
    Killed,
    Maint,
    Rebalance,
}

fn survive(leave: Leave) {
    let dir = tempdir();
    let mut nodes = Mosquitto::start_nodes(dir.path(), 3);
    let (gate, listen) = Gate::start_with(dir.path(), "gate", |listen, admin| {
        gate_config(
            listen,
            admin,
            "dynsec",
            &addresses(&nodes),
            "",
            "",
            WITH_ORPHANS,
        )
    });
    for n in ["node1", "node2", "node3"] {
        gate.wait_node_up(n);
    }
    let admin = gate.admin_port;
    if let Leave::Rebalance = leave {
        // node3 takes nobody while the devices connect: it is the node a rebalance
        // fills (`balance = "hash"`, the default).
        set_node_state(admin, "node3", "drain");
    }

    // 1. The devices connect through mqgate and subscribe once.
    let devices: Vec<Device> = (0..DEVICES).map(|i| Device::start(listen, i)).collect();
    wait_until(T, "every device subscribed", || {
        devices.iter().all(|d| d.count("SUBSCRIBED") == 1)
    });
    wait_until(T, "mqgate stores the 12 subscriptions", || {
        gate.metric("mqgate_session_subscriptions", &[("cluster", "brokers")]) == DEVICES as f64
    });
    assert_eq!(
        gate.metric(
            "mqgate_relay_connections_total",
            &[("cluster", "brokers"), ("mode", "packet")]
        ),
        DEVICES as f64,
        "persistent clients take the packet-aware relay"
    );
    assert_eq!(status_json(admin)["clusters"][0]["subscriptions"], DEVICES);
    // The admin API shows a device's stored subscription.
    let (status, body) = http(
        "GET",
        admin,
        "/api/v1/clusters/brokers/sticky/dev-1",
        None,
        None,
    )
    .expect("admin");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["subscriptions"][0]["topic"], "cmd/dev-1", "{body}");
    assert_eq!(v["subscriptions"][0]["qos"], 1, "{body}");

    // 2. The node with the most devices leaves, or a rebalance moves some.
    let home: HashMap<String, String> = devices
        .iter()
        .map(|d| {
            let n = sticky_node(admin, &d.id).unwrap_or_else(|| panic!("sticky entry {}", d.id));
            (d.id.clone(), n)
        })
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for n in home.values() {
        *counts.entry(n.as_str()).or_default() += 1;
    }
    let (mut victim, mut moved) = counts
        .iter()
        .max_by_key(|(_, c)| **c)
        .map(|(n, c)| (n.to_string(), *c))
        .unwrap_or_default();
    let vi = nodes.iter().position(|m| m.name == victim).unwrap_or(0);
    match leave {
        Leave::Killed => nodes[vi].stop(),
        Leave::Maint => set_node_state(admin, &victim, "maint"),
        Leave::Rebalance => {
            assert!(
                !counts.contains_key("node3"),
                "node3 was drained: {counts:?}"
            );
            set_node_state(admin, "node3", "ready");
            let out = mqgate(&[
                "cluster",
                "rebalance",
                "brokers",
                "--rate",
                "20",
                "--admin",
                &format!("http://127.0.0.1:{admin}"),
            ]);
            let said = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                out.status.success() && said.contains("moving clients at 20/s"),
                "{said}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // The moved devices' sticky entries were rewritten to node3 before their
            // sessions were closed.
            victim = "node3".to_string();
            moved = devices
                .iter()
                .filter(|d| sticky_node(admin, &d.id).as_deref() == Some("node3"))
                .count();
        }
    }
    assert!(moved > 0, "{leave:?}: no device to move");
    // The devices that move: those of the node that left, or those rebalanced.
    let moves = |d: &Device| match leave {
        Leave::Rebalance => home[&d.id] != sticky_node(admin, &d.id).unwrap_or_default(),
        _ => home[&d.id] == victim,
    };
    let moving: Vec<bool> = devices.iter().map(moves).collect();
    assert_eq!(moving.iter().filter(|m| **m).count(), moved);

    // 3. Its devices reconnect through mqgate to nodes that have no session for them;
    // mqgate replays their subscriptions before letting their traffic through.
    wait_until(T, "moved devices reconnected and restored", || {
        gate.metric(
            "mqgate_session_replays_total",
            &[("cluster", "brokers"), ("result", "done")],
        ) >= moved as f64
    });
    for (d, _) in devices.iter().zip(&moving).filter(|(_, m)| **m) {
        assert!(
            d.count("CONNECTED") >= 2,
            "{} reconnected:\n{}",
            d.id,
            d.output()
        );
        assert_eq!(d.count("SUBSCRIBED"), 1, "{} subscribed only once", d.id);
        let now = sticky_node(admin, &d.id).unwrap_or_default();
        match leave {
            Leave::Rebalance => {
                assert_eq!(now, "node3", "{} moved to node3", d.id);
                // MQTT 5 devices were told why (paho prints the server's reason).
                if d.id
                    .trim_start_matches("dev-")
                    .parse::<usize>()
                    .unwrap_or(0)
                    % 2
                    == 1
                {
                    assert!(
                        d.output().contains("DISCONNECTED Use another server"),
                        "{} told DISCONNECT 0x9C:\n{}",
                        d.id,
                        d.output()
                    );
                }
            }
            _ => assert!(
                !now.is_empty() && now != victim,
                "{} moved off {victim}",
                d.id
            ),
        }
    }
    for (d, _) in devices.iter().zip(&moving).filter(|(_, m)| !**m) {
        assert_eq!(
            d.count("CONNECTED"),
            1,
            "{} did not move:\n{}",
            d.id,
            d.output()
        );
    }
    assert_eq!(
        gate.metric(
            "mqgate_session_replays_total",
            &[("cluster", "brokers"), ("result", "failed")]
        ),
        0.0
    );

    // 4. The backend publishes each device's command at QoS 1 on every live node.
    let live = |m: &&Mosquitto| match leave {
        Leave::Rebalance => true,
        _ => m.is_running() && m.name != victim,
    };
    for m in nodes.iter().filter(live) {
        let (mut c, _) = Client::accepted(m.port, &Connect::new(&format!("backend-{}", m.name)))
            .expect("backend");
        for d in &devices {
            c.publish(&format!("cmd/{}", d.id), format!("go-{}", d.id).as_bytes())
                .expect("backend publish");
        }
        c.disconnect();
    }
    wait_until(T, "every device received its command", || {
        devices.iter().all(|d| d.received(&format!("go-{}", d.id)))
    });
    let _ = transcripts(&devices);

    // 5. clean_orphans: the sessions the moved devices left on a node that is still
    // reachable (maint) are removed there.
    if let Leave::Maint = leave {
        wait_until(T, "orphaned sessions removed", || {
            gate.metric(
                "mqgate_session_orphans_total",
                &[("cluster", "brokers"), ("result", "done")],
            ) >= moved as f64
        });
        let old = &nodes[vi];
        for (d, _) in devices.iter().zip(&moving).filter(|(_, m)| **m) {
            let v5 =
                d.id.trim_start_matches("dev-")
                    .parse::<usize>()
                    .unwrap_or(0)
                    % 2
                    == 1;
            let (c, ack) = Client::accepted(old.port, &Connect::new(&d.id).v5(v5).clean(false))
                .expect("direct connect to the old node");
            assert!(
                !ack.session_present,
                "{}: no session left on {victim}",
                d.id
            );
            c.disconnect();
        }
    }
}

#[test]
fn subscriptions_survive_a_killed_node() {
    survive(Leave::Killed);
}

#[test]
fn subscriptions_survive_a_node_put_in_maint() {
    survive(Leave::Maint);
}

/// `mqgate cluster rebalance` moves persistent clients with their subscriptions.
#[test]
fn subscriptions_move_with_a_rebalance() {
    survive(Leave::Rebalance);
}

/// Clients that keep no session never take the packet layer: the byte relay carries
/// them, and a persistent client's clean restart drops what mqgate stored for it.
#[test]
fn clean_session_clients_keep_the_byte_relay() {
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 2);
    let (gate, listen) = Gate::start_with(dir.path(), "gate", |listen, admin| {
        gate_config(
            listen,
            admin,
            "dynsec",
            &addresses(&nodes),
            "",
            "",
            SESSIONS,
        )
    });
    gate.wait_node_up("node1");
    gate.wait_node_up("node2");
    let (mut c, _) = Client::accepted(listen, &Connect::new("plain")).expect("clean client");
    c.subscribe("x/plain").expect("subscribe");
    c.disconnect();
    let (mut p, _) =
        Client::accepted(listen, &Connect::new("keeper").clean(false)).expect("persistent client");
    p.subscribe("x/keeper").expect("subscribe");
    wait_until(T, "the persistent client's subscription stored", || {
        gate.metric("mqgate_session_subscriptions", &[("cluster", "brokers")]) == 1.0
    });
    p.disconnect();
    let byte = |mode: &str| {
        gate.metric(
            "mqgate_relay_connections_total",
            &[("cluster", "brokers"), ("mode", mode)],
        )
    };
    assert_eq!(byte("byte"), 1.0);
    assert_eq!(byte("packet"), 1.0);
    // The same id with a clean session: the broker drops the session, so does mqgate
    // (once the broker accepted it: this one connection takes the packet path).
    let (c, _) = Client::accepted(listen, &Connect::new("keeper")).expect("clean restart");
    c.disconnect();
    wait_until(T, "stored subscriptions dropped", || {
        gate.metric("mqgate_session_subscriptions", &[("cluster", "brokers")]) == 0.0
    });
    assert_eq!(byte("packet"), 2.0);
    // Nothing stored any more: clean sessions of that id are bytes again.
    let (c, _) = Client::accepted(listen, &Connect::new("keeper")).expect("clean again");
    c.disconnect();
    assert_eq!(byte("byte"), 2.0);
}

/// Two nodes and a gateway with `sessions` (plus `extra` lines in that table).
fn two_nodes(dir: &std::path::Path, extra: &str) -> (Vec<Mosquitto>, Gate, u16) {
    let nodes = Mosquitto::start_nodes(dir, 2);
    let (gate, listen) = Gate::start_with(dir, "gate", |listen, admin| {
        gate_config(
            listen,
            admin,
            "dynsec",
            &addresses(&nodes),
            "",
            "",
            &format!("{SESSIONS}{extra}"),
        )
    });
    gate.wait_node_up("node1");
    gate.wait_node_up("node2");
    (nodes, gate, listen)
}

/// What the client sends right behind its CONNECT is held while mqgate replays, then
/// forwarded: the client sees the broker's CONNACK, then the SUBACK of its own packet
/// id, and never a SUBACK of the replay; both the replayed and the new subscription
/// deliver on the new node.
#[test]
fn a_pipelined_subscribe_waits_for_the_replay() {
    let dir = tempdir();
    let (nodes, gate, listen) = two_nodes(dir.path(), "");
    let admin = gate.admin_port;
    let (mut c, _) =
        Client::accepted(listen, &Connect::new("pipe").clean(false)).expect("first connection");
    c.subscribe("old/topic").expect("subscribe");
    wait_until(T, "subscription stored", || {
        gate.metric("mqgate_session_subscriptions", &[("cluster", "brokers")]) == 1.0
    });
    c.disconnect();
    let home = sticky_node(admin, "pipe").expect("sticky entry");
    set_node_state(admin, &home, "maint");
    let other = nodes.iter().find(|m| m.name != home).expect("another node");

    let mut s = tcp(listen);
    let mut first = Connect::new("pipe").clean(false).bytes();
    first.extend(subscribe_v311(7, "new/topic", 1));
    s.write_all(&first)
        .expect("CONNECT + SUBSCRIBE in one write");
    let (t, body) = read_packet(&mut s).expect("CONNACK");
    assert_eq!(
        (t, body.as_slice()),
        (0x20, &[0u8, 0][..]),
        "the broker's CONNACK, session-present 0"
    );
    let (t, body) = read_packet(&mut s).expect("SUBACK");
    assert_eq!(t, 0x90);
    assert_eq!(
        &body[..2],
        &7u16.to_be_bytes(),
        "the client's own packet id"
    );
    assert_eq!(
        gate.metric(
            "mqgate_session_replays_total",
            &[("cluster", "brokers"), ("result", "done")]
        ),
        1.0
    );
    let (mut p, _) = Client::accepted(other.port, &Connect::new("backend")).expect("backend");
    p.publish("old/topic", b"one").expect("publish");
    p.publish("new/topic", b"two").expect("publish");
    let mut got = Vec::new();
    for _ in 0..2 {
        let (t, body) = read_packet(&mut s).expect("PUBLISH");
        assert_eq!(
            t >> 4,
            3,
            "only PUBLISHes follow (no replay SUBACK): {t:#x}"
        );
        got.push(body);
    }
    let text: Vec<String> = got
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(text.iter().any(|t| t.contains("old/topic")), "{text:?}");
    assert!(text.iter().any(|t| t.contains("new/topic")), "{text:?}");
}

/// A client flooding SUBSCRIBEs fills only its own share: beyond
/// `max_subscriptions_per_client` the broker still gets them, mqgate stores no more.
/// A malformed SUBSCRIBE is passed to the broker (which closes that client), counted,
/// and nothing is learnt from it.
#[test]
fn floods_hit_the_bound_and_malformed_packets_are_passed_on() {
    let dir = tempdir();
    let (_nodes, gate, listen) = two_nodes(dir.path(), "max_subscriptions_per_client = 5\n");
    let (mut c, _) =
        Client::accepted(listen, &Connect::new("flood").clean(false)).expect("connect");
    for i in 0..20 {
        c.subscribe(&format!("f/{i}"))
            .expect("the broker grants every one");
    }
    wait_until(T, "bound reached", || {
        gate.metric(
            "mqgate_session_subscriptions_dropped_total",
            &[("cluster", "brokers"), ("reason", "client_count")],
        ) == 15.0
    });
    assert_eq!(
        gate.metric("mqgate_session_subscriptions", &[("cluster", "brokers")]),
        5.0
    );
    // QoS 3 in the options byte: malformed.
    let bad = mqtt_packet(0x82, &[0, 9, 0, 1, b'x', 3]);
    c.s.write_all(&bad).expect("send malformed SUBSCRIBE");
    assert!(c.closed_within(T), "the broker closes the client");
    assert_eq!(
        gate.metric(
            "mqgate_session_packets_malformed_total",
            &[("cluster", "brokers"), ("packet", "subscribe")]
        ),
        1.0
    );
    assert_eq!(
        gate.metric("mqgate_session_subscriptions", &[("cluster", "brokers")]),
        5.0
    );
    // Other clients are not disturbed.
    let (mut o, _) = Client::accepted(listen, &Connect::new("other").clean(false)).expect("other");
    o.subscribe("o/1").expect("subscribe");
}

/// `[sessions]` is reloaded like every cluster setting: turned on, the next persistent
/// client takes the packet-aware relay; `check` refuses the table in full-sync.
#[test]
fn sessions_are_reloaded_and_refused_in_full_sync() {
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 1);
    let (listen, admin) = (free_port(), free_port());
    let config = |sections: &str| {
        gate_config(
            listen,
            admin,
            "dynsec",
            &addresses(&nodes),
            "",
            "",
            sections,
        )
    };
    let gate = Gate::start(dir.path(), "gate", &config(""), admin);
    gate.wait_node_up("node1");
    let relayed = |mode: &str| {
        gate.metric(
            "mqgate_relay_connections_total",
            &[("cluster", "brokers"), ("mode", mode)],
        )
    };
    let (c, _) = Client::accepted(listen, &Connect::new("r").clean(false)).expect("connect");
    c.disconnect();
    assert_eq!((relayed("byte"), relayed("packet")), (1.0, 0.0));
    gate.reload_with(&config(SESSIONS));
    let (c, _) = Client::accepted(listen, &Connect::new("r").clean(false)).expect("connect");
    c.disconnect();
    assert_eq!((relayed("byte"), relayed("packet")), (1.0, 1.0));

    let full = dir.path().join("full.toml");
    std::fs::write(
        &full,
        gate_config(
            listen,
            admin,
            "full-sync",
            &addresses(&nodes),
            "",
            "",
            SESSIONS,
        ),
    )
    .expect("write");
    let (code, _, err) = mqgate_check(&full);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("clusters.brokers.sessions"), "{err}");
    assert!(err.contains("dynsec clusters only"), "{err}");
}

/// Stored subscriptions are replicated to peers: a client that subscribed through one
/// gateway, whose node dies, comes back through a second gateway and is restored there.
#[test]
fn a_second_gateway_restores_what_the_first_learnt() {
    let dir = tempdir();
    let mut nodes = Mosquitto::start_nodes(dir.path(), 2);
    let gates = pair::start(
        dir.path(),
        [addresses(&nodes), addresses(&nodes)],
        SESSIONS,
        false,
    );
    let ((a, a_listen), (b, b_listen)) = (&gates[0], &gates[1]);
    let (mut c, _) =
        Client::accepted(*a_listen, &Connect::new("roam").clean(false)).expect("via gate-a");
    c.subscribe("roam/cmd").expect("subscribe");
    wait_until(T, "gate-b knows the subscription", || {
        http(
            "GET",
            b.admin_port,
            "/api/v1/clusters/brokers/sticky/roam",
            None,
            None,
        )
        .is_ok_and(|(s, body)| s == 200 && body.contains("roam/cmd"))
    });
    let home = sticky_node(a.admin_port, "roam").expect("sticky entry");
    let hi = nodes
        .iter()
        .position(|m| m.name == home)
        .expect("home node");
    nodes[hi].stop();
    assert!(c.closed_within(T), "the client is cut off with its node");
    wait_until(T, "gate-b sees the node down", || {
        b.metric("mqgate_node_up", &[("node", &home)]) == 0.0
    });
    let (mut c, ack) =
        Client::accepted(*b_listen, &Connect::new("roam").clean(false)).expect("via gate-b");
    assert!(!ack.session_present, "the new node has no session for it");
    wait_until(T, "gate-b replayed the subscription", || {
        b.metric(
            "mqgate_session_replays_total",
            &[("cluster", "brokers"), ("result", "done")],
        ) == 1.0
    });
    let other = nodes.iter().find(|m| m.name != home).expect("other node");
    let (mut p, _) = Client::accepted(other.port, &Connect::new("backend")).expect("backend");
    p.publish("roam/cmd", b"found").expect("publish");
    let (topic, payload) = c.next_publish(T).expect("the command arrives");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("roam/cmd", &b"found"[..])
    );
}

/// Stored subscriptions are in the sticky snapshot: a gateway restarted gracefully
/// still knows them.
#[test]
fn stored_subscriptions_survive_a_restart_in_the_snapshot() {
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 1);
    let secret = dir.path().join("peers.secret");
    std::fs::write(&secret, "sessions-secret\n").expect("secret");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let snapshot = dir.path().join("sticky.bin");
    let peers = format!(
        "\n[peers]\nname = \"gate-a\"\nbind = \"127.0.0.1:{}\"\nsecret_file = \"{}\"\nsnapshot = \"{}\"\npeers = [ {{ name = \"gate-b\", address = \"127.0.0.1:{}\" }} ]\n",
        free_port(),
        secret.display(),
        snapshot.display(),
        free_port()
    );
    let (mut gate, listen) = Gate::start_with(dir.path(), "gate", |listen, admin| {
        gate_config(
            listen,
            admin,
            "dynsec",
            &addresses(&nodes),
            "",
            "",
            &format!("{SESSIONS}{peers}"),
        )
    });
    gate.wait_node_up("node1");
    let (mut c, _) =
        Client::accepted(listen, &Connect::new("keep").v5(true).clean(false)).expect("connect");
    c.subscribe("keep/me").expect("subscribe");
    c.disconnect();
    wait_until(T, "stored", || {
        gate.metric("mqgate_session_subscriptions", &[("cluster", "brokers")]) == 1.0
    });
    assert_eq!(gate.stop(), Some(0));
    gate.resume();
    let (status, body) = http(
        "GET",
        gate.admin_port,
        "/api/v1/clusters/brokers/sticky/keep",
        None,
        None,
    )
    .expect("admin");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("keep/me"), "{body}");
}
