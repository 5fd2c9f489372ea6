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
struct Backend {
    id: String,
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<String>>,
}

impl Backend {
    fn start(port: u16, id: &str, filter: &str, qos: u8, version: &str) -> Backend {
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

    fn output(&self) -> String {
        self.out.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn count(&self, prefix: &str) -> usize {
        self.output()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    /// Payloads received, in order.
    fn payloads(&self) -> Vec<String> {
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
    for n in &nodes[..] {
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
                assert!(k > prev || k == prev, "{}: {dev} in order", b.id);
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
