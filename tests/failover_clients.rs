//! Failover as real client programs live it (issue: "a full-sync failover must not end
//! clients"). mosquitto_sub (MQTT 3.1.1 and 5), a paho-mqtt (Python) application with
//! its default reconnect, a rumqttc application, and MQTT.js's own `mqtt sub` command
//! (3.1.1 and 5) stay subscribed through mqgate while the full-sync leader dies and the
//! next node's listener opens 0.5 s and 3 s later, and while every node of a dynsec
//! cluster restarts. Each must be subscribed again afterwards, receive messages
//! published after the failover, and still be running: mqgate holds clients while no
//! node can take them (`queue_timeout`) and, when the wait runs out, closes instead of
//! answering with a refusing CONNACK that ends these programs.
//!
//! Needs mosquitto-clients, python3 with paho-mqtt, and node with tests/clients'
//! node_modules (integration/test installs them).

use crate::common::tools::{clients_dir, mqtt_js_sub, paho_python};
use crate::common::*;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
const TOPIC: &str = "fo/#";

/// Append every line `r` yields to `into`.
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

/// A subscriber: a child process whose output is collected, or a rumqttc event loop
/// in a thread of this test.
enum Sub {
    Proc {
        name: String,
        child: Child,
        out: Arc<Mutex<String>>,
        err: Arc<Mutex<String>>,
    },
    Rumqttc {
        name: String,
        out: Arc<Mutex<String>>,
        stop: Arc<AtomicBool>,
    },
}

impl Sub {
    fn spawn(name: &str, mut cmd: Command) -> Sub {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({cmd:?}): {e}"));
        let (out, err) = (Arc::default(), Arc::default());
        if let Some(o) = child.stdout.take() {
            collect(o, Arc::clone(&out));
        }
        if let Some(e) = child.stderr.take() {
            collect(e, Arc::clone(&err));
        }
        Sub::Proc {
            name: name.to_string(),
            child,
            out,
            err,
        }
    }

    fn mosquitto_sub(port: u16, version: &str) -> Sub {
        let id = format!("mosquitto-sub-{version}");
        let mut c = Command::new("mosquitto_sub");
        c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", TOPIC])
            .args(["-i", &id, "-v", "-V", version]);
        Sub::spawn(&id, c)
    }

    fn paho(port: u16, version: &str) -> Sub {
        let id = format!("paho-{version}");
        let mut c = paho_python();
        c.arg(clients_dir().join("paho_sub.py")).args([
            "127.0.0.1",
            &port.to_string(),
            &id,
            TOPIC,
            version,
        ]);
        Sub::spawn(&id, c)
    }

    /// MQTT.js's `mqtt sub` command, which ends itself on any client error.
    fn mqtt_js(port: u16, version: u8) -> Sub {
        let id = format!("mqttjs-v{version}");
        let (mut c, bin) = mqtt_js_sub();
        c.arg(bin)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", TOPIC])
            .args(["-i", &id, "-v", "--protocolVersion", &version.to_string()]);
        Sub::spawn(&id, c)
    }

    /// A rumqttc application: subscribe on every CONNACK, print messages, and on an
    /// error wait a second and poll again (rumqttc reconnects on the next poll).
    fn rumqttc(port: u16) -> Sub {
        use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
        let name = "rumqttc".to_string();
        let mut opts = MqttOptions::new(name.clone(), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut conn) = Client::new(opts, 16);
        let out: Arc<Mutex<String>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (o, s) = (Arc::clone(&out), Arc::clone(&stop));
        std::thread::spawn(move || {
            for ev in conn.iter() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let line = match ev {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => {
                        if let Err(e) = client.try_subscribe(TOPIC, QoS::AtMostOnce) {
                            format!("SUBSCRIBE FAILED {e}")
                        } else {
                            format!("CONNECTED {:?}", a.code)
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        format!("MSG {} {}", p.topic, String::from_utf8_lossy(&p.payload))
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        std::thread::sleep(Duration::from_secs(1));
                        format!("ERROR {e}")
                    }
                };
                let mut g = o.lock().unwrap_or_else(|p| p.into_inner());
                g.push_str(&line);
                g.push('\n');
            }
        });
        Sub::Rumqttc { name, out, stop }
    }

    fn name(&self) -> &str {
        match self {
            Sub::Proc { name, .. } | Sub::Rumqttc { name, .. } => name,
        }
    }

    fn output(&self) -> String {
        let (Sub::Proc { out, .. } | Sub::Rumqttc { out, .. }) = self;
        out.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn transcript(&self) -> String {
        let err = match self {
            Sub::Proc { err, .. } => err.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            Sub::Rumqttc { .. } => String::new(),
        };
        format!(
            "--- {} stdout:\n{}--- stderr:\n{err}",
            self.name(),
            self.output()
        )
    }

    /// Has it printed a message whose payload is `payload`?
    fn received(&self, payload: &str) -> bool {
        self.output()
            .lines()
            .any(|l| l.split_whitespace().last() == Some(payload))
    }

    /// Still running (a process that has not exited).
    fn running(&mut self) -> bool {
        match self {
            Sub::Proc { child, .. } => matches!(child.try_wait(), Ok(None)),
            Sub::Rumqttc { .. } => true,
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        match self {
            Sub::Proc { child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Sub::Rumqttc { stop, .. } => stop.store(true, Ordering::SeqCst),
        }
    }
}

fn all_subscribers(port: u16) -> Vec<Sub> {
    vec![
        Sub::mosquitto_sub(port, "mqttv311"),
        Sub::mosquitto_sub(port, "mqttv5"),
        Sub::paho(port, "3.1.1"),
        Sub::paho(port, "5"),
        Sub::rumqttc(port),
        Sub::mqtt_js(port, 4),
        Sub::mqtt_js(port, 5),
    ]
}

/// Publish `round-N` (N = 1, 2, …) to every broker in `ports`, straight (not through
/// mqgate), until every subscriber printed one of them. Brokers that do not take the
/// publisher yet are skipped for that attempt.
fn until_every_subscriber_receives(round: &str, ports: &[u16], subs: &mut [Sub]) {
    let mut n = 0u32;
    let mut got: Vec<Option<String>> = vec![None; subs.len()];
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            T,
            &format!("every subscriber receives a {round} message"),
            || {
                n += 1;
                let payload = format!("{round}-{n}");
                for p in ports {
                    if let Ok((mut c, _)) =
                        Client::accepted(*p, &Connect::new(&format!("pub-{round}")))
                    {
                        let _ = c.publish("fo/check", payload.as_bytes());
                        c.disconnect();
                    }
                }
                for (i, s) in subs.iter().enumerate() {
                    if got[i].is_none() && (1..=n).any(|k| s.received(&format!("{round}-{k}"))) {
                        got[i] = Some(payload.clone());
                    }
                }
                got.iter().all(Option::is_some)
            },
        );
    }));
    if let Err(e) = res {
        for s in subs.iter() {
            eprintln!("{}", s.transcript());
        }
        std::panic::resume_unwind(e);
    }
}

/// None of the programs exited, and none was told "refused" by a CONNACK.
fn none_ended(subs: &mut [Sub]) {
    for s in subs.iter_mut() {
        let running = s.running();
        let t = s.transcript();
        assert!(running, "{} exited:\n{t}", s.name());
        for bad in ["Connection error", "Connection refused", "unavailable"] {
            assert!(!t.contains(bad), "{} saw {bad:?}:\n{t}", s.name());
        }
    }
}

/// Clients closed or refused because no node could take them.
fn refused(gate: &Gate) -> f64 {
    gate.metric(
        "mqgate_connections_rejected_total",
        &[("reason", "no_node")],
    )
}

#[test]
fn full_sync_failover_keeps_every_common_client() {
    let dir = tempdir();
    let mut m1 = Mosquitto::start("node1", dir.path());
    let mut m2 = Mosquitto::start("node2", dir.path());
    m2.stop(); // a follower: its client listener is closed
               // queue_timeout and no_node_reply keep their defaults.
    let nodes = &[("node1", m1.address()), ("node2", m2.address())];
    let (gate, listen) = Gate::start_with(dir.path(), "gate", |listen, admin| {
        gate_config(listen, admin, "full-sync", nodes, "", "", "")
    });
    wait_until(T, "node1 elected leader", || {
        gate.metric("mqgate_node_leader", &[("node", "node1")]) == 1.0
    });
    let mut subs = all_subscribers(listen);
    until_every_subscriber_receives("before", &[m1.port], &mut subs);

    // The leader dies; the next node's listener opens 0.5 s later (an election).
    m1.stop();
    std::thread::sleep(Duration::from_millis(500));
    m2.resume();
    until_every_subscriber_receives("after-first", &[m2.port], &mut subs);
    none_ended(&mut subs);

    // And back, with a 3 s election: clients reconnecting meanwhile are held.
    m2.stop();
    std::thread::sleep(Duration::from_secs(3));
    m1.resume();
    until_every_subscriber_receives("after-second", &[m1.port], &mut subs);
    none_ended(&mut subs);
    assert!(
        gate.metric("mqgate_queue_total", &[("result", "routed")]) >= 1.0,
        "some clients were held and then routed"
    );
    assert_eq!(refused(&gate), 0.0, "no client had to be refused");
}

#[test]
fn dynsec_cluster_restarting_every_node_keeps_every_common_client() {
    let dir = tempdir();
    let mut m1 = Mosquitto::start("node1", dir.path());
    let mut m2 = Mosquitto::start("node2", dir.path());
    let nodes = &[("node1", m1.address()), ("node2", m2.address())];
    let (gate, listen) = Gate::start_with(dir.path(), "gate", |listen, admin| {
        gate_config(listen, admin, "dynsec", nodes, "", "", "")
    });
    for n in ["node1", "node2"] {
        wait_until(T, "both nodes up", || {
            gate.metric("mqgate_node_up", &[("node", n)]) == 1.0
        });
    }
    let mut subs = all_subscribers(listen);
    let ports = [m1.port, m2.port];
    until_every_subscriber_receives("before", &ports, &mut subs);

    // Every node goes down; they come back 2 s later.
    m1.stop();
    m2.stop();
    std::thread::sleep(Duration::from_secs(2));
    m1.resume();
    m2.resume();
    until_every_subscriber_receives("after", &ports, &mut subs);
    none_ended(&mut subs);
    assert_eq!(refused(&gate), 0.0, "no client had to be refused");
}

/// Why `no_node_reply = "close"` is the default, measured: with no node to take them,
/// a refusing CONNACK (0x03 for 3.1.1, 0x88 for 5) ends mosquitto_sub and MQTT.js's
/// `mqtt sub` for good, while after plain closes they keep reconnecting and are
/// subscribed once a node is there.
#[test]
fn refusing_connack_ends_common_clients_and_a_close_does_not() {
    let dir = tempdir();
    let broker_port = free_port(); // nothing listens here yet
    let gate_with = |name: &str, reply: &str| {
        Gate::start_with(dir.path(), name, |listen, admin| {
            gate_config(
                listen,
                admin,
                "dynsec",
                &[("node1", format!("127.0.0.1:{broker_port}"))],
                &format!("queue_timeout = \"0s\"\nno_node_reply = \"{reply}\"\n"),
                "",
                "",
            )
        })
    };
    let ending = |port: u16| {
        vec![
            Sub::mosquitto_sub(port, "mqttv311"),
            Sub::mosquitto_sub(port, "mqttv5"),
            Sub::mqtt_js(port, 4),
            Sub::mqtt_js(port, 5),
        ]
    };

    let (refusing, port) = gate_with("gate-connack", "connack");
    let mut subs = ending(port);
    for s in subs.iter_mut() {
        wait_until(
            T,
            &format!("{} exits on the refusing CONNACK", s.name()),
            || !s.running(),
        );
    }
    assert!(refused(&refusing) >= 4.0);

    let (closing, port) = gate_with("gate-close", "close");
    let mut subs = ending(port);
    wait_until(T, "each client closed three times or more", || {
        refused(&closing) >= 12.0
    });
    none_ended(&mut subs);
    let broker = Mosquitto::start_on("node1", dir.path(), broker_port, MosquittoOpts::default());
    until_every_subscriber_receives("node-up", &[broker.port], &mut subs);
    none_ended(&mut subs);
}
