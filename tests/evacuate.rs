//! Paced evacuation (`POST /api/v1/clusters/{c}/nodes/{n}/evacuate`) and the polite
//! close of MQTT 5 clients (`[clusters.X.shaping] close_rate`): 300 clients, half MQTT
//! 5, all on one real Mosquitto node, each running a QoS 1 loop-back stream through
//! mqgate; the node is evacuated at 100 sessions a second. Seen from the clients: the
//! closes are spread out in time, every v5 client gets DISCONNECT 0x9C first, every
//! client comes back on another node and no QoS 1 message of theirs is lost; the
//! sticky table points to the new nodes. Also: SIGTERM tells v5 clients 0x8B.

use crate::common::admin::set_node_state;
use crate::common::fleet::addresses;
use crate::common::*;
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);
const CLIENTS: usize = 300;
/// Messages each client sends after it came back.
const AFTER: u32 = 3;

/// What one client saw.
struct Seen {
    id: String,
    v5: bool,
    /// The reason of a DISCONNECT from the server before the close.
    disconnect: Option<u8>,
    closed_at: Instant,
    sent: u32,
    echoed: BTreeSet<u32>,
}

fn publish_qos1(c: &mut Client, topic: &str, id: u16, payload: &[u8]) -> Result<(), String> {
    let mut body = Vec::new();
    body.extend(mqtt_field(topic.as_bytes()));
    body.extend_from_slice(&id.to_be_bytes());
    if c.v5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    c.s.write_all(&mqtt_packet(0x32, &body))
        .map_err(|e| format!("send PUBLISH: {e}"))
}

/// Publish `n` at QoS 1 on `topic` (which the client subscribes to) and read until its
/// PUBACK and its echo arrived. Err(Some(reason)) when a DISCONNECT came, Err(None)
/// on a close.
fn exchange(
    c: &mut Client,
    topic: &str,
    n: u32,
    echoed: &mut BTreeSet<u32>,
) -> Result<(), Option<u8>> {
    if publish_qos1(c, topic, (n % 60000 + 1) as u16, n.to_string().as_bytes()).is_err() {
        return Err(None);
    }
    let (mut acked, mut echo) = (false, false);
    while !(acked && echo) {
        match c.read_packet(T) {
            Ok((t, b)) if t >> 4 == 4 => acked = acked || b.len() >= 2,
            Ok((t, b)) if t >> 4 == 3 => {
                let tl = u16::from_be_bytes([b[0], b[1]]) as usize;
                let id = [b[2 + tl], b[3 + tl]];
                let _ = c.s.write_all(&[0x40, 0x02, id[0], id[1]]);
                let mut i = 4 + tl;
                if c.v5 {
                    i += 1 + b[i] as usize;
                }
                if let Some(m) = std::str::from_utf8(&b[i..])
                    .ok()
                    .and_then(|s| s.parse().ok())
                {
                    echoed.insert(m);
                    echo = echo || m == n;
                }
            }
            Ok((0xE0, b)) => return Err(Some(b.first().copied().unwrap_or(0))),
            Ok(_) => {}
            Err(_) => return Err(None),
        }
    }
    Ok(())
}

/// Wait up to `d` for the server to close (or send DISCONNECT).
fn idle(c: &mut Client, d: Duration) -> Result<(), Option<u8>> {
    match c.read_packet(d) {
        Err(e) if e.contains("timed out") => Ok(()),
        Ok((0xE0, b)) => Err(Some(b.first().copied().unwrap_or(0))),
        Ok(_) => Ok(()),
        Err(_) => Err(None),
    }
}

fn device(port: u16, i: usize, ready: Arc<Barrier>) -> Seen {
    let v5 = i.is_multiple_of(2);
    let id = format!("evac-{i}");
    let topic = format!("evac/{id}");
    let connect = Connect::new(&id).v5(v5).persistent();
    let (mut c, _) = Client::accepted(port, &connect).unwrap_or_else(|e| panic!("{id}: {e}"));
    c.subscribe(&topic).unwrap_or_else(|e| panic!("{id}: {e}"));
    ready.wait();
    let mut echoed = BTreeSet::new();
    let mut n = 0;
    // Stream until the gateway closes the session.
    let disconnect = loop {
        let r = exchange(&mut c, &topic, n, &mut echoed)
            .and_then(|()| idle(&mut c, Duration::from_millis(300)));
        match r {
            Ok(()) => n += 1,
            Err(reason) => {
                // Past a DISCONNECT the server closes: read to the end.
                let _ = c.closed_within(Duration::from_secs(10));
                break reason;
            }
        }
    };
    let closed_at = Instant::now();
    // Come back (a busy answer or a refused connect: retry) and resend what was not
    // confirmed (QoS 1), then a few more.
    let deadline = Instant::now() + T;
    let mut c = loop {
        assert!(Instant::now() < deadline, "{id} could not reconnect");
        if let Ok((c, _)) = Client::accepted(port, &connect) {
            break c;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    c.subscribe(&topic)
        .unwrap_or_else(|e| panic!("{id} resubscribe: {e}"));
    let last = n + AFTER;
    while n <= last {
        exchange(&mut c, &topic, n, &mut echoed)
            .unwrap_or_else(|e| panic!("{id}: closed again after reconnecting ({e:?})"));
        n += 1;
    }
    c.disconnect();
    Seen {
        id,
        v5,
        disconnect,
        closed_at,
        sent: n,
        echoed,
    }
}

#[test]
fn evacuation_closes_paced_tells_v5_clients_and_loses_no_qos1_message() {
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 3);
    let shaping = "[clusters.brokers.shaping]\nclose_rate = 100\n";
    let (gate, port) = Gate::start_with(dir.path(), "gate", |l, a| {
        gate_config(l, a, "dynsec", &addresses(&nodes), "", "", shaping)
    });
    for n in ["node1", "node2", "node3"] {
        gate.wait_node_up(n);
    }
    // Everyone on node1.
    set_node_state(gate.admin_port, "node2", "drain");
    set_node_state(gate.admin_port, "node3", "drain");
    let ready = Arc::new(Barrier::new(CLIENTS + 1));
    let devices: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let ready = Arc::clone(&ready);
            std::thread::spawn(move || device(port, i, ready))
        })
        .collect();
    ready.wait();
    assert_eq!(
        gate.metric("mqgate_connections_active", &[("node", "node1")]),
        CLIENTS as f64
    );
    set_node_state(gate.admin_port, "node2", "ready");
    set_node_state(gate.admin_port, "node3", "ready");

    // The command line's evacuate (POST .../nodes/node1/evacuate {"rate":100}).
    let admin = format!("http://127.0.0.1:{}", gate.admin_port);
    let out = mqgate(&[
        "node", "evacuate", "brokers", "node1", "--rate", "100", "--admin", &admin,
    ]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("closing 300 session(s) at 100/s"), "{said}");
    // Progress shows in `mqgate status` while it runs.
    wait_until(T, "the evacuation's progress in mqgate status", || {
        let out = mqgate(&["status", "--admin", &admin]);
        String::from_utf8_lossy(&out.stdout).contains("maint, closing sessions")
    });

    let seen: Vec<Seen> = devices
        .into_iter()
        .map(|h| h.join().expect("device thread"))
        .collect();
    // Spread: the closes, as the clients saw them, take at least 2.5 s (300 at 100/s).
    let first = seen.iter().map(|s| s.closed_at).min().expect("clients");
    let last = seen.iter().map(|s| s.closed_at).max().expect("clients");
    assert!(
        last - first >= Duration::from_millis(2500),
        "closes spread over {:?} only",
        last - first
    );
    for s in &seen {
        if s.v5 {
            assert_eq!(s.disconnect, Some(0x9C), "{} got no DISCONNECT 0x9C", s.id);
        } else {
            assert_eq!(
                s.disconnect, None,
                "{}: 3.1.1 clients get a plain close",
                s.id
            );
        }
        let all: BTreeSet<u32> = (0..s.sent).collect();
        assert_eq!(s.echoed, all, "{} lost QoS 1 messages", s.id);
        let node = sticky_node(gate.admin_port, &s.id);
        assert!(
            matches!(node.as_deref(), Some("node2" | "node3")),
            "{}: sticky entry {node:?}",
            s.id
        );
    }
    // Everyone came back elsewhere.
    let elsewhere: f64 = ["node2", "node3"]
        .iter()
        .map(|n| gate.metric("mqgate_connections_total", &[("node", n)]))
        .sum();
    assert!(
        elsewhere >= CLIENTS as f64,
        "{elsewhere} reconnects elsewhere"
    );
    assert_eq!(
        gate.metric("mqgate_connections_total", &[("node", "node1")]),
        CLIENTS as f64
    );
    assert_eq!(
        gate.metric(
            "mqgate_disconnects_sent_total",
            &[("reason", "use_another_server")]
        ),
        (CLIENTS / 2) as f64
    );
    assert_eq!(
        gate.metric("mqgate_paced_close_lanes_left", &[("node", "node1")]),
        0.0
    );
    // A second evacuation of a node in maint is refused; cancel answers.
    let (status, _) = http(
        "POST",
        gate.admin_port,
        "/api/v1/clusters/brokers/nodes/node1/evacuate",
        Some("{\"rate\": 100}"),
        None,
    )
    .expect("admin API answers");
    assert_eq!(status, 409);
    let (status, body) = http(
        "DELETE",
        gate.admin_port,
        "/api/v1/clusters/brokers/nodes/node1/evacuate",
        None,
        None,
    )
    .expect("admin API answers");
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(answer["cancelled"], false, "{body}");
}

#[test]
fn sigterm_closes_paced_over_the_grace_and_tells_v5_clients_server_shutting_down() {
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 1);
    let sections =
        "[clusters.brokers.shaping]\nclose_rate = 1\n\n[limits]\nshutdown_grace = \"3s\"\n";
    let (mut gate, port) = Gate::start_with(dir.path(), "gate", |l, a| {
        gate_config(l, a, "dynsec", &addresses(&nodes), "", "", sections)
    });
    gate.wait_node_up("node1");
    let clients: Vec<Client> = (0..40)
        .map(|i| {
            let c = Connect::new(&format!("bye-{i}")).v5(i % 4 != 3);
            Client::accepted(port, &c)
                .unwrap_or_else(|e| panic!("client {i}: {e}"))
                .0
        })
        .collect();
    gate.signal("TERM");
    let watchers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let said = match c.read_packet(T) {
                    Ok((0xE0, b)) => b.first().copied(),
                    _ => None,
                };
                assert!(c.closed_within(T), "closed at shutdown");
                (c.v5, said, Instant::now())
            })
        })
        .collect();
    let seen: Vec<_> = watchers
        .into_iter()
        .map(|h| h.join().expect("watcher"))
        .collect();
    for (v5, said, _) in &seen {
        if *v5 {
            assert_eq!(*said, Some(0x8B), "MQTT 5: DISCONNECT 0x8B first");
        } else {
            assert_eq!(*said, None, "3.1.1: plain close");
        }
    }
    // Paced: 40 sessions over about 2.4 s of the 3 s grace, not all at once.
    let first = seen.iter().map(|s| s.2).min().expect("clients");
    let last = seen.iter().map(|s| s.2).max().expect("clients");
    assert!(
        last - first >= Duration::from_secs(1),
        "closes spread over {:?} only",
        last - first
    );
    assert_eq!(gate.wait_exit(T), Some(0));
}

#[test]
fn rebalance_moves_clients_to_a_node_added_by_reload() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 4);
    let cluster = "balance = \"least-conn\"";
    let listen = free_port();
    let admin = free_port();
    let text = |n: usize| {
        gate_config(
            listen,
            admin,
            "dynsec",
            &addresses(&nodes[..n]),
            cluster,
            "",
            "[clusters.brokers.shaping]\nclose_rate = 100\n",
        )
    };
    let gate = Gate::start(dir.path(), "gate", &text(3), admin);
    for n in ["node1", "node2", "node3"] {
        gate.wait_node_up(n);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(CLIENTS + 1));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (stop, ready) = (Arc::clone(&stop), Arc::clone(&ready));
            std::thread::spawn(move || {
                let connect = Connect::new(&format!("rb-{i}")).v5(i.is_multiple_of(2));
                let (mut c, _) = Client::accepted(listen, &connect).expect("client");
                ready.wait();
                let mut moved = 0;
                while !stop.load(Ordering::SeqCst) {
                    if idle(&mut c, Duration::from_millis(200)).is_err() {
                        let _ = c.closed_within(Duration::from_secs(10));
                        moved += 1;
                        let deadline = Instant::now() + T;
                        c = loop {
                            assert!(Instant::now() < deadline, "rb-{i} could not reconnect");
                            if let Ok((c, _)) = Client::accepted(listen, &connect) {
                                break c;
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        };
                    }
                }
                c.disconnect();
                moved
            })
        })
        .collect();
    ready.wait();
    gate.reload_with(&text(4));
    gate.wait_node_up("node4");
    assert_eq!(
        gate.metric("mqgate_connections_active", &[("node", "node4")]),
        0.0,
        "a node added later starts empty"
    );
    let said = crate::common::admin::cli_rebalance(admin, &["--rate", "100"]);
    assert!(said.contains("moving clients at 100/s"), "{said}");
    // Converged: every node within 20 % of the mean (75), everyone connected.
    wait_until(T, "per-node counts within the tolerance", || {
        let counts: Vec<f64> = ["node1", "node2", "node3", "node4"]
            .iter()
            .map(|n| gate.metric("mqgate_connections_active", &[("node", n)]))
            .collect();
        counts.iter().sum::<f64>() == CLIENTS as f64
            && counts.iter().all(|c| (*c - 75.0).abs() <= 15.0)
    });
    stop.store(true, Ordering::SeqCst);
    let moved: usize = clients
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .sum();
    assert!(moved > 0 && moved < CLIENTS, "{moved} clients moved");
}

/// Brokers over TLS (`[clusters.X.tls]`) take the same polite relay: an MQTT 5 client
/// of an evacuated node gets DISCONNECT 0x9C before the close, and comes back on the
/// other node through TLS.
#[test]
fn evacuation_tells_v5_clients_of_a_tls_broker_use_another_server() {
    let dir = tempdir();
    let d = dir.path();
    let pki = Pki::new("broker CA");
    let brokers: Vec<(String, Mosquitto)> = ["b1", "b2"]
        .iter()
        .map(|n| {
            let (_, cert, key) = pki.write_server(d, n);
            let extra = format!("certfile {}\nkeyfile {}\n", cert.display(), key.display());
            let m = Mosquitto::start_with(
                n,
                d,
                MosquittoOpts {
                    extra,
                    ..Default::default()
                },
            );
            (n.to_string(), m)
        })
        .collect();
    let ca = d.join("b1-ca.pem");
    let nodes: Vec<(&str, String)> = brokers
        .iter()
        .map(|(n, m)| (n.as_str(), m.address()))
        .collect();
    let sections = format!(
        "[clusters.brokers.shaping]\nclose_rate = 10\n\n[clusters.brokers.tls]\nca = \"{}\"\n",
        ca.display()
    );
    let (gate, port) = Gate::start_with(d, "gate", |l, a| {
        gate_config(l, a, "dynsec", &nodes, "", "", &sections)
    });
    gate.wait_node_up("b1");
    gate.wait_node_up("b2");
    set_node_state(gate.admin_port, "b2", "drain");
    let connect = Connect::new("tls-evac").v5(true);
    let (mut c, _) = Client::accepted(port, &connect).expect("v5 client through mqgate");
    c.subscribe("tls/evac")
        .expect("subscribe over the TLS broker");
    assert_eq!(
        gate.metric("mqgate_connections_active", &[("node", "b1")]),
        1.0
    );
    set_node_state(gate.admin_port, "b2", "ready");
    let (status, body) = http(
        "POST",
        gate.admin_port,
        "/api/v1/clusters/brokers/nodes/b1/evacuate",
        Some("{\"rate\": 10}"),
        None,
    )
    .expect("admin API answers");
    assert_eq!(status, 200, "{body}");
    let got = c.read_packet(T).expect("a packet before the close");
    assert_eq!(got.0, 0xE0, "a DISCONNECT, got {got:?}");
    assert_eq!(got.1.first().copied(), Some(0x9C), "reason 0x9C: {got:?}");
    assert!(c.closed_within(T), "closed after the DISCONNECT");
    let (mut c, _) = Client::accepted(port, &connect).expect("reconnect");
    c.subscribe("tls/evac")
        .expect("subscribe on the other node");
    assert_eq!(
        gate.metric("mqgate_connections_active", &[("node", "b2")]),
        1.0
    );
    assert_eq!(
        gate.metric(
            "mqgate_disconnects_sent_total",
            &[("reason", "use_another_server")]
        ),
        1.0
    );
    c.disconnect();
}

/// An evacuation rewrites the sticky entries of the node's clients before it closes
/// their sessions: right after the request every entry names another node (spread over
/// both), and each client that comes back lands on the node its entry named.
#[test]
fn evacuation_rewrites_sticky_entries_before_the_close() {
    const N: usize = 6;
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 3);
    let shaping = "[clusters.brokers.shaping]\nclose_rate = 2\n";
    let (gate, port) = Gate::start_with(dir.path(), "gate", |l, a| {
        gate_config(l, a, "dynsec", &addresses(&nodes), "", "", shaping)
    });
    for n in ["node1", "node2", "node3"] {
        gate.wait_node_up(n);
    }
    set_node_state(gate.admin_port, "node2", "drain");
    set_node_state(gate.admin_port, "node3", "drain");
    let mut clients: Vec<(String, Client)> = (0..N)
        .map(|i| {
            let id = format!("sticky-evac-{i}");
            let connect = Connect::new(&id).v5(true).persistent();
            let (c, _) = Client::accepted(port, &connect).expect("client through mqgate");
            (id, c)
        })
        .collect();
    for (id, _) in &clients {
        assert_eq!(sticky_node(gate.admin_port, id).as_deref(), Some("node1"));
    }
    set_node_state(gate.admin_port, "node2", "ready");
    set_node_state(gate.admin_port, "node3", "ready");
    let (status, body) = http(
        "POST",
        gate.admin_port,
        "/api/v1/clusters/brokers/nodes/node1/evacuate",
        Some("{\"rate\": 2}"),
        None,
    )
    .expect("admin API answers");
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(answer["sticky_moved"], N, "{body}");
    // Before the clients reconnect: every entry already names its new node.
    let intended: Vec<String> = clients
        .iter()
        .map(|(id, _)| sticky_node(gate.admin_port, id).unwrap_or_default())
        .collect();
    for (node, (id, _)) in intended.iter().zip(&clients) {
        assert!(
            node == "node2" || node == "node3",
            "{id}: sticky entry {node:?} right after the request"
        );
    }
    assert!(intended.iter().any(|n| n == "node2") && intended.iter().any(|n| n == "node3"));
    for (id, c) in clients.iter_mut() {
        assert!(c.closed_within(T), "{id}: session closed by the evacuation");
    }
    for ((id, _), node) in clients.iter().zip(&intended) {
        let connect = Connect::new(id).v5(true).persistent();
        let (c, _) = Client::accepted(port, &connect).expect("reconnect");
        c.disconnect();
        assert_eq!(
            sticky_node(gate.admin_port, id).as_deref(),
            Some(node.as_str()),
            "{id} came back on the node its entry named"
        );
    }
    for n in ["node2", "node3"] {
        let want = intended.iter().filter(|i| *i == n).count() as f64;
        assert_eq!(
            gate.metric("mqgate_connections_total", &[("node", n)]),
            want,
            "reconnects on {n}"
        );
    }
}
