//! One live session per client id (`[clusters.X.sessions] single_live`), with real
//! processes: Mosquitto nodes and mqgate binaries linked as peers.
//!
//! The two gateways of the first test each see a different node, so that the MQTT
//! takeover of one broker cannot be what closes the older connection: only the
//! gateways' LIVE announcements can.

use crate::common::fleet::addresses;
use crate::common::mqtt::{read_packet, read_to_close, Ended};
use crate::common::*;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// CONNECT from `from` to the gateway on 127.0.0.1:`port`: the stream and the
/// CONNACK's code.
fn connect_from(from: Ipv4Addr, port: u16, c: &Connect) -> Result<(TcpStream, u8), String> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| format!("socket: {e}"))?;
    s.bind(&SocketAddr::from((from, 0)).into())
        .map_err(|e| format!("bind {from}: {e}"))?;
    s.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .map_err(|e| format!("connect: {e}"))?;
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| format!("timeout: {e}"))?;
    s.write_all(&c.bytes()).map_err(|e| format!("write: {e}"))?;
    match read_packet(&mut s) {
        Ok((0x20, body)) if body.len() >= 2 => Ok((s, body[1])),
        Ok((first, body)) => Err(format!("CONNACK expected, got {first:#04x} {body:02x?}")),
        Err(e) => Err(format!("CONNACK: {e}")),
    }
}

fn accepted(port: u16, c: &Connect) -> TcpStream {
    match connect_from(Ipv4Addr::LOCALHOST, port, c) {
        Ok((s, 0)) => s,
        Ok((_, code)) => panic!("CONNACK {code:#04x} for {}", c.client_id()),
        Err(e) => panic!("{}: {e}", c.client_id()),
    }
}

/// What an older connection got before its close: the packets and how it ended.
fn packets_until_close(s: &mut TcpStream) -> (Vec<(u8, Vec<u8>)>, bool) {
    let mut got = Vec::new();
    loop {
        match read_packet(s) {
            Ok(p) => got.push(p),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return (got, true),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (got, false)
            }
            Err(_) => return (got, true), // reset
        }
    }
}

/// The same client id through two gateways at once, on two different nodes: the
/// older connection is closed (MQTT 5: DISCONNECT 0x8E first), the newer one stays.
#[test]
fn the_same_client_id_through_two_gateways_stays_live_once() {
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 2);
    // gate-a reaches node1 only, gate-b node2 only.
    let gates = pair::start(
        dir.path(),
        [addresses(&nodes[0..1]), addresses(&nodes[1..2])],
        "[clusters.brokers.sessions]\nsingle_live = true\n",
        false,
    );
    let ((a, a_listen), (b, b_listen)) = (&gates[0], &gates[1]);
    for (v5, id) in [(true, "twin-5"), (false, "twin-3")] {
        let c = Connect::new(id).v5(v5);
        let mut old = accepted(*a_listen, &c);
        assert!(ping(&mut old), "{id}: the first connection works");
        let mut new = accepted(*b_listen, &c);
        let (got, closed) = packets_until_close(&mut old);
        assert!(
            closed,
            "{id}: the older connection (gate-a, node1) is closed"
        );
        if v5 {
            let disconnect = got.iter().find(|(first, _)| *first == 0xE0);
            assert_eq!(
                disconnect.map(|(_, body)| body.first().copied()),
                Some(Some(0x8E)),
                "{id}: MQTT 5 DISCONNECT \"session taken over\" first; got {got:02x?}"
            );
        } else {
            assert!(
                got.iter().all(|(first, _)| *first != 0xE0),
                "{id}: 3.1.1 gets a plain close; got {got:02x?}"
            );
        }
        assert!(
            ping(&mut new),
            "{id}: the newer connection (gate-b, node2) stays"
        );
    }
    assert_eq!(
        a.metric("mqgate_session_takeovers_total", &[("cluster", "brokers")]),
        2.0
    );
    assert_eq!(
        b.metric("mqgate_session_takeovers_total", &[("cluster", "brokers")]),
        0.0
    );
    assert_eq!(
        a.metric(
            "mqgate_disconnects_sent_total",
            &[("cluster", "brokers"), ("reason", "session_taken_over")]
        ),
        1.0
    );
}

/// An id fought over by two source addresses: past `takeover_limit` takeovers the id
/// is refused for the hold-down (MQTT 5: 0x85, 3.1.1: 0x02), counted and logged with
/// both addresses. One gateway over two nodes, round-robin: consecutive connections
/// land on different nodes, so the gateway closes the older ones itself. Off by
/// default (both stay), turned on by a reload.
#[test]
fn an_id_fight_between_two_addresses_is_held_down() {
    let two = Ipv4Addr::new(127, 0, 0, 2);
    if std::net::TcpListener::bind((two, 0)).is_err() {
        eprintln!("127.0.0.2 not bindable here; skipping");
        return;
    }
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 2);
    let config = |listen: u16, admin: u16, sessions: &str| {
        gate_config(
            listen,
            admin,
            "dynsec",
            &addresses(&nodes),
            "balance = \"round-robin\"\n",
            "",
            sessions,
        )
    };
    let (gate, listen) = Gate::start_with(dir.path(), "gate", |listen, admin| {
        config(listen, admin, "")
    });
    gate.wait_node_up("node1");
    gate.wait_node_up("node2");
    // Off (the default): two connections with one id on the two nodes both stay.
    let c3 = Connect::new("double");
    let (mut first, _) = connect_from(Ipv4Addr::LOCALHOST, listen, &c3).expect("first");
    let (mut second, _) = connect_from(two, listen, &c3).expect("second");
    assert!(
        ping(&mut first) && ping(&mut second),
        "without single_live both stay live"
    );
    drop((first, second));
    // Turned on by a reload.
    gate.reload_with(&config(
        listen,
        gate.admin_port,
        "[clusters.brokers.sessions]\nsingle_live = true\ntakeover_limit = 2\n\
         takeover_window = \"5m\"\ntakeover_holddown = \"5m\"\n",
    ));
    let c = Connect::new("fighter").v5(true);
    let mut live: Option<TcpStream> = None;
    // Four connections alternating between the two addresses: three takeovers from
    // another address, one over the limit.
    for (n, from) in [Ipv4Addr::LOCALHOST, two, Ipv4Addr::LOCALHOST, two]
        .into_iter()
        .enumerate()
    {
        let (mut s, code) = connect_from(from, listen, &c).expect("connect");
        assert_eq!(code, 0, "connection {n} from {from} is accepted");
        if let Some(mut old) = live.take() {
            let (_, closed) = packets_until_close(&mut old);
            assert!(closed, "connection {n} closed the older one");
        }
        assert!(ping(&mut s), "connection {n} works");
        live = Some(s);
    }
    wait_until(T, "the id is held down", || {
        gate.metric(
            "mqgate_session_id_holddowns_total",
            &[("cluster", "brokers")],
        ) == 1.0
    });
    for (from, v5, want) in [(Ipv4Addr::LOCALHOST, true, 0x85), (two, false, 0x02)] {
        let (mut s, code) =
            connect_from(from, listen, &Connect::new("fighter").v5(v5)).expect("connect");
        assert_eq!(code, want, "refused during the hold-down (v5 {v5})");
        assert_eq!(read_to_close(&mut s, T).1, Ended::Eof, "then closed");
    }
    assert_eq!(
        gate.metric(
            "mqgate_connections_rejected_total",
            &[("listener", "mqtt"), ("reason", "id_fight")]
        ),
        2.0
    );
    // The connection live when the hold-down began stays; other ids are not affected.
    let mut kept = live.expect("live connection");
    assert!(ping(&mut kept), "the live connection stays");
    let mut other = accepted(listen, &Connect::new("bystander").v5(true));
    assert!(ping(&mut other));
    let log = gate.log_text();
    assert!(
        log.contains("client id fight") && log.contains("127.0.0.1 and 127.0.0.2"),
        "the fight is logged with both addresses:\n{log}"
    );
}
