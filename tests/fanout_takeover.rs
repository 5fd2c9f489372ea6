//! Fan-out sessions and client ids (issue 28, docs/fanout.md "One session per client
//! id", "Held while no node is up"): a second backend with the same client id takes
//! the id over instead of fighting the first over the nodes — on one gateway always,
//! across gateways with `single_live`; and a backend that arrives while no node is up
//! is held up to `queue_timeout`, like any client.
//!
//! Three real Mosquitto nodes; backends are paho-mqtt processes (MQTT 5 and 3.1.1)
//! started with `once` (no reconnect of their own); devices connect straight to a node.

use crate::common::fleet::addresses;
use crate::common::mqtt::read_packet;
use crate::common::*;
use crate::fanout::Backend;
use std::collections::HashSet;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
const RULE: &str = "[[clusters.brokers.fanout]]\nclients = \"backend-*\"\n";

fn closes(gate: &Gate, reason: &str) -> f64 {
    gate.metric(
        "mqgate_fanout_closes_total",
        &[("cluster", "brokers"), ("reason", reason)],
    )
}

fn backend(port: u16, id: &str, version: &str) -> Backend {
    let b = Backend::start_with(port, id, "tele/#", 1, version, &["once"]);
    wait_until(
        T,
        &format!("{id} ({version}) connected and subscribed"),
        || b.count("SUBSCRIBED") == 1,
    );
    b
}

/// Publish one message from a device on each node (`round` in the payload) and wait
/// until `b` has all of them.
fn every_node_reaches(b: &Backend, nodes: &[Mosquitto], round: usize) {
    let mut want = HashSet::new();
    for n in nodes {
        let id = format!("dev-{}-{round}", n.name);
        let (mut dev, _) = Client::accepted(n.port, &Connect::new(&id)).expect("device");
        let payload = format!("{}/{round}", n.name);
        dev.publish(&format!("tele/{id}"), payload.as_bytes())
            .expect("device publish");
        want.insert(payload);
        dev.disconnect();
    }
    wait_until(
        T,
        &format!("{} has round {round} from every node", b.id),
        || want.is_subset(&b.payloads().into_iter().collect()),
    );
}

/// The first backend is closed as taken over (MQTT 5: DISCONNECT 0x8E first), the
/// second keeps every node and is not disconnected.
fn second_backend_takes_over(version: &str) {
    let dir = tempdir();
    let d = dir.path();
    let nodes = Mosquitto::start_nodes(d, 3);
    let (gate, listen, file) = crate::fanout_access::gate_with_access_log(d, &nodes);
    let id = format!("backend-twin{}", version.replace('.', ""));
    let old = backend(listen, &id, version);
    every_node_reaches(&old, &nodes, 0);
    let new = backend(listen, &id, version);
    wait_until(T, "the first backend is disconnected", || {
        old.count("DISCONNECTED") == 1
    });
    if version == "5" {
        assert!(
            old.output().contains("DISCONNECTED Session taken over"),
            "MQTT 5: DISCONNECT 0x8E \"session taken over\"; got:\n{}",
            old.output()
        );
    }
    let line = crate::common::wait_line(&file, &[&format!("client_id={id} ")], T);
    assert!(line.contains("close=taken_over"), "{line}");
    // The second one stays, connected to every node: nothing fights over the id.
    for round in 1..=3 {
        every_node_reaches(&new, &nodes, round);
        for n in &nodes {
            assert_eq!(
                gate.metric(
                    "mqgate_fanout_upstreams",
                    &[("cluster", "brokers"), ("node", &n.name)]
                ),
                1.0,
                "round {round}: one session connected to {}",
                n.name
            );
        }
    }
    assert_eq!(new.count("DISCONNECTED"), 0, "{}", new.output());
    assert_eq!(new.count("CONNECTED"), 1, "{}", new.output());
    assert_eq!(
        gate.metric("mqgate_fanout_sessions", &[("cluster", "brokers")]),
        1.0
    );
    assert_eq!(closes(&gate, "taken_over"), 1.0);
    assert_eq!(closes(&gate, "no_node"), 0.0);
}

#[test]
fn a_second_mqtt5_backend_with_the_same_id_takes_over_on_one_gateway() {
    second_backend_takes_over("5");
}

#[test]
fn a_second_mqtt311_backend_with_the_same_id_takes_over_on_one_gateway() {
    second_backend_takes_over("3.1.1");
}

/// The client id of a CONNECT body (MQTT 3.1.1 or 5) and its protocol level.
fn connect_id(body: &[u8]) -> Option<(String, u8)> {
    let name = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let mut at = 2 + name;
    let level = *body.get(at)?;
    at += 4; // level, flags, keep-alive
    if level == 5 {
        let (len, used) = crate::common::mqtt::varint(body.get(at..)?)?;
        at += used + len;
    }
    let n = usize::from(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]));
    let id = body.get(at + 2..at + 2 + n)?;
    Some((String::from_utf8_lossy(id).into_owned(), level))
}

/// A stand-in node for what Mosquitto 2.0.11 does not do: it accepts every CONNECT
/// (CONNACK 0), answers SUBSCRIBE (QoS 1 granted) and PINGREQ, and keeps the
/// connections of client `id`, so that the test can send one DISCONNECT 0x8E "session
/// taken over" as a broker that announces its takeovers does (Mosquitto 2.0.11 closes
/// the older connection without a word, MQTT 5 or not). Returns its port and the
/// connections of `id` it accepted.
fn announcing_node(id: &'static str) -> (u16, Arc<Mutex<Vec<TcpStream>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind the stand-in node");
    let port = l.local_addr().expect("its address").port();
    let kept: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let keep = kept.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let keep = keep.clone();
            std::thread::spawn(move || {
                while let Ok((first, body)) = read_packet(&mut c) {
                    let reply: Vec<u8> = match first >> 4 {
                        1 => {
                            let Some((cid, level)) = connect_id(&body) else {
                                break;
                            };
                            if cid == id {
                                if let Ok(dup) = c.try_clone() {
                                    keep.lock().unwrap_or_else(|p| p.into_inner()).push(dup);
                                }
                            }
                            if level == 5 {
                                vec![0x20, 0x03, 0x00, 0x00, 0x00]
                            } else {
                                vec![0x20, 0x02, 0x00, 0x00]
                            }
                        }
                        8 if body.len() >= 2 => vec![0x90, 0x04, body[0], body[1], 0x00, 0x01],
                        12 => vec![0xD0, 0x00],
                        14 => break,
                        _ => continue,
                    };
                    if c.write_all(&reply).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, kept)
}

/// A node that ends the session's connection with DISCONNECT 0x8E (another
/// connection took the id there): the session does not reconnect it and fight, it
/// ends as taken over; its other node connections are closed.
#[test]
fn a_node_that_says_taken_over_ends_the_session() {
    const ID: &str = "backend-announced";
    let dir = tempdir();
    let d = dir.path();
    let nodes = Mosquitto::start_nodes(d, 2);
    let (port, kept) = announcing_node(ID);
    let mut all = addresses(&nodes);
    all.push(("node3", format!("127.0.0.1:{port}")));
    let (gate, listen) = Gate::start_with(d, "gate", |listen, admin| {
        gate_config(listen, admin, "dynsec", &all, "", "check = \"tcp\"\n", RULE)
    });
    for (n, _) in &all {
        gate.wait_node_up(n);
    }
    let b = backend(listen, ID, "5");
    let taken = || kept.lock().unwrap_or_else(|p| p.into_inner()).len();
    assert_eq!(taken(), 1, "connected to the stand-in node once");
    let mut conn = kept
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .expect("its connection");
    conn.write_all(&[0xE0, 0x02, 0x8E, 0x00])
        .expect("DISCONNECT 0x8E");
    let _ = conn.shutdown(std::net::Shutdown::Both);
    wait_until(T, "the backend is disconnected", || {
        b.count("DISCONNECTED") == 1
    });
    assert!(
        b.output().contains("DISCONNECTED Session taken over"),
        "{}",
        b.output()
    );
    assert_eq!(closes(&gate, "taken_over"), 1.0);
    wait_until(T, "the session is gone", || {
        gate.metric("mqgate_fanout_sessions", &[("cluster", "brokers")]) == 0.0
    });
    for (n, _) in &all {
        wait_until(T, &format!("no connection to {n} left"), || {
            gate.metric(
                "mqgate_fanout_upstreams",
                &[("cluster", "brokers"), ("node", n)],
            ) == 0.0
        });
    }
    assert_eq!(taken(), 0, "the stand-in node was not connected again");
}

/// Two gateways linked as peers with `single_live`, on different nodes (gate-a:
/// node1 and node2, gate-b: node3), so that no broker's takeover can close the older
/// session: only gate-b's LIVE announcement can.
#[test]
fn single_live_closes_the_older_fanout_session_through_another_gateway() {
    let dir = tempdir();
    let d = dir.path();
    let nodes = Mosquitto::start_nodes(d, 3);
    let reach = [&nodes[0..2], &nodes[2..3]];
    let gates = pair::start(
        d,
        [addresses(reach[0]), addresses(reach[1])],
        &format!("[clusters.brokers.sessions]\nsingle_live = true\n\n{RULE}"),
        false,
    );
    let ((a, a_listen), (b, b_listen)) = (&gates[0], &gates[1]);
    for (k, (version, id)) in [("5", "backend-peer5"), ("3.1.1", "backend-peer3")]
        .into_iter()
        .enumerate()
    {
        let old = backend(*a_listen, id, version);
        every_node_reaches(&old, &nodes[0..2], 0);
        let new = backend(*b_listen, id, version);
        wait_until(T, &format!("{id}: the backend on gate-a is closed"), || {
            old.count("DISCONNECTED") == 1
        });
        if version == "5" {
            assert!(
                old.output().contains("DISCONNECTED Session taken over"),
                "MQTT 5: DISCONNECT 0x8E; got:\n{}",
                old.output()
            );
        }
        assert_eq!(closes(a, "taken_over"), (k + 1) as f64, "{id}");
        every_node_reaches(&new, &nodes[2..3], 1);
        assert_eq!(new.count("DISCONNECTED"), 0, "{id}: {}", new.output());
        assert_eq!(closes(b, "taken_over"), 0.0, "{id}");
    }
    assert_eq!(
        a.metric("mqgate_session_takeovers_total", &[("cluster", "brokers")]),
        2.0
    );
}

/// `queue_timeout` holds a fan-out backend that arrives while every node is down
/// (counted in `mqgate_queued_connections`) until a node starts; a gateway with a
/// short one refuses it as before (`no_node_reply = "close"`: a plain close).
#[test]
fn a_fanout_backend_is_held_until_a_node_starts_within_queue_timeout() {
    let dir = tempdir();
    let d = dir.path();
    let mut nodes = Mosquitto::start_nodes(d, 3);
    let start = |name: &str, timeout: &str| {
        let (gate, listen) = Gate::start_with(d, name, |listen, admin| {
            gate_config(
                listen,
                admin,
                "dynsec",
                &addresses(&nodes),
                &format!("queue_timeout = \"{timeout}\"\n"),
                "",
                RULE,
            )
        });
        for n in &nodes {
            gate.wait_node_up(&n.name);
        }
        (gate, listen)
    };
    let (long, long_listen) = start("gate-long", "60s");
    let (short, short_listen) = start("gate-short", "300ms");
    for n in nodes.iter_mut() {
        n.stop();
    }
    for g in [&long, &short] {
        for n in &nodes {
            wait_until(T, &format!("{} down", n.name), || {
                g.metric("mqgate_node_up", &[("node", &n.name)]) == 0.0
            });
        }
    }

    // Short queue_timeout, no node: refused as before.
    let refused = crate::common::mqtt::session(short_listen, &Connect::new("backend-short"));
    assert!(refused.is_err(), "refused with no node");
    wait_until(T, "the refusal counted", || {
        short.metric(
            "mqgate_connections_rejected_total",
            &[("listener", "mqtt"), ("reason", "no_node")],
        ) == 1.0
    });
    assert_eq!(
        short.metric(
            "mqgate_queue_total",
            &[("cluster", "brokers"), ("result", "timeout")]
        ),
        1.0
    );

    // Long queue_timeout: held, then connected once a node starts.
    let b = Backend::start_with(long_listen, "backend-held", "tele/#", 1, "5", &["once"]);
    wait_until(T, "the backend is held", || {
        long.metric("mqgate_queued_connections", &[("cluster", "brokers")]) == 1.0
    });
    assert_eq!(b.count("CONNECTED"), 0, "{}", b.output());
    nodes[1].resume();
    wait_until(T, "the held backend connected and subscribed", || {
        b.count("SUBSCRIBED") == 1
    });
    assert!(
        b.output().contains("CONNECTED Success 0"),
        "CONNACK 0; got:\n{}",
        b.output()
    );
    assert_eq!(
        long.metric(
            "mqgate_queue_total",
            &[("cluster", "brokers"), ("result", "routed")]
        ),
        1.0
    );
    assert_eq!(
        long.metric("mqgate_queued_connections", &[("cluster", "brokers")]),
        0.0
    );
    every_node_reaches(&b, &nodes[1..2], 0);
    // The other nodes, started later, are connected too.
    nodes[0].resume();
    nodes[2].resume();
    for n in &nodes {
        wait_until(T, &format!("the session connected to {}", n.name), || {
            long.metric(
                "mqgate_fanout_upstreams",
                &[("cluster", "brokers"), ("node", &n.name)],
            ) == 1.0
        });
    }
    every_node_reaches(&b, &nodes, 1);
    assert_eq!(b.count("DISCONNECTED"), 0, "{}", b.output());
}
