//! `mqgate cluster rebalance` with `balance = "hash"`: after a fourth node is added by
//! reload, exactly the clients whose hash owner is now that node are moved (each
//! session closed on its own, MQTT 5 clients told 0x9C), and every one of them comes
//! back on the new node: no client reconnects to an old node, none stays misplaced.

use crate::common::fleet::addresses;
use crate::common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
const CLIENTS: usize = 80;

#[test]
fn rebalance_by_hash_moves_exactly_the_clients_the_new_node_owns() {
    let fleet = HashFleet::start("[clusters.brokers.shaping]\nclose_rate = 50\n");
    let (listen, gate) = (fleet.listen, &fleet.gate);
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(CLIENTS + 1));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (stop, ready) = (Arc::clone(&stop), Arc::clone(&ready));
            std::thread::spawn(move || {
                let v5 = i.is_multiple_of(2);
                let connect = Connect::new(&format!("hash-{i}")).v5(v5);
                let (mut c, _) = Client::accepted(listen, &connect).expect("client");
                ready.wait();
                let mut reasons = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match c.read_packet(Duration::from_millis(200)) {
                        Err(e) if e.contains("timed out") => continue,
                        Ok((0xE0, b)) => reasons.push(b.first().copied()),
                        Ok(_) => continue,
                        Err(_) => reasons.push(None),
                    }
                    let _ = c.closed_within(Duration::from_secs(10));
                    let deadline = Instant::now() + T;
                    c = loop {
                        assert!(Instant::now() < deadline, "hash-{i} could not reconnect");
                        if let Ok((c, _)) = Client::accepted(listen, &connect) {
                            break c;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    };
                }
                c.disconnect();
                (v5, reasons)
            })
        })
        .collect();
    ready.wait();
    let before: Vec<f64> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| gate.metric("mqgate_connections_total", &[("node", n)]))
        .collect();
    assert_eq!(before.iter().sum::<f64>(), CLIENTS as f64);
    fleet.add_node4();
    let said = fleet.rebalance(&["--rate", "50"]);
    assert!(said.contains("moving clients at 50/s"), "{said}");
    wait_until(T, "every moved client back, on node4", || {
        let on4 = gate.metric("mqgate_connections_active", &[("node", "node4")]);
        let all: f64 = ["node1", "node2", "node3", "node4"]
            .iter()
            .map(|n| gate.metric("mqgate_connections_active", &[("node", n)]))
            .sum();
        on4 > 0.0
            && all == CLIENTS as f64
            && gate.metric("mqgate_connections_total", &[("node", "node4")]) == on4
    });
    stop.store(true, Ordering::SeqCst);
    let seen: Vec<(bool, Vec<Option<u8>>)> = clients
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    let moved = seen.iter().filter(|(_, r)| !r.is_empty()).count();
    let on4 = gate.metric("mqgate_connections_total", &[("node", "node4")]);
    assert_eq!(moved as f64, on4, "every closed client came back on node4");
    assert!(moved > 0 && moved < CLIENTS / 2, "{moved} clients moved");
    for (v5, reasons) in &seen {
        assert!(reasons.len() <= 1, "a client was moved twice: {reasons:?}");
        if *v5 && !reasons.is_empty() {
            assert_eq!(reasons[0], Some(0x9C), "v5 clients are told 0x9C");
        }
    }
    // No client went back to an old node: their totals did not change.
    for (n, b) in ["node1", "node2", "node3"].iter().zip(&before) {
        assert_eq!(
            gate.metric("mqgate_connections_total", &[("node", n)]),
            *b,
            "reconnects to {n}"
        );
    }
    // Balanced by the hash: a second rebalance has nothing to move.
    let said = fleet.rebalance(&[]);
    assert!(said.contains("nothing to move"), "{said}");
}

/// The clients a hash rebalance leaves in place carry on unbothered (no DISCONNECT, no
/// reconnect), and with `single_live` a newer connection with one of their ids still
/// takes the session over (their lane was made anew under them).
#[test]
fn clients_left_in_place_keep_relaying_and_can_still_be_taken_over() {
    const N: usize = 80;
    let fleet = HashFleet::start(
        "[clusters.brokers.shaping]\nclose_rate = 200\n\
         [clusters.brokers.sessions]\nsingle_live = true\n",
    );
    let (listen, admin, gate) = (fleet.listen, fleet.admin, &fleet.gate);
    let mut clients: Vec<(String, Client)> = (0..N)
        .map(|i| {
            let id = format!("stay-{i}");
            let (c, _) = Client::accepted(listen, &Connect::new(&id).v5(true)).expect("client");
            (id, c)
        })
        .collect();
    fleet.add_node4();
    let said = fleet.rebalance(&[]);
    // "moving clients at N/s per node from node1 (~3), node2 (~4)": exact for the hash.
    let moving: usize = said
        .split("(~")
        .skip(1)
        .filter_map(|p| p.split(')').next()?.parse::<usize>().ok())
        .sum();
    assert!(moving > 0 && moving < N, "{said}");
    wait_until(T, "the moving clients closed", || {
        ["node1", "node2", "node3"]
            .iter()
            .map(|n| gate.metric("mqgate_connections_active", &[("node", n)]))
            .sum::<f64>()
            == (N - moving) as f64
    });
    let mut stayed = Vec::new();
    for (id, mut c) in clients.drain(..) {
        match c.read_packet(Duration::from_millis(300)) {
            Ok((0xE0, b)) => assert_eq!(b.first(), Some(&0x9C), "{id}"),
            Err(e) if e.contains("timed out") => stayed.push((id, c)),
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!(stayed.len(), N - moving, "exactly the others stay");
    // Those left in place still relay: a PINGREQ is answered by their broker.
    for (id, c) in stayed.iter_mut() {
        assert!(c.ping(), "{id} still relays");
    }
    // And a newer connection with a stayed id takes it over: the old nodes drained,
    // it lands on node4, and the gateway (not the broker) closes the older one.
    for n in ["node1", "node2", "node3"] {
        let out = mqgate(&[
            "node",
            "drain",
            "brokers",
            n,
            "--admin",
            &format!("http://127.0.0.1:{admin}"),
        ]);
        assert!(out.status.success(), "drain {n}");
    }
    // Every one of them (some shared a lane with a moving client, so their lane was
    // closed and made anew under them).
    let mut newer = Vec::new();
    for (id, mut old) in stayed {
        let (c, _) = Client::accepted(listen, &Connect::new(&id).v5(true)).expect("newer");
        newer.push(c);
        match old.read_packet(T) {
            Ok((0xE0, b)) => assert_eq!(b.first(), Some(&0x8E), "{id} told taken over"),
            other => panic!("{id} was not taken over: {other:?}"),
        }
    }
}

/// Four Mosquitto nodes, a gateway in front of the first three (`balance = "hash"`,
/// `extra` appended), and the config text with the first `n` nodes for the reload.
/// (Fields drop in order: the gateway first, the directory last.)
struct HashFleet {
    gate: Gate,
    nodes: Vec<Mosquitto>,
    listen: u16,
    admin: u16,
    extra: &'static str,
    _dir: tempfile::TempDir,
}

impl HashFleet {
    fn start(extra: &'static str) -> HashFleet {
        let dir = tempdir();
        let nodes = Mosquitto::start_nodes(dir.path(), 4);
        let (listen, admin) = (free_port(), free_port());
        let text = Self::text_for(&nodes, listen, admin, extra, 3);
        let gate = Gate::start(dir.path(), "gate", &text, admin);
        for n in ["node1", "node2", "node3"] {
            gate.wait_node_up(n);
        }
        HashFleet {
            gate,
            nodes,
            listen,
            admin,
            extra,
            _dir: dir,
        }
    }

    fn text_for(nodes: &[Mosquitto], listen: u16, admin: u16, extra: &str, n: usize) -> String {
        gate_config(
            listen,
            admin,
            "dynsec",
            &addresses(&nodes[..n]),
            "balance = \"hash\"",
            "",
            extra,
        )
    }

    /// The fourth node added by reload and up.
    fn add_node4(&self) {
        let text = Self::text_for(&self.nodes, self.listen, self.admin, self.extra, 4);
        self.gate.reload_with(&text);
        self.gate.wait_node_up("node4");
    }

    /// `mqgate cluster rebalance brokers [args]`: what it printed, after checking it
    /// succeeded.
    fn rebalance(&self, args: &[&str]) -> String {
        crate::common::admin::cli_rebalance(self.admin, args)
    }
}
