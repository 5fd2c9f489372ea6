//! Peer-replicated sticky tables and the sticky snapshot (SPEC section 5), with real
//! processes: three Mosquitto nodes, up to three mqgate binaries linked as peers.
//!
//! The gateways balance `round-robin` with `sessions = "all"`/persistent clients, so a
//! client that reconnects through another gateway lands on the node that holds its
//! session only if the sticky entry reached that gateway.

use crate::common::mqtt::closed_within;
use crate::common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub(crate) const SECRET: &str = "correct horse battery staple";

pub(crate) struct GateSpec {
    pub(crate) name: &'static str,
    pub(crate) listen: u16,
    pub(crate) admin: u16,
    pub(crate) peer: u16,
}

impl GateSpec {
    pub(crate) fn new(name: &'static str) -> GateSpec {
        GateSpec {
            name,
            listen: free_port(),
            admin: free_port(),
            peer: free_port(),
        }
    }
}

/// Config of one gateway: dynsec over `nodes`, round-robin, and a `[peers]` section
/// (bind on `bind_port`, which may differ from `spec.peer` to cut it off).
#[allow(clippy::too_many_arguments)] // one flat call per gateway reads best in the tests
pub(crate) fn config(
    dir: &Path,
    spec: &GateSpec,
    bind_port: u16,
    peers: &[(&str, u16)],
    nodes: &[Mosquitto],
    sessions: &str,
    snapshot: Option<&Path>,
    secret: &str,
) -> String {
    let nodes: Vec<&Mosquitto> = nodes.iter().collect();
    let secret_file = dir.join(format!("{}.secret", spec.name));
    std::fs::write(&secret_file, secret).expect("write secret");
    let extra = format!(
        "balance = \"round-robin\"\n[clusters.brokers.sticky]\nsessions = \"{sessions}\"\n"
    );
    let mut s = basic_config(spec.listen, spec.admin, "dynsec", &nodes, &extra);
    let list: Vec<String> = peers
        .iter()
        .map(|(n, p)| format!("{{ name = \"{n}\", address = \"127.0.0.1:{p}\" }}"))
        .collect();
    s.push_str(&format!(
        "\n[peers]\nname = \"{}\"\nbind = \"127.0.0.1:{bind_port}\"\nsecret_file = \"{}\"\npeers = [ {} ]\n",
        spec.name,
        secret_file.display(),
        list.join(", ")
    ));
    if let Some(p) = snapshot {
        s.push_str(&format!("snapshot = \"{}\"\n", p.display()));
    }
    s
}

pub(crate) fn start_nodes(dir: &Path) -> Vec<Mosquitto> {
    Mosquitto::start_nodes(dir, 3)
}

/// gate-b alone over `nodes` (sticky sessions "all", plus `sticky_extra` lines),
/// with `peers` configured.
fn gate_b(
    dir: &Path,
    nodes: &[Mosquitto],
    peers: &[(&str, u16)],
    sticky_extra: &str,
) -> (GateSpec, Gate) {
    let sb = GateSpec::new("gate-b");
    let tb = config(dir, &sb, sb.peer, peers, nodes, "all", None, SECRET).replace(
        "sessions = \"all\"\n",
        &format!("sessions = \"all\"\n{sticky_extra}"),
    );
    let b = Gate::start(dir, "gate-b", &tb, sb.admin);
    (sb, b)
}

pub(crate) fn wait_nodes_up(g: &Gate) {
    wait_until(Duration::from_secs(20), "all three nodes up", || {
        g.metric("mqgate_node_up", &[]) == 3.0
    });
}

pub(crate) fn wait_peer_up(g: &Gate, peer: &str, up: bool) {
    let want = if up { 1.0 } else { 0.0 };
    wait_until(
        Duration::from_secs(20),
        &format!("peer {peer} up={up}"),
        || g.metric("mqgate_peer_up", &[("peer", peer)]) == want,
    );
}

/// The node of a sticky entry, from `GET /api/v1/clusters/brokers/sticky/{key}`.
pub(crate) fn sticky(g: &Gate, key: &str) -> Option<String> {
    sticky_node(g.admin_port, key)
}

/// A client `key` through gateway `a` (client port `a_listen`) makes a sticky entry
/// there, which then reaches gateway `b` with the same node.
fn replicated(a: &Gate, a_listen: u16, b: &Gate, key: &str, what: &str) {
    drop(raw_session(a_listen, key));
    let node = sticky(a, key).expect("entry on gate-a");
    wait_until(Duration::from_secs(10), what, || {
        sticky(b, key).as_deref() == Some(node.as_str())
    });
}

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
            mosquitto_pub(&[
                "-h",
                "127.0.0.1",
                "-p",
                &port_of(&f.nodes, node).to_string(),
                "-t",
                &format!("t/{id}"),
                "-q",
                "1",
                "-m",
                &msg,
            ]);
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
fn wrong_secret_is_refused_and_logged() {
    let dir = tempdir();
    let nodes = start_nodes(dir.path());
    let (sa, sb) = (GateSpec::new("gate-a"), GateSpec::new("gate-b"));
    let ta = config(
        dir.path(),
        &sa,
        sa.peer,
        &[("gate-b", sb.peer)],
        &nodes,
        "all",
        None,
        "one secret",
    );
    let tb = config(
        dir.path(),
        &sb,
        sb.peer,
        &[("gate-a", sa.peer)],
        &nodes,
        "all",
        None,
        "another secret",
    );
    let b = Gate::start(dir.path(), "gate-b", &tb, sb.admin);
    let a = Gate::start(dir.path(), "gate-a", &ta, sa.admin);
    wait_until(Duration::from_secs(20), "refusal logged by gate-b", || {
        b.log_text()
            .contains("peer `gate-a` failed authentication (wrong shared secret")
    });
    wait_until(Duration::from_secs(20), "refusal seen by gate-a", || {
        a.log_text().contains("refused by the peer")
    });
    assert_eq!(a.metric("mqgate_peer_up", &[("peer", "gate-b")]), 0.0);
    assert_eq!(b.metric("mqgate_peer_up", &[("peer", "gate-a")]), 0.0);
    wait_nodes_up(&a);
    drop(raw_session(sa.listen, "lonely"));
    assert!(sticky(&a, "lonely").is_some());
    std::thread::sleep(Duration::from_millis(300)); // nothing to poll for: it must not arrive
    assert_eq!(sticky(&b, "lonely"), None);
}

/// Read one whole frame (blocking, 10 s at most); `None` if the link closed first.
pub(crate) fn read_frame(s: &mut TcpStream) -> Option<mqgate::peers::frame::Frame> {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes(head) as usize;
    let mut frame = head.to_vec();
    frame.resize(4 + len.min(1 << 20), 0);
    s.read_exact(&mut frame[4..]).ok()?;
    let mut interner = mqgate::peers::frame::Interner::default();
    mqgate::peers::frame::decode(&frame, &mut interner)
        .ok()
        .flatten()
        .map(|(f, _)| f)
}

pub(crate) fn encode(f: &mqgate::peers::frame::Frame) -> Vec<u8> {
    let mut v = Vec::new();
    mqgate::peers::frame::encode(f, &mut v);
    v
}

/// Until the other side closes (or 10 s pass): true if it closed.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    closed_within(s, Duration::from_secs(10))
}

/// The test speaking the peer protocol by hand: dialer `name`, authenticated to the
/// acceptor it knows as `acceptor` with the shared secret (no TLS, so every frame
/// after AUTH is sealed).
pub(crate) struct RawPeer {
    s: TcpStream,
    sealer: mqgate::peers::seal::Sealer,
}

impl RawPeer {
    pub(crate) fn handshake(port: u16, name: &str, acceptor: &str, secret: &str) -> RawPeer {
        use mqgate::peers::auth::{frame_keys, prove, Keys};
        use mqgate::peers::frame::{Frame, VERSION};
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to peers port");
        let nd = [5u8; 32];
        s.write_all(&encode(&Frame::Hello {
            version: VERSION,
            name: name.into(),
            nonce: nd,
        }))
        .expect("send HELLO");
        let Some(Frame::Hello {
            name: theirs,
            nonce: na,
            ..
        }) = read_frame(&mut s)
        else {
            panic!("no HELLO")
        };
        assert_eq!(theirs, "", "the acceptor's HELLO carries no name");
        let secret = mqgate::config::Secret::new(secret.as_bytes().to_vec());
        let keys = Keys::new(&secret, None).expect("keys");
        let mac = prove(&keys, b"dialer", &nd, &na, name, acceptor);
        s.write_all(&encode(&Frame::Auth { mac }))
            .expect("send AUTH");
        assert!(
            matches!(read_frame(&mut s), Some(Frame::Auth { .. })),
            "authenticated"
        );
        let fk = frame_keys(&keys, &nd, &na, name, acceptor);
        RawPeer {
            s,
            sealer: mqgate::peers::seal::Sealer::new(&fk.send),
        }
    }

    /// Seal whole encoded frames, as the next ones on this link.
    fn seal_bytes(&mut self, frames: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.sealer.seal(frames, &mut out);
        out
    }

    fn seal(&mut self, f: &mqgate::peers::frame::Frame) -> Vec<u8> {
        self.seal_bytes(&encode(f))
    }

    fn send(&mut self, f: &mqgate::peers::frame::Frame) {
        let b = self.seal(f);
        self.send_raw(&b);
    }

    fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("write to gate");
    }
}

#[test]
fn garbage_or_truncated_frames_close_only_that_link() {
    use mqgate::peers::frame::{Frame, VERSION};
    let dir = tempdir();
    let nodes = start_nodes(dir.path());
    let (sa, sb) = (GateSpec::new("gate-a"), GateSpec::new("gate-b"));
    let ta = config(
        dir.path(),
        &sa,
        sa.peer,
        &[("gate-b", sb.peer)],
        &nodes,
        "all",
        None,
        SECRET,
    );
    // gate-0 is the test itself, speaking the protocol by hand.
    let tb = config(
        dir.path(),
        &sb,
        sb.peer,
        &[("gate-a", sa.peer), ("gate-0", free_port())],
        &nodes,
        "all",
        None,
        SECRET,
    );
    let b = Gate::start(dir.path(), "gate-b", &tb, sb.admin);
    let a = Gate::start(dir.path(), "gate-a", &ta, sa.admin);
    wait_peer_up(&b, "gate-a", true);

    // Not the protocol at all.
    let mut s = TcpStream::connect(("127.0.0.1", sb.peer)).expect("connect to the peers port");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send HTTP");
    assert!(closed_by_peer(&mut s), "HTTP on the peers port is closed");
    // Another protocol version: a clear error, then closed.
    let mut s = TcpStream::connect(("127.0.0.1", sb.peer)).expect("connect to the peers port");
    let mut hello = encode(&Frame::Hello {
        version: VERSION,
        name: "gate-0".into(),
        nonce: [1; 32],
    });
    hello[9..11].copy_from_slice(&(VERSION + 1).to_be_bytes());
    s.write_all(&hello).expect("send HELLO");
    match read_frame(&mut s) {
        Some(Frame::Error { reason }) => {
            let theirs = format!("version {}", VERSION + 1);
            assert!(reason.contains(&theirs), "{reason}")
        }
        other => panic!("expected an ERROR frame, got {other:?}"),
    }
    // Authenticated, one valid update, then a truncated frame and a hang-up.
    let mut p = RawPeer::handshake(sb.peer, "gate-0", "gate-b", SECRET);
    let upd = mqgate::sticky::Update {
        key: "from-gate-0".into(),
        node: Some("node3".into()),
        stamp: mqgate::sticky::now_ms(),
        origin: "gate-0".into(),
        idle_ms: 0,
    };
    p.send(&Frame::Updates {
        cluster: "brokers".into(),
        updates: vec![upd],
    });
    wait_until(Duration::from_secs(10), "hand-made update merged", || {
        sticky(&b, "from-gate-0").as_deref() == Some("node3")
    });
    wait_peer_up(&b, "gate-0", true);
    let mut frame = p.seal(&Frame::Heartbeat);
    frame[3] = 200; // says 200 bytes follow; 33 do
    p.send_raw(&frame);
    drop(p);
    wait_peer_up(&b, "gate-0", false);
    // Garbage inside an authenticated link (sealed, so it passes the integrity check).
    let mut p = RawPeer::handshake(sb.peer, "gate-0", "gate-b", SECRET);
    let garbage = p.seal_bytes(&[0, 0, 0, 3, 99, 1, 2]);
    p.send_raw(&garbage);
    assert!(closed_by_peer(&mut p.s), "bad frame closes the link");
    wait_until(Duration::from_secs(10), "bad frame logged", || {
        b.log_text().contains("unknown frame type 99")
    });
    // The link between the real gateways never moved.
    assert_eq!(b.metric("mqgate_peer_up", &[("peer", "gate-a")]), 1.0);
    wait_nodes_up(&a);
    replicated(
        &a,
        sa.listen,
        &b,
        "after-garbage",
        "replicated after the garbage",
    );
}

#[test]
fn a_flooding_peer_cannot_grow_the_table_past_its_capacity() {
    use mqgate::peers::frame::Frame;
    let dir = tempdir();
    let nodes = start_nodes(dir.path());
    let (sb, b) = gate_b(
        dir.path(),
        &nodes,
        &[("gate-0", free_port())],
        "capacity = 1000\n",
    );
    let mut p = RawPeer::handshake(sb.peer, "gate-0", "gate-b", SECRET);
    // Drain what gate-b sends, so only the flood matters.
    let mut r = p.s.try_clone().expect("clone the link");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
    });
    p.send(&Frame::SyncBegin);
    let stamp = mqgate::sticky::now_ms();
    for batch in 0..200 {
        let updates = (0..1000)
            .map(|i| mqgate::sticky::Update {
                key: format!("flood-{batch}-{i}").into(),
                node: Some("node1".into()),
                stamp,
                origin: "gate-0".into(),
                idle_ms: 0,
            })
            .collect();
        p.send(&Frame::Updates {
            cluster: "brokers".into(),
            updates,
        });
    }
    p.send(&Frame::SyncEnd { entries: 200_000 });
    wait_until(Duration::from_secs(30), "flood merged", || {
        b.metric(
            "mqgate_peer_updates_total",
            &[("peer", "gate-0"), ("direction", "received")],
        ) == 200_000.0
            && b.metric("mqgate_sticky_entries", &[]) > 0.0
    });
    let entries = b.metric("mqgate_sticky_entries", &[]);
    assert!(entries <= 1024.0, "table bounded by capacity: {entries}");
    // the newest entries are the ones kept, and the gateway still answers
    assert_eq!(sticky(&b, "flood-199-999").as_deref(), Some("node1"));
    assert_eq!(sticky(&b, "flood-0-0"), None);
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

#[test]
fn mutual_tls_links_replicate_and_refuse_foreign_certificates() {
    let dir = tempdir();
    let nodes = start_nodes(dir.path());
    let pki = Pki::new("peers-ca");
    let stranger = Pki::new("other-ca");
    let (sa, sb, sc) = (
        GateSpec::new("gate-a"),
        GateSpec::new("gate-b"),
        GateSpec::new("gate-c"),
    );
    // TLS only: no shared secret line at all; the own certificate comes from `issuer`.
    let tls_config = |spec: &GateSpec, peers: &[(&str, u16)], issuer: &Pki| -> String {
        let tls = peer_tls_section(dir.path(), spec.name, &pki, issuer, spec.name);
        tls_only_config(dir.path(), spec, peers, &nodes, &tls)
    };
    let ta = tls_config(&sa, &[("gate-b", sb.peer)], &pki);
    let tb = tls_config(&sb, &[("gate-a", sa.peer), ("gate-c", sc.peer)], &pki);
    // gate-c trusts the right CA but its own certificate comes from another one.
    let tc = tls_config(&sc, &[("gate-b", sb.peer)], &stranger);
    let a = Gate::start(dir.path(), "gate-a", &ta, sa.admin);
    let b = Gate::start(dir.path(), "gate-b", &tb, sb.admin);
    let _c = Gate::start(dir.path(), "gate-c", &tc, sc.admin);
    wait_peer_up(&a, "gate-b", true);
    wait_nodes_up(&a);
    replicated(&a, sa.listen, &b, "over-tls", "replicated over TLS");
    // gate-b dials gate-c; gate-c's certificate is not from the peers CA.
    wait_until(
        Duration::from_secs(20),
        "foreign certificate refused",
        || {
            b.log_text()
                .contains("TLS handshake failed: invalid peer certificate")
        },
    );
    assert_eq!(b.metric("mqgate_peer_up", &[("peer", "gate-c")]), 0.0);
}

// ---- Security round 2 (issue 23, "Peers" 1–4) ----

/// `[peers.tls]` lines for one gateway: a certificate for `cert_name` (subjectAltNames:
/// it, `localhost`, `127.0.0.1`) signed by `issuer`, trusting `ca`; files prefixed `file`.
fn peer_tls_section(dir: &Path, file: &str, ca: &Pki, issuer: &Pki, cert_name: &str) -> String {
    let (cert, key) = issuer.leaf(cert_name, &[cert_name, "localhost", "127.0.0.1"]);
    let p = |f: &str| dir.join(format!("{file}-{f}"));
    std::fs::write(p("cert.pem"), cert).expect("write cert");
    std::fs::write(p("key.pem"), key).expect("write key");
    std::fs::write(p("ca.pem"), &ca.ca_pem).expect("write ca");
    format!(
        "[peers.tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
        p("cert.pem").display(),
        p("key.pem").display(),
        p("ca.pem").display()
    )
}

/// A TLS-only gateway (no shared secret), with `tls` from [`peer_tls_section`].
fn tls_only_config(
    dir: &Path,
    spec: &GateSpec,
    peers: &[(&str, u16)],
    nodes: &[Mosquitto],
    tls: &str,
) -> String {
    let plain = config(dir, spec, spec.peer, peers, nodes, "all", None, "unused");
    let kept: Vec<&str> = plain
        .lines()
        .filter(|l| !l.starts_with("secret_file"))
        .collect();
    kept.join("\n") + "\n" + tls
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// Log lines of `g` that contain every one of `needles`.
fn log_lines(g: &Gate, needles: &[&str]) -> usize {
    g.log_text()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

/// Item 1: a certificate signed by the peers CA, but issued to another name, cannot
/// be used to claim a configured peer's name, neither by a dialer (gate-b refuses it)
/// nor by an acceptor (gate-b, dialing, refuses it); the real peer links.
#[test]
fn a_certificate_for_another_name_cannot_claim_a_configured_peer() {
    let dir = tempdir();
    let d = dir.path();
    let nodes = start_nodes(d);
    let pki = Pki::new("peers-ca");
    let sa = GateSpec::new("gate-a");
    let sb = GateSpec::new("gate-b");
    // Impostors: certificates from the right CA, issued to `gate-x`.
    let fake_a = GateSpec::new("gate-a"); // dials gate-b, claiming to be gate-a
    let fake_c = GateSpec::new("gate-c"); // dialed by gate-b as gate-c
    let ta = tls_only_config(
        d,
        &sa,
        &[("gate-b", sb.peer)],
        &nodes,
        &peer_tls_section(d, "real-a", &pki, &pki, "gate-a"),
    );
    let tb = tls_only_config(
        d,
        &sb,
        &[("gate-a", sa.peer), ("gate-c", fake_c.peer)],
        &nodes,
        &peer_tls_section(d, "real-b", &pki, &pki, "gate-b"),
    );
    let tfa = tls_only_config(
        d,
        &fake_a,
        &[("gate-b", sb.peer)],
        &nodes,
        &peer_tls_section(d, "fake-a", &pki, &pki, "gate-x"),
    );
    let tfc = tls_only_config(
        d,
        &fake_c,
        &[("gate-b", sb.peer)],
        &nodes,
        &peer_tls_section(d, "fake-c", &pki, &pki, "gate-x"),
    );
    let b = Gate::start(d, "gate-b", &tb, sb.admin);
    let a = Gate::start(d, "gate-a", &ta, sa.admin);
    let fa = Gate::start(d, "fake-a", &tfa, fake_a.admin);
    let fc = Gate::start(d, "fake-c", &tfc, fake_c.admin);
    wait_peer_up(&b, "gate-a", true);
    for g in [&a, &fa, &fc] {
        wait_nodes_up(g);
    }
    // Entries the impostors would send in their full sync (one to an unknown node is
    // not possible through a real gateway; see the next test for that).
    drop(raw_session(fake_a.listen, "forged-a"));
    drop(raw_session(fake_c.listen, "forged-c"));
    assert!(sticky(&fa, "forged-a").is_some() && sticky(&fc, "forged-c").is_some());
    // Each impostor is refused again after its entry exists.
    let refused_a = "certificate presented for `gate-a` does not name it";
    let refused_c = ["peer=gate-c", "invalid peer certificate"];
    let (na, nc) = (count(&b.log_text(), refused_a), log_lines(&b, &refused_c));
    wait_until(
        Duration::from_secs(20),
        "gate-b refuses fake gate-a again",
        || count(&b.log_text(), refused_a) > na,
    );
    wait_until(
        Duration::from_secs(20),
        "gate-b refuses fake gate-c again",
        || log_lines(&b, &refused_c) > nc,
    );
    // Nothing of theirs was written; the real gate-a kept its link and replicates.
    assert_eq!(sticky(&b, "forged-a"), None);
    assert_eq!(sticky(&b, "forged-c"), None);
    assert_eq!(b.metric("mqgate_peer_up", &[("peer", "gate-c")]), 0.0);
    assert_eq!(
        b.metric(
            "mqgate_peer_updates_total",
            &[("peer", "gate-c"), ("direction", "received")]
        ),
        0.0
    );
    assert!(
        !b.log_text().contains("peer reconnected"),
        "the real gate-a's link was never replaced"
    );
    assert_eq!(b.metric("mqgate_peer_up", &[("peer", "gate-a")]), 1.0);
    replicated(&a, sa.listen, &b, "real-entry", "real gate-a replicates");
    // The impostors were told nothing that names gate-b's peers.
    for f in [&fa, &fc] {
        assert!(!f.log_text().contains("not a configured peer"));
    }
}

/// Item 1: with `[peers.tls]` a certificate names its instance, so `mqgate check` (and
/// `run`) refuse peer names that cannot be DNS names.
#[test]
fn with_tls_peer_names_must_be_dns_names() {
    let dir = tempdir();
    let d = dir.path();
    let pki = Pki::new("peers-ca");
    let spec = GateSpec::new("gate-a");
    let tls = peer_tls_section(d, "a", &pki, &pki, "gate-a");
    let toml = tls_only_config(d, &spec, &[("gate b", free_port())], &[], &tls);
    // No broker is started: `check` only needs one node in the file.
    let toml = toml.replacen(
        "nodes = [  ]",
        "nodes = [ { name = \"node1\", address = \"127.0.0.1:1883\" } ]",
        1,
    );
    assert!(toml.contains("node1"), "{toml}");
    let path = d.join("bad-name.toml");
    std::fs::write(&path, &toml).expect("write config");
    let (code, stdout, stderr) = mqgate_check(&path);
    let text = stdout + &stderr;
    assert!(code != Some(0), "check must fail:\n{text}");
    assert!(text.contains("peers.peers[0].name"), "{text}");
    assert!(text.contains("must be DNS names"), "{text}");
    // The same file with a DNS name passes.
    std::fs::write(&path, toml.replace("gate b", "gate-b")).expect("write config");
    let (code, _, stderr) = mqgate_check(&path);
    assert_eq!(code, Some(0), "{stderr}");
}

/// Item 1: a peer's updates for a cluster or node this gateway does not have are
/// dropped and counted, not written.
#[test]
fn updates_for_unknown_clusters_or_nodes_are_dropped_and_counted() {
    use mqgate::peers::frame::Frame;
    let dir = tempdir();
    let nodes = start_nodes(dir.path());
    let (sb, b) = gate_b(dir.path(), &nodes, &[("gate-0", free_port())], "");
    let mut p = RawPeer::handshake(sb.peer, "gate-0", "gate-b", SECRET);
    let u = |key: &str, node: &str| mqgate::sticky::Update {
        key: key.into(),
        node: Some(node.into()),
        stamp: mqgate::sticky::now_ms(),
        origin: "gate-0".into(),
        idle_ms: 0,
    };
    p.send(&Frame::Updates {
        cluster: "brokers".into(),
        updates: vec![u("to-nowhere", "node9"), u("fine", "node2")],
    });
    p.send(&Frame::Updates {
        cluster: "no-such-cluster".into(),
        updates: vec![u("x1", "node1"), u("x2", "node1"), u("x3", "node1")],
    });
    wait_until(Duration::from_secs(10), "the valid update merged", || {
        sticky(&b, "fine").as_deref() == Some("node2")
    });
    let dropped = |reason: &str| {
        b.metric(
            "mqgate_peer_updates_dropped_total",
            &[("peer", "gate-0"), ("reason", reason)],
        )
    };
    wait_until(Duration::from_secs(10), "drops counted", || {
        dropped("unknown_node") == 1.0 && dropped("unknown_cluster") == 3.0
    });
    assert_eq!(sticky(&b, "to-nowhere"), None);
    assert_eq!(b.metric("mqgate_peer_up", &[("peer", "gate-0")]), 1.0);
}

/// Idle TCP connections to `port`, reopened whenever the other side closes one; they
/// never send a byte. Stops when dropped.
struct IdleSockets {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    reopened: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl IdleSockets {
    fn hold(port: u16, n: usize) -> IdleSockets {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let reopened = Arc::new(AtomicUsize::new(0));
        let (st, op, re) = (stop.clone(), open.clone(), reopened.clone());
        let thread = std::thread::spawn(move || {
            let mut socks: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
            let mut first = vec![true; n];
            while !st.load(Ordering::Relaxed) {
                for (i, slot) in socks.iter_mut().enumerate() {
                    let alive = slot.as_ref().is_some_and(|s| {
                        let mut b = [0u8; 1];
                        match s.peek(&mut b) {
                            Ok(0) => false,
                            Ok(_) => true,
                            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                        }
                    });
                    if !alive {
                        *slot = TcpStream::connect(("127.0.0.1", port)).ok();
                        if let Some(s) = slot.as_ref() {
                            let _ = s.set_nonblocking(true);
                            if !std::mem::take(&mut first[i]) {
                                re.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                op.store(socks.iter().flatten().count(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5)); // polling interval
            }
        });
        IdleSockets {
            stop,
            open,
            reopened,
            thread: Some(thread),
        }
    }

    fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for IdleSockets {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Item 2: 64 idle connections held open on the peer port (reopened as they close)
/// do not keep the real peer from linking.
#[test]
fn idle_connections_on_the_peer_port_do_not_lock_out_real_peers() {
    let dir = tempdir();
    let nodes = start_nodes(dir.path());
    let (sa, sb) = (GateSpec::new("gate-a"), GateSpec::new("gate-b"));
    let mk = |s: &GateSpec, o: &GateSpec| {
        config(
            dir.path(),
            s,
            s.peer,
            &[(o.name, o.peer)],
            &nodes,
            "all",
            None,
            SECRET,
        )
    };
    let b = Gate::start(dir.path(), "gate-b", &mk(&sb, &sa), sb.admin);
    let idle = IdleSockets::hold(sb.peer, 64);
    wait_until(Duration::from_secs(10), "64 idle sockets open", || {
        idle.open() == 64
    });
    let a = Gate::start(dir.path(), "gate-a", &mk(&sa, &sb), sa.admin);
    wait_until(
        Duration::from_secs(5),
        "gate-a linked despite the idle sockets",
        || {
            b.metric("mqgate_peer_up", &[("peer", "gate-a")]) == 1.0
                && a.metric("mqgate_peer_up", &[("peer", "gate-b")]) == 1.0
        },
    );
    // Still linked and replicating while the idle sockets are held (and reopened).
    wait_nodes_up(&a);
    replicated(&a, sa.listen, &b, "through-the-crowd", "replicated");
    // Sockets that send nothing are closed after the first-byte deadline (and
    // reopened by the holder); the link is not affected.
    wait_until(
        Duration::from_secs(10),
        "idle sockets closed and reopened",
        || idle.reopened.load(std::sync::atomic::Ordering::Relaxed) >= 64,
    );
    assert_eq!(b.metric("mqgate_peer_up", &[("peer", "gate-a")]), 1.0);
}

/// Item 3: on a link without TLS every frame after AUTH carries a MAC; a frame that is
/// injected, altered or replayed closes the link, is counted, and changes nothing.
#[test]
fn injected_or_altered_frames_after_authentication_are_refused_and_counted() {
    use mqgate::peers::frame::Frame;
    let dir = tempdir();
    let nodes = start_nodes(dir.path());
    let (sb, b) = gate_b(dir.path(), &nodes, &[("gate-0", free_port())], "");
    let upd = |key: &str| Frame::Updates {
        cluster: "brokers".into(),
        updates: vec![mqgate::sticky::Update {
            key: key.into(),
            node: Some("node3".into()),
            stamp: mqgate::sticky::now_ms(),
            origin: "gate-0".into(),
            idle_ms: 0,
        }],
    };
    let rejected = || {
        b.metric(
            "mqgate_peer_frames_rejected_total",
            &[("peer", "gate-0"), ("reason", "mac")],
        )
    };
    // 1. Injected: a well-formed UPDATES frame without the MAC (what anyone on the
    //    path could write into the TCP stream).
    let mut p = RawPeer::handshake(sb.peer, "gate-0", "gate-b", SECRET);
    p.send_raw(&encode(&upd("injected")));
    assert!(closed_by_peer(&mut p.s), "injected frame closes the link");
    wait_until(Duration::from_secs(10), "injection counted", || {
        rejected() == 1.0
    });
    // 2. Altered: a sealed frame with one byte of its key changed.
    let mut p = RawPeer::handshake(sb.peer, "gate-0", "gate-b", SECRET);
    p.send(&upd("genuine"));
    wait_until(Duration::from_secs(10), "sealed update merged", || {
        sticky(&b, "genuine").as_deref() == Some("node3")
    });
    let mut altered = p.seal(&upd("altered"));
    let at = altered
        .windows(7)
        .position(|w| w == b"altered")
        .expect("key");
    altered[at] = b'A';
    p.send_raw(&altered);
    assert!(closed_by_peer(&mut p.s), "altered frame closes the link");
    wait_until(Duration::from_secs(10), "alteration counted", || {
        rejected() == 2.0
    });
    // 3. Replayed: a frame sent earlier on the same link, sent again.
    let mut p = RawPeer::handshake(sb.peer, "gate-0", "gate-b", SECRET);
    let first = p.seal(&upd("replayed"));
    p.send_raw(&first);
    wait_until(Duration::from_secs(10), "first copy merged", || {
        sticky(&b, "replayed").as_deref() == Some("node3")
    });
    p.send_raw(&first);
    assert!(closed_by_peer(&mut p.s), "replayed frame closes the link");
    wait_until(Duration::from_secs(10), "replay counted", || {
        rejected() == 3.0
    });
    for key in ["injected", "Altered", "altered"] {
        assert_eq!(sticky(&b, key), None, "{key} not written");
    }
    assert!(b
        .log_text()
        .contains("peer link closed: frame failed its integrity check"));
}

/// Item 4: before the dialer has proven itself, gate-b's answers are the same whether
/// the name it claims is a configured peer, one that sorts after gate-b, or unknown,
/// and gate-b's HELLO does not carry its name; its own log says what was wrong.
#[test]
fn refusals_before_authentication_reveal_no_names() {
    use mqgate::peers::frame::{Frame, VERSION};
    let dir = tempdir();
    let nodes = start_nodes(dir.path());
    let (sb, b) = gate_b(
        dir.path(),
        &nodes,
        &[("gate-a", free_port()), ("gate-z", free_port())],
        "",
    );
    let mut answers = Vec::new();
    for claimed in ["gate-a", "gate-z", "stranger"] {
        let mut s = TcpStream::connect(("127.0.0.1", sb.peer)).expect("connect");
        s.write_all(&encode(&Frame::Hello {
            version: VERSION,
            name: claimed.into(),
            nonce: [7; 32],
        }))
        .expect("send HELLO");
        let hello = read_frame(&mut s);
        let Some(Frame::Hello { name, .. }) = &hello else {
            panic!("claiming {claimed}: expected a HELLO, got {hello:?}")
        };
        assert_eq!(name, "", "claiming {claimed}: gate-b's HELLO names it");
        s.write_all(&encode(&Frame::Auth { mac: [9; 32] }))
            .expect("send AUTH");
        let reply = read_frame(&mut s);
        assert!(closed_by_peer(&mut s), "claiming {claimed}: closed");
        answers.push((claimed, reply));
    }
    let first = answers[0].1.clone();
    assert_eq!(
        first,
        Some(Frame::Error {
            reason: "authentication failed".into()
        })
    );
    for (claimed, reply) in &answers {
        assert_eq!(reply, &first, "claiming {claimed}: the same refusal");
    }
    // The operator's log tells the cases apart.
    for says in [
        "peer `gate-a` failed authentication (wrong shared secret",
        "peer `gate-z` failed authentication (wrong shared secret",
        "`stranger` is not a configured peer",
    ] {
        wait_until(Duration::from_secs(10), says, || {
            b.log_text().contains(says)
        });
    }
}

/// The fuzz corpus of `fuzz/fuzz_targets/peer_frame.rs`, replayed without a nightly
/// toolchain: every input decodes or fails cleanly, and what decodes re-encodes to the
/// same bytes.
#[test]
fn peer_frame_corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/peer_frame");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("corpus dir") {
        let data = std::fs::read(e.expect("entry").path()).expect("read seed");
        peer_frame_check(&data);
        n += 1;
    }
    assert!(n >= 5, "seed corpus present ({n})");
}

#[path = "../fuzz/fuzz_targets/peer_frame_check.rs"]
mod peer_frame_check_mod;
use peer_frame_check_mod::peer_frame_check;

/// Writes the seed corpus (run by hand):
/// `cargo test --test integration -- --ignored write_peer_frame_seeds`.
#[test]
#[ignore = "writes fuzz/corpus/peer_frame"]
fn write_peer_frame_seeds() {
    use mqgate::peers::frame::{Frame, VERSION};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/peer_frame");
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    let u = |k: &str, n: Option<&str>| mqgate::sticky::Update {
        key: k.into(),
        node: n.map(Into::into),
        stamp: 1_700_000_000_000,
        origin: "gate-a".into(),
        idle_ms: 1234,
    };
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "hello",
            encode(&Frame::Hello {
                version: VERSION,
                name: "gate-a".into(),
                nonce: [3; 32],
            }),
        ),
        ("auth", encode(&Frame::Auth { mac: [4; 32] })),
        (
            "updates",
            encode(&Frame::Updates {
                cluster: "brokers".into(),
                updates: vec![u("dev-1", Some("node1")), u("dev-2", None)],
            }),
        ),
        (
            "sync",
            [
                encode(&Frame::SyncBegin),
                encode(&Frame::SyncEnd { entries: 2 }),
            ]
            .concat(),
        ),
        ("heartbeat", encode(&Frame::Heartbeat)),
        (
            "error",
            encode(&Frame::Error {
                reason: "authentication failed".into(),
            }),
        ),
        ("bad-version", {
            let mut h = encode(&Frame::Hello {
                version: VERSION,
                name: "x".into(),
                nonce: [0; 32],
            });
            h[9] = 9;
            h
        }),
        ("bad-too-large", vec![0x7F, 0xFF, 0xFF, 0xFF, 3]),
        (
            "bad-truncated",
            encode(&Frame::Updates {
                cluster: "c".into(),
                updates: vec![u("k", Some("n"))],
            })[..20]
                .to_vec(),
        ),
        ("bad-http", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        (
            "subs",
            encode(&Frame::Subs {
                cluster: "brokers".into(),
                clients: vec![(
                    "dev-1".into(),
                    1_700_000_000_000_000,
                    vec![mqgate::sticky::subs::Sub {
                        topic: "cmd/dev-1".into(),
                        options: 1,
                        properties: Box::new([]),
                    }],
                )],
            }),
        ),
        (
            "pull",
            [
                encode(&Frame::SyncRequest { scope: 1 }),
                encode(&Frame::SyncDone {
                    scope: 0,
                    entries: 3,
                }),
            ]
            .concat(),
        ),
        (
            "live",
            encode(&Frame::Live {
                cluster: "brokers".into(),
                ids: vec![("dev-1".into(), 1_700_000_000_000, "192.0.2.7:5000".into())],
            }),
        ),
        ("bad-scope", {
            let mut f = encode(&Frame::SyncRequest { scope: 0 });
            if let Some(last) = f.last_mut() {
                *last = 7;
            }
            f
        }),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
    }
}
