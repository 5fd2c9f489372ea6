//! The gateway in the test's own runtime ([`crate::common::inproc`]), with tokio's
//! paused clock: the deadlines are tested at their shipped defaults (10 s for the
//! CONNECT packet, 5 s of queue, 10 s for the broker's CONNACK) in virtual time, and
//! each test takes milliseconds. The same behaviours with short deadlines, their log
//! lines and the real binary are in `bad_input.rs`; with a real broker in
//! `a_client_held_until_its_broker_starts_is_routed_in_process` below.

use crate::common::inproc::{client, closed_address, config, read_until_close, InProc};
use crate::common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const REJECTED: &str = "mqgate_connections_rejected_total";

/// A client that sends nothing, or half a CONNECT, is closed when the default
/// `connect_packet_timeout` (10 s) runs out, and counted as `reason="timeout"`.
#[tokio::test(start_paused = true)]
async fn the_connect_deadline_closes_silent_and_slow_clients_at_ten_seconds() {
    let node = closed_address().await;
    let g = InProc::start(&config("dynsec", &[("b1", node)], "")).await;
    let addr = g.listener("mqtt");
    let half = &connect_v311("slowpoke")[..5];
    for (what, bytes) in [("silent", &[][..]), ("half a CONNECT", half)] {
        let start = Instant::now();
        let mut c = client(addr, bytes).await;
        let got = read_until_close(&mut c).await;
        let waited = start.elapsed();
        assert_eq!(got, [0u8; 0], "{what}: closed without a reply");
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
            "{what}: closed after {waited:?} of virtual time, expected the 10 s default"
        );
    }
    assert_eq!(g.metric(REJECTED, &[("reason", "timeout")]), 2.0);
    g.stop().await;
}

/// No node is up: a client is held for the default `queue_timeout` (5 s), then gets
/// `no_node_reply`; with `"connack"`, CONNACK 0x03 (3.1.1) / 0x88 (5.0).
#[tokio::test(start_paused = true)]
async fn a_held_client_gets_the_no_node_reply_after_five_seconds() {
    let node = closed_address().await;
    let extra = "no_node_reply = \"connack\"\n\
                 [clusters.brokers.health]\ninterval = \"1s\"\nrise = 1\nfall = 1\n";
    let g = InProc::start(&config("dynsec", &[("b1", node)], extra)).await;
    g.wait_health("brokers", "b1", "down").await;
    let addr = g.listener("mqtt");
    for v5 in [false, true] {
        let start = Instant::now();
        let packet = if v5 {
            connect_v5("held5")
        } else {
            connect_v311("held3")
        };
        let mut c = client(addr, &packet).await;
        let got = read_until_close(&mut c).await;
        let waited = start.elapsed();
        if v5 {
            assert_eq!(got.get(..1), Some(&[0x20u8][..]), "v5: a CONNACK");
            assert_eq!(got.get(3), Some(&0x88), "v5: server unavailable: {got:?}");
        } else {
            assert_eq!(got, [0x20, 0x02, 0x00, 0x03], "3.1.1: server unavailable");
        }
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
            "held {waited:?} of virtual time, expected the 5 s default"
        );
    }
    assert_eq!(
        g.metric("mqgate_queue_total", &[("result", "timeout")]),
        2.0
    );
    assert_eq!(g.metric(REJECTED, &[("reason", "no_node")]), 2.0);
    g.stop().await;
}

/// A node that accepts TCP but never answers the CONNECT: the client gets "server
/// unavailable" when the default `connack_timeout` (10 s) runs out, counted as
/// `mqgate_connack_total{code="timeout"}`.
#[tokio::test(start_paused = true)]
async fn a_silent_broker_is_given_up_at_the_ten_second_connack_deadline() {
    let hole = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    };
    let hole_addr = match hole.local_addr() {
        Ok(a) => a.to_string(),
        Err(e) => panic!("addr: {e}"),
    };
    // Accepts and keeps every connection, reads nothing, answers nothing.
    tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            kept.push(s);
        }
    });
    let extra = "[clusters.brokers.health]\ncheck = \"tcp\"\ninterval = \"1h\"\nrise = 1\n";
    let g = InProc::start(&config("dynsec", &[("hole", hole_addr)], extra)).await;
    g.wait_health("brokers", "hole", "up").await;
    let start = Instant::now();
    let mut c = client(g.listener("mqtt"), &connect_v311("silent")).await;
    let got = read_until_close(&mut c).await;
    let waited = start.elapsed();
    assert_eq!(got, [0x20, 0x02, 0x00, 0x03], "server unavailable");
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "answered after {waited:?} of virtual time, expected the 10 s default"
    );
    assert_eq!(
        g.metric("mqgate_connack_total", &[("code", "timeout")]),
        1.0
    );
    g.stop().await;
}

/// In-process with a real broker (real time: the broker is another process): a client
/// whose CONNECT arrives while its only node is down is held, and routed on the same
/// connection once Mosquitto starts on the node's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_held_until_its_broker_starts_is_routed_in_process() {
    let dir = tempdir();
    let port = free_port();
    let extra = "queue_timeout = \"60s\"\n\
                 [clusters.brokers.health]\ninterval = \"200ms\"\nfast_interval = \"50ms\"\n\
                 down_interval = \"100ms\"\nrise = 1\nfall = 1\n";
    let node = format!("127.0.0.1:{port}");
    let g = InProc::start(&config("dynsec", &[("b1", node)], extra)).await;
    g.wait_health("brokers", "b1", "down").await;
    let mut c = client(g.listener("mqtt"), &connect_v311("held")).await;
    for _ in 0..200 {
        if g.metric("mqgate_queued_connections", &[("cluster", "brokers")]) == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        g.metric("mqgate_queued_connections", &[("cluster", "brokers")]),
        1.0,
        "the client is held"
    );
    let _broker = Mosquitto::start_on("b1", dir.path(), port, MosquittoOpts::default());
    let mut connack = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_secs(30), c.read_exact(&mut connack)).await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "CONNACK after the wait: {read:?}"
    );
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "accepted by the broker");
    // The session works: PINGREQ → PINGRESP through the relay.
    let mut pong = [0u8; 2];
    let ping = async {
        c.write_all(&[0xC0, 0x00]).await?;
        c.read_exact(&mut pong).await
    };
    let done = tokio::time::timeout(Duration::from_secs(10), ping).await;
    assert!(matches!(done, Ok(Ok(_))), "PINGRESP: {done:?}");
    assert_eq!(pong, [0xD0, 0x00]);
    assert_eq!(g.metric("mqgate_queue_total", &[("result", "routed")]), 1.0);
    drop(c);
    g.stop().await;
}
