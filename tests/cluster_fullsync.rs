//! full-sync mode with real Mosquitto processes and a real mqgate binary: the gateway
//! finds the leader (the one node whose client listener is open), sends every client
//! there, closes sessions through an old leader, and never shows two leaders.

use crate::common::fleet::Forwarder;
use crate::common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(15);

fn leader_of(g: &Gate) -> Option<String> {
    let text = g.metrics();
    ["node1", "node2", "node3"]
        .into_iter()
        .find(|n| metric_value(&text, "mqgate_node_leader", &[("node", n)]) == 1.0)
        .map(str::to_string)
}

/// Samples `mqgate_node_leader` every 10 ms in the background; remembers the largest
/// sum seen (must never exceed 1).
struct LeaderWatch {
    stop: Arc<AtomicBool>,
    max: Arc<Mutex<f64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LeaderWatch {
    fn start(admin_port: u16) -> LeaderWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(Mutex::new(0.0f64));
        let (s, m) = (stop.clone(), max.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Ok((200, body)) = http("GET", admin_port, "/metrics", None, None) {
                    let sum = metric_value(&body, "mqgate_node_leader", &[]);
                    let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
                    if sum > *g {
                        *g = sum;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        LeaderWatch {
            stop,
            max,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> f64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let v = *self.max.lock().unwrap_or_else(|p| p.into_inner());
        v
    }
}

/// A subscriber connected straight to a broker (not through mqgate).
fn direct_sub(port: u16, id: &str, topic: &str) -> Client {
    let (mut c, _) = Client::accepted(port, &Connect::new(id)).expect("direct subscriber");
    c.subscribe(topic).expect("subscribe");
    c
}

/// Connect through mqgate and publish once; Ok when the broker acknowledged it.
fn publish_through(gate_port: u16, id: &str, topic: &str, payload: &[u8]) -> Result<(), String> {
    let (mut c, _) = Client::accepted(gate_port, &Connect::new(id))?;
    c.publish(topic, payload)?;
    c.disconnect();
    Ok(())
}

#[test]
fn clients_follow_the_leader() {
    let dir = tempdir();
    let mut m1 = Mosquitto::start("node1", dir.path());
    let mut m2 = Mosquitto::start("node2", dir.path());
    let mut m3 = Mosquitto::start("node3", dir.path());
    // Followers have their client listener closed.
    m2.stop();
    m3.stop();
    let (gate, listen) = Gate::start_with(dir.path(), "gate", |listen, admin| {
        gate_config(
            listen,
            admin,
            "full-sync",
            &[
                ("node1", m1.address()),
                ("node2", m2.address()),
                ("node3", m3.address()),
            ],
            "",
            "",
            "",
        )
    });
    let admin = gate.admin_port;
    let watch = LeaderWatch::start(admin);
    wait_until(T, "node1 elected leader", || {
        leader_of(&gate).as_deref() == Some("node1")
    });

    // Clients connect through mqgate and reach the leader.
    let mut sub1 = direct_sub(m1.port, "sub-on-node1", "fs/#");
    let mut clients: Vec<Client> = (0..5)
        .map(|i| {
            Client::accepted(listen, &Connect::new(&format!("fs-client-{i}")))
                .expect("client through mqgate")
                .0
        })
        .collect();
    clients[0].publish("fs/a", b"via-gate").expect("publish");
    let (topic, payload) = sub1.next_publish(T).expect("leader got the message");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("fs/a", &b"via-gate"[..])
    );
    assert_eq!(
        gate.metric("mqgate_connections_active", &[("node", "node1")]),
        5.0
    );

    // The leader goes away; another node opens its listener.
    drop(sub1);
    m1.stop();
    for c in clients.iter_mut() {
        assert!(c.closed_within(T), "session through the old leader closed");
    }
    wait_until(T, "no leader while every node is down", || {
        leader_of(&gate).is_none()
    });
    m2.resume();
    let opened = Instant::now();
    let mut sub2 = direct_sub(m2.port, "sub-on-node2", "fs/#");
    let mut attempts = 0;
    wait_until(T, "a client publishes through the new leader", || {
        attempts += 1;
        publish_through(listen, "fs-reconnect", "fs/b", b"after-failover").is_ok()
    });
    let took = opened.elapsed();
    let (topic, payload) = sub2.next_publish(T).expect("new leader got the message");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("fs/b", &b"after-failover"[..])
    );
    println!(
        "full-sync failover: {took:?} from the new leader's listener opening to the first \
         client publishing through it ({attempts} connection attempts; health interval 100ms, \
         fast 50ms, down 100ms, rise 2, fall 3)"
    );
    assert_eq!(leader_of(&gate).as_deref(), Some("node2"));

    // node1 comes back as well: the current leader stays leader.
    m1.resume();
    wait_until(T, "node1 seen up again", || {
        gate.metric("mqgate_node_up", &[("node", "node1")]) == 1.0
    });
    let before = gate.metric("mqgate_connections_total", &[("node", "node1")]);
    for i in 0..5 {
        publish_through(listen, &format!("fs-late-{i}"), "fs/c", b"x").expect("publish");
    }
    assert_eq!(leader_of(&gate).as_deref(), Some("node2"));
    assert_eq!(
        gate.metric("mqgate_connections_total", &[("node", "node1")]),
        before,
        "no client went to node1 while node2 is leader"
    );
    for _ in 0..5 {
        sub2.next_publish(T).expect("messages reach node2");
    }
    assert!(gate.metric("mqgate_leader_changes_total", &[]) >= 3.0);
    let max = watch.finish();
    assert_eq!(max, 1.0, "mqgate_node_leader summed to {max} at some point");
    let log = gate.log_text();
    assert!(log.contains("leader changed"), "leader changes are logged");
}

/// The leader's listener closes but the broker keeps its client connections open (a
/// forwarder stands in for the listener): mqgate marks the node down, elects the next
/// node and closes the sessions itself (`on_node_down = "disconnect"`, HAProxy's
/// `on-marked-down shutdown-sessions`); clients that reconnect reach the new leader.
#[test]
fn old_leader_sessions_are_closed_by_the_gateway() {
    let dir = tempdir();
    let m1 = Mosquitto::start("node1", dir.path());
    let mut m2 = Mosquitto::start("node2", dir.path());
    m2.stop();
    let mut f1 = Forwarder::start(m1.port);
    let (gate, listen) = Gate::start_with(dir.path(), "gate", |listen, admin| {
        gate_config(
            listen,
            admin,
            "full-sync",
            &[
                ("node1", format!("127.0.0.1:{}", f1.port)),
                ("node2", m2.address()),
            ],
            "",
            "",
            "",
        )
    });
    wait_until(T, "node1 elected leader", || {
        leader_of(&gate).as_deref() == Some("node1")
    });
    let (mut c, _) = Client::accepted(listen, &Connect::new("keeper")).expect("client");
    assert!(c.ping(), "session up through node1");

    f1.close_listener();
    m2.resume();
    assert!(
        c.closed_within(T),
        "the gateway closed the session through the old leader"
    );
    wait_until(T, "node2 elected leader", || {
        leader_of(&gate).as_deref() == Some("node2")
    });
    let mut sub2 = direct_sub(m2.port, "sub2", "k/#");
    publish_through(listen, "keeper", "k/1", b"moved").expect("reconnect through mqgate");
    let (topic, _) = sub2.next_publish(T).expect("new leader got it");
    assert_eq!(topic, "k/1");
    // The broker behind the old leader never closed anything itself: m1 is running.
    assert!(m1.is_running());
}

/// Node addresses may be host names: they are resolved (hickory, /etc/hosts first)
/// before the first check and re-resolved every `dns_refresh`.
#[test]
fn node_address_can_be_a_host_name() {
    let dir = tempdir();
    let m1 = Mosquitto::start("node1", dir.path());
    let (gate, listen) = Gate::start_with(dir.path(), "gate", |listen, admin| {
        gate_config(
            listen,
            admin,
            "full-sync",
            &[("node1", format!("localhost:{}", m1.port))],
            "dns_refresh = \"1s\"",
            "",
            "",
        )
    });
    wait_until(T, "node1 (localhost) elected leader", || {
        leader_of(&gate).as_deref() == Some("node1")
    });
    let mut sub = direct_sub(m1.port, "dns-sub", "dns/#");
    publish_through(listen, "dns-client", "dns/1", b"by-name").expect("publish via localhost");
    let (topic, _) = sub.next_publish(T).expect("message reached the node");
    assert_eq!(topic, "dns/1");
    let log = gate.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("node address resolved") && l.contains("localhost")),
        "the resolution is logged:\n{log}"
    );
}

/// A reload that points a node (by host name) at another address: new connections go
/// to the new address at once (it is resolved again right away, not after
/// `dns_refresh`); sessions already open stay where they are.
#[test]
fn changed_node_address_applies_to_new_connections() {
    let dir = tempdir();
    let a = Mosquitto::start("broker-a", dir.path());
    let b = Mosquitto::start("broker-b", dir.path());
    let (listen, admin) = (free_port(), free_port());
    let cfg_for = |port: u16| {
        gate_config(
            listen,
            admin,
            "full-sync",
            &[("node1", format!("localhost:{port}"))],
            "dns_refresh = \"1h\"",
            "",
            "",
        )
    };
    let gate = Gate::start(dir.path(), "gate", &cfg_for(a.port), admin);
    wait_until(T, "node1 leader", || {
        leader_of(&gate).as_deref() == Some("node1")
    });
    let mut sub_a = direct_sub(a.port, "sub-a", "addr/#");
    let (mut old, _) = Client::accepted(listen, &Connect::new("old-session")).expect("client");
    old.publish("addr/1", b"to-a").expect("publish");
    assert_eq!(sub_a.next_publish(T).expect("on a").0, "addr/1");

    gate.reload_with(&cfg_for(b.port));
    let mut sub_b = direct_sub(b.port, "sub-b", "addr/#");
    wait_until(T, "new connections reach broker b", || {
        publish_through(listen, "new-session", "addr/2", b"to-b").is_ok()
            && sub_b.next_publish(Duration::from_millis(300)).is_ok()
    });
    // The session opened before the change is still on broker a.
    old.publish("addr/3", b"still-a")
        .expect("old session alive");
    // (Attempts made before the reload took effect also left "addr/2" messages on a.)
    loop {
        let (topic, _) = sub_a.next_publish(T).expect("old session still on a");
        if topic == "addr/3" {
            break;
        }
        assert_eq!(topic, "addr/2");
    }
}
