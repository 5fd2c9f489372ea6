//! A hostile or broken peer harms only its own link: garbage, truncated, injected,
//! altered or replayed frames close it and are counted, a flood cannot grow the table
//! past its capacity, updates for unknown clusters or nodes are dropped, and idle
//! sockets on the peers port do not lock out real peers.

use super::*;

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
