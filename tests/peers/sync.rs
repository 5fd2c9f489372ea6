//! Peers replicate sticky entries: an entry made through one gateway is used by the
//! others and survives a restart, a partition with conflicting writes converges, and
//! the sticky snapshot keeps entries across a restart (a damaged one does not stop it).

use super::*;

fn port_of(nodes: &[Mosquitto], name: &str) -> u16 {
    nodes
        .iter()
        .find(|n| n.name == name)
        .map(|n| n.port)
        .expect("known node")
}

fn sub(port: u16, id: &str, extra: &[&str]) -> std::process::Output {
    let port = port.to_string();
    let topic = format!("t/{id}");
    let mut args = vec![
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-i",
        id,
        "-c",
        "-q",
        "1",
        "-t",
        &topic,
    ];
    args.extend_from_slice(extra);
    Command::new("mosquitto_sub")
        .args(&args)
        .output()
        .expect("run mosquitto_sub")
}

/// Three gateways linked as a full mesh.
struct Fleet {
    _dir: tempfile::TempDir,
    nodes: Vec<Mosquitto>,
    specs: Vec<GateSpec>,
    gates: Vec<Gate>,
}

fn fleet(sessions: &str) -> Fleet {
    let dir = tempdir();
    let nodes = start_nodes(dir.path());
    let specs = vec![
        GateSpec::new("gate-a"),
        GateSpec::new("gate-b"),
        GateSpec::new("gate-c"),
    ];
    let gates: Vec<Gate> = specs
        .iter()
        .map(|s| {
            let others: Vec<(&str, u16)> = specs
                .iter()
                .filter(|o| o.name != s.name)
                .map(|o| (o.name, o.peer))
                .collect();
            let toml = config(
                dir.path(),
                s,
                s.peer,
                &others,
                &nodes,
                sessions,
                None,
                SECRET,
            );
            Gate::start(dir.path(), s.name, &toml, s.admin)
        })
        .collect();
    for (g, s) in gates.iter().zip(&specs) {
        wait_nodes_up(g);
        for o in specs.iter().filter(|o| o.name != s.name) {
            wait_peer_up(g, o.name, true);
        }
    }
    Fleet {
        _dir: dir,
        nodes,
        specs,
        gates,
    }
}

#[test]
fn an_entry_made_through_one_gateway_is_used_by_the_others_and_survives_a_restart() {
    let mut f = fleet("persistent");
    let ids: Vec<String> = (0..6).map(|i| format!("dev-{i}")).collect();
    // Persistent sessions through gateway A, spread round-robin over the nodes.
    let mut home = Vec::new();
    for id in &ids {
        let out = sub(f.specs[0].listen, id, &["-E"]);
        assert!(out.status.success(), "subscribe {id}: {out:?}");
        let node = sticky(&f.gates[0], id).expect("entry on gate-a");
        home.push(node);
    }
    let distinct: std::collections::HashSet<_> = home.iter().collect();
    assert_eq!(distinct.len(), 3, "round-robin spread: {home:?}");
    for g in &f.gates[1..] {
        for (id, node) in ids.iter().zip(&home) {
            wait_until(Duration::from_secs(10), &format!("{id} replicated"), || {
                sticky(g, id).as_deref() == Some(node.as_str())
            });
        }
    }
    // A message queued on each session's node reaches the client reconnecting through B or C.
    let deliver = |f: &Fleet, gate: usize, round: &str| {
        for (i, (id, node)) in ids.iter().zip(&home).enumerate() {
            let msg = format!("{round}-{id}");
            publish(port_of(&f.nodes, node), 1, &format!("t/{id}"), &msg);
            let through = if gate == 0 { 1 + i % 2 } else { gate };
            let out = sub(f.specs[through].listen, id, &["-C", "1", "-W", "10"]);
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                msg,
                "{id} through {} should land on {node}",
                f.specs[through].name
            );
        }
    };
    deliver(&f, 0, "first");
    let hits = f.gates[1].metric("mqgate_sticky_lookups_total", &[("result", "hit")])
        + f.gates[2].metric("mqgate_sticky_lookups_total", &[("result", "hit")]);
    assert!(hits >= ids.len() as f64, "sticky hits on B and C: {hits}");
    assert!(
        f.gates[1].metric(
            "mqgate_peer_updates_total",
            &[("peer", "gate-a"), ("direction", "received")]
        ) >= ids.len() as f64
    );

    // B loses its table (SIGKILL, no snapshot) and gets it back from its peers.
    f.gates[1].kill();
    wait_peer_up(&f.gates[0], "gate-b", false);
    f.gates[1].resume();
    wait_peer_up(&f.gates[1], "gate-a", true);
    wait_peer_up(&f.gates[1], "gate-c", true);
    for (id, node) in ids.iter().zip(&home) {
        wait_until(
            Duration::from_secs(10),
            &format!("{id} back on gate-b"),
            || sticky(&f.gates[1], id).as_deref() == Some(node.as_str()),
        );
    }
    wait_nodes_up(&f.gates[1]);
    deliver(&f, 1, "second");
}

#[test]
fn a_partition_with_conflicting_writes_converges_everywhere() {
    let dir = tempdir();
    let nodes = start_nodes(dir.path());
    let specs = [
        GateSpec::new("gate-a"),
        GateSpec::new("gate-b"),
        GateSpec::new("gate-c"),
    ];
    let snap = dir.path().join("gate-c.snapshot");
    let peers_of = |me: &str| -> Vec<(&str, u16)> {
        specs
            .iter()
            .filter(|o| o.name != me)
            .map(|o| (o.name, o.peer))
            .collect()
    };
    let mk = |i: usize, bind: u16| {
        config(
            dir.path(),
            &specs[i],
            bind,
            &peers_of(specs[i].name),
            &nodes,
            "all",
            (i == 2).then_some(snap.as_path()),
            SECRET,
        )
    };
    let a = Gate::start(dir.path(), "gate-a", &mk(0, specs[0].peer), specs[0].admin);
    let b = Gate::start(dir.path(), "gate-b", &mk(1, specs[1].peer), specs[1].admin);
    // C listens for peers where nobody dials: cut off.
    let cut_off = free_port();
    let mut c = Gate::start(dir.path(), "gate-c", &mk(2, cut_off), specs[2].admin);
    for g in [&a, &b, &c] {
        wait_nodes_up(g);
    }
    wait_peer_up(&a, "gate-b", true);
    let keys: Vec<String> = (1..=6).map(|i| format!("k{i}")).collect();
    for k in &keys {
        drop(raw_session(specs[0].listen, k));
    }
    // C's round-robin is shifted by one, so every key conflicts.
    drop(raw_session(specs[2].listen, "shift"));
    for k in &keys {
        drop(raw_session(specs[2].listen, k));
    }
    let on = |g: &Gate| -> Vec<Option<String>> { keys.iter().map(|k| sticky(g, k)).collect() };
    let on_a = on(&a);
    let on_c = on(&c);
    assert!(on_a.iter().chain(&on_c).all(Option::is_some));
    for i in 0..keys.len() {
        assert_ne!(on_a[i], on_c[i], "{} should conflict", keys[i]);
    }
    // Later, on A's side of the partition: k4 is deleted and re-made, k5 deleted.
    for k in ["k4", "k5"] {
        let (st, _) = http(
            "DELETE",
            specs[0].admin,
            &format!("/api/v1/clusters/brokers/sticky/{k}"),
            None,
            None,
        )
        .expect("admin API");
        assert_eq!(st, 200, "delete {k}");
    }
    drop(raw_session(specs[0].listen, "k4"));
    let k4_on_a = sticky(&a, "k4");
    wait_until(Duration::from_secs(10), "A's writes on B", || {
        sticky(&b, "k4") == k4_on_a && sticky(&b, "k5").is_none()
    });

    // Heal: C restarts (its table kept by the snapshot) where A and B dial it.
    assert_eq!(c.stop(), Some(0));
    assert!(snap.exists(), "snapshot written at shutdown");
    std::fs::write(&c.config, mk(2, specs[2].peer)).expect("rewrite config");
    c.resume();
    wait_peer_up(&c, "gate-a", true);
    wait_peer_up(&c, "gate-b", true);

    let expected: Vec<Option<String>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| match k.as_str() {
            "k4" => k4_on_a.clone(),
            "k5" => None,
            _ => on_c[i].clone(),
        })
        .collect();
    wait_until(Duration::from_secs(20), "one table on all three", || {
        [&a, &b, &c].iter().all(|g| on(g) == expected)
    });
}

#[test]
fn snapshot_round_trip_keeps_entries_across_a_restart() {
    let dir = tempdir();
    let nodes = start_nodes(dir.path());
    let spec = GateSpec::new("solo");
    let snap: PathBuf = dir.path().join("state").join("sticky.bin");
    let toml = config(
        dir.path(),
        &spec,
        spec.peer,
        &[],
        &nodes,
        "all",
        Some(&snap),
        SECRET,
    );
    let mut g = Gate::start(dir.path(), "solo", &toml, spec.admin);
    wait_nodes_up(&g);
    drop(raw_session(spec.listen, "first")); // round-robin: node1
    drop(raw_session(spec.listen, "keep-me")); // node2
    assert_eq!(sticky(&g, "keep-me").as_deref(), Some("node2"));
    assert_eq!(g.stop(), Some(0), "graceful exit");
    assert!(g.log_text().contains("sticky snapshot written"));
    assert!(snap.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("state"))
        .expect("list the snapshot's directory")
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");

    g.resume();
    assert_eq!(sticky(&g, "keep-me").as_deref(), Some("node2"));
    wait_nodes_up(&g);
    // Round-robin starts over at node1: only the entry sends this client to node2.
    drop(raw_session(spec.listen, "keep-me"));
    assert_eq!(
        g.metric("mqgate_connections_total", &[("node", "node2")]),
        1.0
    );
    assert_eq!(
        g.metric("mqgate_connections_total", &[("node", "node1")]),
        0.0
    );

    // A damaged snapshot does not stop the gateway from starting.
    assert_eq!(g.stop(), Some(0));
    let bytes = std::fs::read(&snap).expect("read the snapshot");
    std::fs::write(&snap, &bytes[..bytes.len() - 3]).expect("cut the snapshot short");
    g.resume();
    assert!(g.log_text().contains("sticky snapshot partly loaded"));
}
