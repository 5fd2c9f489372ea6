//! Fan-out sessions (`[[clusters.X.fanout]]`, docs/fanout.md): a backend service
//! matched by a rule connects once through mqgate and is connected to every node of a
//! dynsec cluster. Three real Mosquitto nodes; devices connect straight to the nodes
//! (each sees only its own node); backends are paho-mqtt processes (MQTT 3.1.1 and 5)
//! and raw sockets.
//!
//! Needs python3 with paho-mqtt (integration/test installs it).

use crate::common::fleet::addresses;
use crate::common::tools::{clients_dir, paho_python};
use crate::common::*;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
const RULE: &str = "[[clusters.brokers.fanout]]\nclients = \"backend-*\"\n";

/// A paho backend process (tests/clients/paho_backend.py) and what it printed.
pub(crate) struct Backend {
    pub(crate) id: String,
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<String>>,
}

impl Backend {
    fn start(port: u16, id: &str, filter: &str, qos: u8, version: &str) -> Backend {
        Self::start_with(port, id, filter, qos, version, &[])
    }

    /// With extra arguments (`once`: no reconnect after a disconnect).
    pub(crate) fn start_with(
        port: u16,
        id: &str,
        filter: &str,
        qos: u8,
        version: &str,
        extra: &[&str],
    ) -> Backend {
        let mut c = paho_python();
        c.arg(clients_dir().join("paho_backend.py"))
            .args([
                "127.0.0.1",
                &port.to_string(),
                id,
                filter,
                &qos.to_string(),
                version,
            ])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap_or_else(|e| panic!("start {id}: {e}"));
        let out: Arc<Mutex<String>> = Arc::default();
        if let Some(o) = child.stdout.take() {
            collect(o, Arc::clone(&out));
        }
        if let Some(e) = child.stderr.take() {
            collect(e, Arc::clone(&out));
        }
        let stdin = child.stdin.take();
        Backend {
            id: id.to_string(),
            child,
            stdin,
            out,
        }
    }

    pub(crate) fn output(&self) -> String {
        self.out.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn count(&self, prefix: &str) -> usize {
        self.output()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    /// Payloads received, in order.
    pub(crate) fn payloads(&self) -> Vec<String> {
        self.output()
            .lines()
            .filter(|l| l.starts_with("MSG "))
            .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
            .collect()
    }

    fn publish(&mut self, qos: u8, topic: &str, payload: &str) {
        if let Some(s) = self.stdin.as_mut() {
            writeln!(s, "PUB {qos} {topic} {payload}").expect("backend stdin");
            s.flush().expect("backend stdin");
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(r: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            let mut g = into.lock().unwrap_or_else(|p| p.into_inner());
            g.push_str(&line);
            g.push('\n');
        }
    });
}

fn fanout_gate(dir: &std::path::Path, nodes: &[Mosquitto], rule: &str) -> (Gate, u16) {
    let (gate, listen) = Gate::start_with(dir, "gate", |listen, admin| {
        gate_config(listen, admin, "dynsec", &addresses(nodes), "", "", rule)
    });
    for n in nodes {
        gate.wait_node_up(&n.name);
    }
    (gate, listen)
}

/// Devices connected straight to their node, subscribed to `cmd/<id>`.
fn devices(nodes: &[Mosquitto], per_node: usize) -> Vec<(String, Client)> {
    let mut out = Vec::new();
    for (n, m) in nodes.iter().enumerate() {
        for k in 0..per_node {
            let id = format!("dev-{}", n * per_node + k);
            let v5 = k % 2 == 1;
            let (mut c, _) = Client::accepted(m.port, &Connect::new(&id).v5(v5)).expect("device");
            c.subscribe(&format!("cmd/{id}")).expect("device subscribe");
            out.push((id, c));
        }
    }
    out
}

/// Every PUBLISH a device receives until it has seen `until` (all of them), in order.
fn receive_until(c: &mut Client, until: &HashSet<String>) -> Vec<String> {
    let mut got = Vec::new();
    let mut seen = HashSet::new();
    while !until.is_subset(&seen) {
        let (_, payload) = c.next_publish(T).expect("device receives its commands");
        let p = String::from_utf8_lossy(&payload).to_string();
        seen.insert(p.clone());
        got.push(p);
    }
    got
}

#[test]
fn backends_see_every_device_and_reach_each_once() {
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 3);
    let (gate, listen) = fanout_gate(dir.path(), &nodes, RULE);
    let mut backends = [
        Backend::start(listen, "backend-v3", "tele/#", 1, "3.1.1"),
        Backend::start(listen, "backend-v5", "tele/#", 1, "5"),
    ];
    wait_until(T, "both backends connected and subscribed", || {
        backends.iter().all(|b| b.count("SUBSCRIBED 1") == 1)
    });
    assert_eq!(
        gate.metric("mqgate_fanout_sessions", &[("cluster", "brokers")]),
        2.0
    );
    for n in ["node1", "node2", "node3"] {
        assert_eq!(
            gate.metric(
                "mqgate_fanout_upstreams",
                &[("cluster", "brokers"), ("node", n)]
            ),
            2.0,
            "each backend is connected to {n}"
        );
    }
    // Each node sees both backends as clients of its own.
    let mut devs = devices(&nodes, 3);
    const N: usize = 20;
    for (id, c) in devs.iter_mut() {
        for k in 0..N {
            c.publish(&format!("tele/{id}"), format!("{id}/{k}").as_bytes())
                .expect("device publish");
        }
    }
    let want: HashSet<String> = devs
        .iter()
        .flat_map(|(id, _)| (0..N).map(move |k| format!("{id}/{k}")))
        .collect();
    for b in &backends {
        wait_until(T, &format!("{} has every device's telemetry", b.id), || {
            want.is_subset(&b.payloads().into_iter().collect())
        });
        // Per device (one node each), its messages arrive in order.
        let mut last: HashMap<String, usize> = HashMap::new();
        for p in b.payloads() {
            let (dev, k) = p.split_once('/').expect("payload dev/k");
            let k: usize = k.parse().expect("k");
            if let Some(prev) = last.insert(dev.to_string(), k) {
                assert!(k >= prev, "{}: {dev} in order", b.id);
            }
        }
    }
    // Each backend sends every device a command, then a last marker: a device has
    // received each command exactly once when it has both markers.
    for b in backends.iter_mut() {
        let bid = b.id.clone();
        for (id, _) in &devs {
            b.publish(1, &format!("cmd/{id}"), &format!("go-{bid}"));
        }
        for (id, _) in &devs {
            b.publish(1, &format!("cmd/{id}"), &format!("end-{bid}"));
        }
    }
    let until: HashSet<String> = ["end-backend-v3", "end-backend-v5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (id, c) in devs.iter_mut() {
        let got = receive_until(c, &until);
        for b in ["backend-v3", "backend-v5"] {
            let n = got.iter().filter(|p| **p == format!("go-{b}")).count();
            assert_eq!(n, 1, "{id} gets {b}'s command exactly once: {got:?}");
        }
    }
    // Every client PUBLISH was acknowledged once (after all three nodes acked).
    wait_until(T, "the backends' publishes acknowledged", || {
        backends
            .iter()
            .all(|b| b.count("PUBLISHED") == 2 * devs.len())
    });
    let to_node: f64 = ["node1", "node2", "node3"]
        .iter()
        .map(|n| {
            gate.metric(
                "mqgate_fanout_messages_total",
                &[
                    ("cluster", "brokers"),
                    ("node", n),
                    ("direction", "to_node"),
                ],
            )
        })
        .sum();
    assert_eq!(
        to_node,
        (2 * 2 * 3 * devs.len()) as f64,
        "each command to 3 nodes"
    );
}

#[test]
fn a_node_restarted_empty_gets_the_subscriptions_back() {
    let dir = tempdir();
    let mut nodes = Mosquitto::start_nodes(dir.path(), 3);
    let (gate, listen) = fanout_gate(dir.path(), &nodes, RULE);
    let mut backends = [
        Backend::start(listen, "backend-v3", "tele/#", 1, "3.1.1"),
        Backend::start(listen, "backend-v5", "tele/#", 1, "5"),
    ];
    wait_until(T, "both backends subscribed", || {
        backends.iter().all(|b| b.count("SUBSCRIBED 1") == 1)
    });
    let up = |n: &str| {
        gate.metric(
            "mqgate_fanout_upstreams",
            &[("cluster", "brokers"), ("node", n)],
        )
    };
    // node2 dies: the backends' sessions go on over node1 and node3.
    nodes[1].stop();
    wait_until(T, "node2's upstreams dropped", || up("node2") == 0.0);
    assert_eq!((up("node1"), up("node3")), (2.0, 2.0));
    // It comes back empty (no persistence): mqgate connects the sessions again and
    // replays their subscriptions there.
    nodes[1].resume();
    wait_until(T, "the backends reconnected to node2", || {
        up("node2") == 2.0
    });
    for b in &backends {
        assert_eq!(b.count("CONNECTED"), 1, "{} never reconnected", b.id);
        assert_eq!(b.count("DISCONNECTED"), 0, "{} stayed connected", b.id);
    }
    // A device on node2 reaches both backends. Its first probes may precede the
    // replayed SUBSCRIBE on the broker: it probes until one arrives.
    let (mut dev, _) = Client::accepted(nodes[1].port, &Connect::new("dev-late")).expect("device");
    dev.subscribe("cmd/dev-late").expect("device subscribe");
    let mut k = 0;
    wait_until(T, "a probe from node2 reaches both backends", || {
        k += 1;
        dev.publish("tele/dev-late", format!("probe-{k}").as_bytes())
            .expect("probe");
        backends
            .iter()
            .all(|b| b.payloads().iter().any(|p| p.starts_with("probe-")))
    });
    dev.publish("tele/dev-late", b"after-restart")
        .expect("device publish");
    for b in &backends {
        wait_until(T, &format!("{} receives node2's device", b.id), || {
            b.payloads().iter().any(|p| p == "after-restart")
        });
    }
    // And a command from each backend reaches the device on node2 once.
    for b in backends.iter_mut() {
        let p = format!("go-{}", b.id);
        b.publish(1, "cmd/dev-late", &p);
    }
    let until: HashSet<String> = ["go-backend-v3", "go-backend-v5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    receive_until(&mut dev, &until);
}

/// QoS 2 both ways: devices publish at QoS 2 (mosquitto_pub) and the backends
/// subscribe at QoS 2; the backends publish at QoS 2 and get one PUBCOMP each.
#[test]
fn qos2_end_to_end() {
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 3);
    let (_gate, listen) = fanout_gate(dir.path(), &nodes, RULE);
    let mut backends = [
        Backend::start(listen, "backend-v3", "tele/#", 2, "3.1.1"),
        Backend::start(listen, "backend-v5", "tele/#", 2, "5"),
    ];
    wait_until(T, "both backends subscribed at QoS 2", || {
        backends.iter().all(|b| b.count("SUBSCRIBED 2") == 1)
    });
    let mut sent = Vec::new();
    for (i, m) in nodes.iter().enumerate() {
        for k in 0..5 {
            let payload = format!("q2-{i}-{k}");
            publish(m.port, 2, &format!("tele/n{i}"), &payload);
            sent.push(payload);
        }
    }
    for b in &backends {
        wait_until(T, &format!("{} has every QoS 2 message", b.id), || {
            let got = b.payloads();
            sent.iter().all(|p| got.contains(p))
        });
        let got = b.payloads();
        for p in &sent {
            assert_eq!(
                got.iter().filter(|g| *g == p).count(),
                1,
                "{}: {p} exactly once",
                b.id
            );
        }
    }
    // Backends → a device on each node, at QoS 2.
    let mut devs = devices(&nodes, 1);
    for b in backends.iter_mut() {
        let p = format!("go-{}", b.id);
        for (id, _) in &devs {
            b.publish(2, &format!("cmd/{id}"), &p);
        }
    }
    let until: HashSet<String> = ["go-backend-v3", "go-backend-v5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (id, c) in devs.iter_mut() {
        let got = receive_until(c, &until);
        assert_eq!(got.len(), 2, "{id}: {got:?}");
    }
    wait_until(T, "each QoS 2 PUBLISH completed once (PUBCOMP)", || {
        backends.iter().all(|b| b.count("PUBLISHED") == devs.len())
    });
}

/// A backend that does not read: the nodes' QoS 1 messages take all 65,535 packet
/// identifiers of its connection, then mqgate stops reading the nodes (backpressure)
/// until the backend acknowledges; nothing is lost.
#[test]
fn packet_id_exhaustion_and_a_slow_reader() {
    let dir = tempdir();
    let opts = MosquittoOpts {
        extra: "max_inflight_messages 0\nmax_queued_messages 0\n".into(),
        ..Default::default()
    };
    let nodes: Vec<Mosquitto> = (1..=3)
        .map(|i| Mosquitto::start_with(&format!("node{i}"), dir.path(), opts.clone()))
        .collect();
    let (gate, listen) = fanout_gate(dir.path(), &nodes, RULE);
    let mut b =
        crate::common::mqtt::session(listen, &Connect::new("backend-raw")).expect("backend");
    b.write_all(&subscribe_v311(1, "tele/#", 1))
        .expect("subscribe");
    let (t, _) = crate::common::mqtt::read_packet(&mut b).expect("SUBACK");
    assert_eq!(t, 0x90);
    const PER_NODE: usize = 23_000;
    let total = 3 * PER_NODE;
    // Each node gets its messages from a raw publisher that pipelines QoS 1.
    let pubs: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let port = m.port;
            std::thread::spawn(move || {
                let mut s = raw_session(port, &format!("pub-{i}"));
                let mut r = s.try_clone().expect("clone");
                let reader = std::thread::spawn(move || {
                    let mut n = 0;
                    while n < PER_NODE {
                        match crate::common::mqtt::read_packet(&mut r) {
                            Ok((0x40, _)) => n += 1,
                            Ok(_) => {}
                            Err(e) => panic!("publisher {i}: {e} after {n} PUBACKs"),
                        }
                    }
                });
                let mut out = Vec::new();
                for k in 0..PER_NODE {
                    let mut body = mqtt_field(format!("tele/n{i}").as_bytes());
                    body.extend_from_slice(&((k % 65_535) as u16 + 1).to_be_bytes());
                    body.extend_from_slice(format!("{i}-{k}").as_bytes());
                    out.extend(mqtt_packet(0x32, &body));
                    if out.len() > 64 * 1024 {
                        s.write_all(&out).expect("publish");
                        out.clear();
                    }
                }
                s.write_all(&out).expect("publish");
                reader.join().expect("publisher reader");
            })
        })
        .collect();
    for p in pubs {
        p.join().expect("publisher");
    }
    // Read without acknowledging: exactly 65,535 PUBLISHes with distinct ids arrive.
    let mut ids = HashSet::new();
    let mut payloads = HashSet::new();
    let read_pub = |b: &mut std::net::TcpStream| -> Option<(u16, String)> {
        match crate::common::mqtt::read_packet(b) {
            Ok((t, body)) if t >> 4 == 3 => {
                let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                let id = u16::from_be_bytes([body[2 + tl], body[3 + tl]]);
                Some((id, String::from_utf8_lossy(&body[4 + tl..]).to_string()))
            }
            Ok((t, _)) => panic!("unexpected packet {t:#04x}"),
            Err(_) => None,
        }
    };
    while ids.len() < 65_535 {
        let (id, p) = read_pub(&mut b).expect("a PUBLISH while ids are free");
        assert!(ids.insert(id), "id {id} given twice while in flight");
        payloads.insert(p);
    }
    assert!(!ids.contains(&0));
    // Nothing more until an id is freed.
    b.set_read_timeout(Some(Duration::from_secs(2))).ok();
    assert!(read_pub(&mut b).is_none(), "a 65,536th PUBLISH in flight");
    b.set_read_timeout(Some(Duration::from_secs(30))).ok();
    // Acknowledge everything: the rest arrives, ids reused.
    let mut acks = Vec::new();
    for id in &ids {
        acks.extend_from_slice(&[0x40, 2]);
        acks.extend_from_slice(&id.to_be_bytes());
    }
    b.write_all(&acks).expect("PUBACKs");
    while payloads.len() < total {
        let (id, p) = read_pub(&mut b)
            .unwrap_or_else(|| panic!("only {} of {total} messages arrived", payloads.len()));
        b.write_all(&[0x40, 2, (id >> 8) as u8, id as u8])
            .expect("PUBACK");
        payloads.insert(p);
    }
    assert_eq!(payloads.len(), total, "nothing lost");
    let merged: f64 = ["node1", "node2", "node3"]
        .iter()
        .map(|n| {
            gate.metric(
                "mqgate_fanout_messages_total",
                &[
                    ("cluster", "brokers"),
                    ("node", n),
                    ("direction", "to_client"),
                ],
            )
        })
        .sum();
    assert!(merged >= total as f64, "{merged} merged");
}

/// Bad input from a fan-out client: a clean close, a counter, a debug line; the
/// other fan-out sessions go on.
#[test]
fn bad_packets_from_a_fanout_client_close_it_cleanly() {
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 3);
    let (gate, listen) = fanout_gate(dir.path(), &nodes, RULE);
    let mut good = Client::accepted(listen, &Connect::new("backend-good"))
        .expect("backend")
        .0;
    good.subscribe("tele/#").expect("subscribe");
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "5-byte remaining length",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            "malformed",
        ),
        (
            "SUBSCRIBE with bad options",
            mqtt_packet(0x82, &[0, 1, 0, 1, b'a', 0x07]),
            "malformed",
        ),
        ("a second CONNECT", connect_v311("backend-x"), "protocol"),
        (
            "PUBLISH larger than max_packet_size",
            {
                let mut body = mqtt_field(b"tele/big");
                body.resize(2 * 1024 * 1024, b'x');
                mqtt_packet(0x30, &body)
            },
            "too_large",
        ),
    ];
    for (i, (what, bytes, reason)) in cases.iter().enumerate() {
        let before = gate.metric(
            "mqgate_fanout_closes_total",
            &[("cluster", "brokers"), ("reason", reason)],
        );
        let mut s = raw_session(listen, &format!("backend-bad{i}"));
        let _ = s.write_all(bytes);
        let (_, ended) = read_to_close(&mut s, T);
        assert_ne!(ended, Ended::Open, "{what}: closed");
        if *reason != "too_large" {
            assert_eq!(ended, Ended::Eof, "{what}: a clean close");
        }
        wait_until(T, &format!("{what} counted as {reason}"), || {
            gate.metric(
                "mqgate_fanout_closes_total",
                &[("cluster", "brokers"), ("reason", reason)],
            ) == before + 1.0
        });
    }
    gate.wait_log("fan-out client sent a malformed SUBSCRIBE: closed");
    gate.wait_log("fan-out client sent a packet a client may not send here: closed");
    // The other session is untouched.
    assert!(good.ping(), "the good backend still answers");
    publish(nodes[2].port, 1, "tele/x", "still-here");
    let (_, p) = good.next_publish(T).expect("good backend receives");
    assert_eq!(p, b"still-here");
}

#[test]
fn check_refuses_bad_fanout_rules() {
    let dir = tempdir();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        r#"
[[listeners]]
name = "a"
bind = "127.0.0.1:0"
cluster = "fs"

[[listeners]]
name = "b"
bind = "127.0.0.1:0"
cluster = "dy"

[clusters.fs]
mode = "full-sync"
nodes = [ { name = "n1", address = "127.0.0.1:1883" } ]
[[clusters.fs.fanout]]
clients = "backend-*"

[clusters.dy]
mode = "dynsec"
nodes = [ { name = "n1", address = "127.0.0.1:1883" } ]
[[clusters.dy.fanout]]
clients = "backend-[0-9]"
[[clusters.dy.fanout]]
username = "svc-*"
publish = "some"
[[clusters.dy.fanout]]
clients = "x-*"
username = "y"
[[clusters.dy.fanout]]
clients = "z-*"
publish = "one"
publish_all_topics = ["a/#/b"]
"#,
    )
    .expect("write");
    let (code, _, err) = mqgate_check(&file);
    assert_eq!(code, Some(1), "{err}");
    for key in [
        "clusters.fs.fanout",
        "clusters.dy.fanout[0].clients",
        "clusters.dy.fanout[1].publish",
        "clusters.dy.fanout[2].clients",
        "clusters.dy.fanout[3].publish_all_topics[0]",
    ] {
        assert!(err.contains(key), "names {key}:\n{err}");
    }
    // The good form passes.
    std::fs::write(
        &file,
        "[[listeners]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\ncluster = \"dy\"\n[clusters.dy]\nmode = \"dynsec\"\nnodes = [ { name = \"n1\", address = \"127.0.0.1:1883\" } ]\n[[clusters.dy.fanout]]\nclients = \"backend-*\"\npublish = \"one\"\npublish_all_topics = [\"cmd/#\"]\n",
    )
    .expect("write");
    let (code, out, err) = mqgate_check(&file);
    assert_eq!(code, Some(0), "{out}{err}");
}

/// A rule added by a reload applies to the next connections; a client connected
/// before keeps its single-node session.
#[test]
fn a_reload_adds_a_rule_for_new_connections() {
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 3);
    let (gate, listen) = fanout_gate(dir.path(), &nodes, "");
    let text = |rule: &str| {
        gate_config(
            listen,
            gate.admin_port,
            "dynsec",
            &addresses(&nodes),
            "",
            "",
            rule,
        )
    };
    let (mut before, _) = Client::accepted(listen, &Connect::new("backend-early")).expect("early");
    assert_eq!(
        gate.metric("mqgate_fanout_sessions", &[("cluster", "brokers")]),
        0.0,
        "no rule yet: an ordinary session"
    );
    gate.reload_with(&text(RULE));
    let (mut after, _) = Client::accepted(listen, &Connect::new("backend-late")).expect("late");
    after.subscribe("tele/#").expect("subscribe");
    assert_eq!(
        gate.metric("mqgate_fanout_sessions", &[("cluster", "brokers")]),
        1.0
    );
    assert!(before.ping(), "the earlier session goes on");
    for m in &nodes {
        publish(m.port, 1, "tele/x", &m.name);
    }
    let mut got: Vec<String> = (0..3)
        .map(|_| {
            let (_, p) = after.next_publish(T).expect("from every node");
            String::from_utf8_lossy(&p).to_string()
        })
        .collect();
    got.sort();
    assert_eq!(got, ["node1", "node2", "node3"]);
    // And a reload that removes it leaves the running fan-out session alone.
    gate.reload_with(&text(""));
    assert!(after.ping(), "the fan-out session survives the reload");
}
