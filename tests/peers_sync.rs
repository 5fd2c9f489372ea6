//! Where a joining gateway takes its sticky table from (issue 30), with real processes:
//! three mqgate binaries over three Mosquitto nodes, and a raw peer speaking the frames.
//!
//! A gateway that has no full table yet asks ONE peer for it and the others only for
//! the entries they wrote themselves; when that one goes away before sending it, the
//! next link up is asked.

use crate::common::*;
use crate::peers::{
    config, encode, read_frame, start_nodes, sticky, wait_nodes_up, wait_peer_up, GateSpec,
    RawPeer, SECRET,
};
use std::time::Duration;

fn received(g: &Gate, peer: &str) -> f64 {
    g.metric(
        "mqgate_peer_updates_total",
        &[("peer", peer), ("direction", "received")],
    )
}

fn entries(g: &Gate) -> f64 {
    g.metric("mqgate_sticky_entries", &[])
}

#[test]
fn a_joining_gateway_takes_one_full_table_and_asks_the_next_peer_if_its_source_dies() {
    let dir = tempdir();
    let d = dir.path();
    let nodes = start_nodes(d);
    let (sa, sb, sc) = (
        GateSpec::new("gate-a"),
        GateSpec::new("gate-b"),
        GateSpec::new("gate-c"),
    );
    // gate-b and gate-c, linked, with entries written through each of them.
    let b = Gate::start(
        d,
        "gate-b",
        &config(
            d,
            &sb,
            sb.peer,
            &[("gate-a", sa.peer), ("gate-c", sc.peer)],
            &nodes,
            "all",
            None,
            SECRET,
        ),
        sb.admin,
    );
    let c = Gate::start(
        d,
        "gate-c",
        &config(
            d,
            &sc,
            sc.peer,
            &[("gate-a", sa.peer), ("gate-b", sb.peer)],
            &nodes,
            "all",
            None,
            SECRET,
        ),
        sc.admin,
    );
    wait_nodes_up(&b);
    wait_nodes_up(&c);
    wait_peer_up(&b, "gate-c", true);
    for i in 0..30 {
        drop(raw_session(sb.listen, &format!("via-b-{i}")));
    }
    for i in 0..20 {
        drop(raw_session(sc.listen, &format!("via-c-{i}")));
    }
    wait_until(
        Duration::from_secs(20),
        "50 entries on gate-b and gate-c",
        || entries(&b) == 50.0 && entries(&c) == 50.0,
    );

    // gate-a (it dials: its name sorts first) starts with wrong addresses for gate-b
    // and gate-c; its first link is a raw peer, gate-0, which is asked for the table.
    let nowhere = free_port();
    let ta = |pb: u16, pc: u16| {
        config(
            d,
            &sa,
            sa.peer,
            &[("gate-0", nowhere), ("gate-b", pb), ("gate-c", pc)],
            &nodes,
            "all",
            None,
            SECRET,
        )
    };
    let a = Gate::start(d, "gate-a", &ta(nowhere, nowhere), sa.admin);
    wait_until(Duration::from_secs(20), "gate-a's peer port open", || {
        std::net::TcpStream::connect(("127.0.0.1", sa.peer)).is_ok()
    });
    let raw = RawPeer::handshake(sa.peer, "gate-0", "gate-a", SECRET);
    wait_until(
        Duration::from_secs(10),
        "gate-a asks gate-0 for its table",
        || {
            a.log_text().lines().any(|l| {
                l.contains("asking this peer for its full sticky table") && l.contains("gate-0")
            })
        },
    );

    // gate-a learns the right addresses: gate-b and gate-c are asked only for the
    // entries they wrote (30 and 20), not for a table each.
    a.reload_with(&ta(sb.peer, sc.peer));
    wait_peer_up(&a, "gate-b", true);
    wait_peer_up(&a, "gate-c", true);
    wait_until(
        Duration::from_secs(20),
        "own entries from gate-b and gate-c",
        || received(&a, "gate-b") == 30.0 && received(&a, "gate-c") == 20.0,
    );
    assert_eq!(entries(&a), 50.0, "every entry arrived with its writer");

    // gate-0 goes away without sending its table: the next link up is asked for it,
    // and only that one sends a whole table.
    drop(raw);
    wait_until(
        Duration::from_secs(20),
        "a full table from gate-b or gate-c",
        || {
            let (rb, rc) = (received(&a, "gate-b"), received(&a, "gate-c"));
            rb + rc == 100.0
        },
    );
    let (rb, rc) = (received(&a, "gate-b"), received(&a, "gate-c"));
    assert!(
        (rb, rc) == (80.0, 20.0) || (rb, rc) == (30.0, 70.0),
        "one full table (50) on top of the own entries: from gate-b {rb}, from gate-c {rc}"
    );
    assert!(a.log_text().contains("asking this peer instead"));
    assert_eq!(entries(&a), 50.0);
    for key in ["via-b-0", "via-b-29", "via-c-0", "via-c-19"] {
        assert_eq!(sticky(&a, key), sticky(&b, key), "{key}");
        assert!(sticky(&a, key).is_some(), "{key}");
    }
    // gate-b and gate-c, which had their tables, asked gate-a only for its own entries.
    for g in [&b, &c] {
        assert!(g.log_text().contains("sticky table sent to peer, as asked"));
        assert_eq!(received(g, "gate-a"), 0.0, "gate-a wrote nothing");
    }
    // A delta still flows both ways.
    drop(raw_session(sa.listen, "via-a"));
    wait_until(Duration::from_secs(10), "gate-a's entry on gate-b", || {
        sticky(&b, "via-a").is_some()
    });
}

/// A peer of the previous build (protocol version 2) refuses an offer of version 3 with
/// its version error; the gateway dials it again at once offering version 2.
#[test]
fn a_peer_of_the_previous_protocol_version_is_dialed_again_with_its_version() {
    use mqgate::peers::frame::{Frame, MIN_VERSION, VERSION};
    let dir = tempdir();
    let d = dir.path();
    let nodes = start_nodes(d);
    let old = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the old peer");
    let port = old.local_addr().expect("address").port();
    let sa = GateSpec::new("gate-a");
    let a = Gate::start(
        d,
        "gate-a",
        &config(
            d,
            &sa,
            sa.peer,
            &[("gate-z", port)],
            &nodes,
            "all",
            None,
            SECRET,
        ),
        sa.admin,
    );
    let (mut s, _) = old.accept().expect("gate-a dials");
    let Some(Frame::Hello { version, name, .. }) = read_frame(&mut s) else {
        panic!("no HELLO")
    };
    assert_eq!((version, name.as_str()), (VERSION, "gate-a"));
    // What a version 2 build answers (its `refuse` of the frame error).
    let reason = format!(
        "bad frame: peer speaks protocol version {VERSION}, this gateway speaks version {MIN_VERSION}"
    );
    std::io::Write::write_all(&mut s, &encode(&Frame::Error { reason })).expect("refuse");
    drop(s);
    let (mut s, _) = old.accept().expect("gate-a dials again");
    let Some(Frame::Hello { version, .. }) = read_frame(&mut s) else {
        panic!("no second HELLO")
    };
    assert_eq!(
        version, MIN_VERSION,
        "the second offer is the old peer's version"
    );
    a.wait_log("peer speaks protocol version 2; linking with it");
}
