//! splice(2) for large flows (`[limits] splice`, `max_pipes`) with a real Mosquitto and
//! raw MQTT clients: 64 KB, 1 MB and 10 MB messages arrive intact and in order, byte
//! counters and access-log totals are those of the copy path, a half-close and a
//! client's reset in the middle of a spliced transfer behave as without splice, a
//! broker that stops reading backpressures the client with bounded memory and pipes,
//! transfers complete by copying when no pipe is left, and `splice = "off"` (the
//! default; also by reload) keeps every byte on the copy path.

use crate::common::mqtt::read_packet;
use crate::common::*;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIZES: [usize; 3] = [64 << 10, 1 << 20, 10 << 20];

/// One broker and one gateway (listener `mqgate`, `limits` lines added); health checked
/// once at start only, so that a paused broker is not marked down.
struct Setup {
    gate: Gate,
    broker: Mosquitto,
    _dir: tempfile::TempDir,
    port: u16,
    admin: u16,
    access: std::path::PathBuf,
}

fn config(
    port: u16,
    admin: u16,
    broker: &Mosquitto,
    limits: &str,
    access: &std::path::Path,
) -> String {
    let mut toml = basic_config(port, admin, "dynsec", &[broker], "");
    let i = toml
        .find("[clusters.brokers.health]")
        .expect("health section");
    toml.truncate(i);
    toml.push_str("[clusters.brokers.health]\ninterval = \"1h\"\nrise = 1\nfall = 1\n");
    toml.push_str(&format!(
        "\n[log]\naccess = \"{}\"\naccess_format = \"json\"\n\n[limits]\n{limits}\n",
        access.display()
    ));
    toml
}

fn setup(limits: &str) -> Setup {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let (port, admin) = (free_port(), free_port());
    let access = dir.path().join("access.log");
    let toml = config(port, admin, &broker, limits, &access);
    let gate = Gate::start(dir.path(), "gate", &toml, admin);
    gate.wait_node_up("b1");
    Setup {
        gate,
        broker,
        _dir: dir,
        port,
        admin,
        access,
    }
}

/// A deterministic payload of `len` bytes for message `seq` (xorshift).
fn payload(seq: u64, len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (seq + 1).wrapping_mul(0x1000_0000_01B3);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A QoS 0 PUBLISH of `body` on `topic`.
fn publish(topic: &str, body: &[u8]) -> Vec<u8> {
    let mut b = mqtt_field(topic.as_bytes());
    b.extend_from_slice(body);
    mqtt_packet(0x30, &b)
}

/// A raw 3.1.1 session on `port` subscribed to `filter` (QoS 0).
fn subscriber(port: u16, id: &str, filter: &str) -> TcpStream {
    let mut s = raw_session(port, id);
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    s.write_all(&subscribe_v311(1, filter, 0))
        .expect("SUBSCRIBE");
    let (kind, _) = read_packet(&mut s).expect("SUBACK");
    assert_eq!(kind, 0x90, "SUBACK");
    s
}

/// The next PUBLISH's (topic, payload), skipping nothing else (only PUBLISHes come).
fn next_publish(s: &mut TcpStream) -> (String, Vec<u8>) {
    let (kind, body) = read_packet(s).expect("a PUBLISH");
    assert_eq!(kind & 0xF0, 0x30, "PUBLISH, got {kind:#04x}");
    let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let topic = String::from_utf8_lossy(&body[2..2 + tlen]).to_string();
    (topic, body[2 + tlen..].to_vec())
}

fn metric(s: &Setup, name: &str) -> f64 {
    s.gate.metric(name, &[])
}

fn bytes(s: &Setup, dir: &str) -> f64 {
    s.gate.metric("mqgate_bytes_total", &[("direction", dir)])
}

/// Publish every size of [`SIZES`] in order from a session through `port`, and check
/// that a subscriber through `port` gets each intact and in order. Returns the bytes
/// the publisher sent after its CONNECT.
fn large_round_trip(port: u16, tag: &str) -> u64 {
    let topic = format!("big/{tag}");
    let mut sub = subscriber(port, &format!("{tag}-sub"), &topic);
    let reader = std::thread::spawn(move || {
        SIZES
            .iter()
            .enumerate()
            .map(|(i, len)| {
                let (t, got) = next_publish(&mut sub);
                (t, i, *len, got == payload(i as u64, *len))
            })
            .collect::<Vec<_>>()
    });
    let mut publ = raw_session(port, &format!("{tag}-pub"));
    let mut sent = 0u64;
    for (i, len) in SIZES.iter().enumerate() {
        let p = publish(&topic, &payload(i as u64, *len));
        publ.write_all(&p).expect("PUBLISH");
        sent += p.len() as u64;
    }
    let got = reader.join().expect("subscriber thread");
    for (t, i, len, intact) in got {
        assert_eq!(t, topic);
        assert!(
            intact,
            "message {i} ({len} bytes) arrived intact and in order"
        );
    }
    assert!(ping(&mut publ), "the publisher's session is alive");
    sent
}

/// The access-log lines (JSON) of sessions whose client id starts with `prefix`:
/// (to_broker, to_client) each.
fn access_totals(path: &std::path::Path, prefix: &str) -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["client_id"]
                .as_str()
                .is_some_and(|c| c.starts_with(prefix))
        })
        .map(|v| {
            (
                v["to_broker"].as_u64().unwrap_or(0),
                v["to_client"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    out.sort_unstable();
    out
}

#[test]
fn large_messages_arrive_intact_and_counted_as_on_the_copy_path() {
    // Two gateways in front of one broker: splice on (pipes from the open-file limit
    // beside 1,000 connections) and off. The same traffic through each.
    let on = setup("splice = \"auto\"\nmax_connections = 1000\n");
    let dir = tempdir();
    let (port, admin) = (free_port(), free_port());
    let off_access = dir.path().join("access.log");
    // (splice = "off" is the default.)
    let off_toml = config(port, admin, &on.broker, "", &off_access);
    let off_gate = Gate::start(dir.path(), "gate-off", &off_toml, admin);
    off_gate.wait_node_up("b1");

    // Tags of one length: the same packet sizes through both.
    let sent_on = large_round_trip(on.port, "sp");
    let sent_off = large_round_trip(port, "cp");
    assert_eq!(sent_on, sent_off);

    let spliced = metric(&on, "mqgate_spliced_bytes_total");
    assert!(
        spliced > 10e6,
        "most of the 11 MB were spliced, not copied: {spliced}"
    );
    assert_eq!(
        off_gate.metric("mqgate_spliced_bytes_total", &[]),
        0.0,
        "splice = \"off\": nothing spliced"
    );
    assert_eq!(off_gate.metric("mqgate_splice_pipes_open", &[]), 0.0);
    // Byte counters: the same traffic counts the same with and without splice.
    for d in ["to_broker", "to_client"] {
        assert_eq!(
            bytes(&on, d),
            off_gate.metric("mqgate_bytes_total", &[("direction", d)]),
            "mqgate_bytes_total{{direction={d}}}"
        );
    }
    assert!(bytes(&on, "to_broker") >= sent_on as f64);
    // The sessions ended (their clients closed); their access-log lines carry the
    // same byte totals.
    wait_until(Duration::from_secs(20), "access-log lines written", || {
        access_totals(&on.access, "sp-").len() == 2 && access_totals(&off_access, "cp-").len() == 2
    });
    let totals_on = access_totals(&on.access, "sp-");
    let totals_off = access_totals(&off_access, "cp-");
    assert_eq!(totals_on, totals_off, "access-log byte totals, on vs off");
    assert!(
        totals_on.iter().any(|(b, _)| *b >= sent_on),
        "{totals_on:?}"
    );
}

#[test]
fn no_pipe_left_means_copying_and_pipes_stay_within_max_pipes() {
    let s = setup("splice = \"auto\"\nmax_pipes = 1\n");
    // The one pipe, held: a 10 MB message to a subscriber that does not read yet. Its
    // flow through the gateway takes the pipe and stalls with bytes in it.
    let mut holder = subscriber(s.port, "few-holder", "big/hold");
    let mut direct = raw_session(s.broker.port, "few-direct");
    let held = payload(99, 10 << 20);
    direct
        .write_all(&publish("big/hold", &held))
        .expect("PUBLISH");
    wait_until(
        Duration::from_secs(20),
        "the stalled flow holds the pipe",
        || metric(&s, "mqgate_splice_pipes_in_use") == 1.0,
    );
    let spliced_before = metric(&s, "mqgate_spliced_bytes_total");

    // Two publishers into one subscriber, all through the gateway: three large flows,
    // no pipe for any of them.
    let topic = "big/few/+";
    let mut sub = subscriber(s.port, "few-sub", topic);
    let rounds = 8u64;
    let reader = std::thread::spawn(move || {
        let mut seen = std::collections::HashMap::<String, u64>::new();
        for _ in 0..2 * rounds {
            let (t, got) = next_publish(&mut sub);
            let n = seen.entry(t.clone()).or_default();
            assert!(
                got == payload(*n, 1 << 20),
                "{t}: message {n} intact, in order"
            );
            *n += 1;
        }
        seen
    });
    let max_open = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (max_open, done, admin) = (max_open.clone(), done.clone(), s.admin);
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let text = http("GET", admin, "/metrics", None, None)
                    .map(|(_, b)| b)
                    .unwrap_or_default();
                let open = metric_value(&text, "mqgate_splice_pipes_open", &[]);
                max_open.fetch_max(open as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20)); // polling interval
            }
        })
    };
    let pubs: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let port = s.port;
            std::thread::spawn(move || {
                let mut p = raw_session(port, &format!("few-{name}"));
                for i in 0..rounds {
                    p.write_all(&publish(&format!("big/few/{name}"), &payload(i, 1 << 20)))
                        .expect("PUBLISH");
                }
                assert!(ping(&mut p));
            })
        })
        .collect();
    for p in pubs {
        p.join().expect("publisher");
    }
    let seen = reader.join().expect("subscriber");
    done.store(true, Ordering::Relaxed);
    watcher.join().expect("watcher");
    assert_eq!(seen.values().sum::<u64>(), 2 * rounds);
    assert!(
        max_open.load(Ordering::Relaxed) <= 1,
        "never more than max_pipes = 1 pipe open"
    );
    assert!(
        metric(&s, "mqgate_splice_pipes_unavailable_total") >= 3.0,
        "the three large flows found no pipe"
    );
    // They moved 32 MB (16 in, 16 out); what was spliced meanwhile can only be the
    // held flow's last bytes.
    let spliced = metric(&s, "mqgate_spliced_bytes_total") - spliced_before;
    assert!(
        spliced < 10e6,
        "those flows were copied: {spliced} bytes spliced"
    );
    // The held flow completes intact; then no pipe is in use.
    let (_, got) = next_publish(&mut holder);
    assert!(got == held, "the held 10 MB message arrived intact");
    wait_until(Duration::from_secs(10), "the pipe given back", || {
        metric(&s, "mqgate_splice_pipes_in_use") == 0.0
    });
    assert!(metric(&s, "mqgate_splice_pipes_open") <= 1.0);

    // max_pipes = 0: no pipe at all, everything copied and intact.
    let text = config(
        s.port,
        s.admin,
        &s.broker,
        "splice = \"auto\"\nmax_pipes = 0\n",
        &s.access,
    );
    s.gate.reload_with(&text);
    let before = metric(&s, "mqgate_spliced_bytes_total");
    large_round_trip(s.port, "zero");
    assert_eq!(metric(&s, "mqgate_spliced_bytes_total"), before);
    assert_eq!(metric(&s, "mqgate_splice_pipes_open"), 0.0);
}

#[test]
fn reloading_splice_off_keeps_new_flows_on_the_copy_path() {
    let s = setup("splice = \"auto\"\nmax_pipes = 4\n");
    large_round_trip(s.port, "before");
    let spliced = metric(&s, "mqgate_spliced_bytes_total");
    assert!(spliced > 0.0, "spliced before the reload");
    let text = config(s.port, s.admin, &s.broker, "splice = \"off\"\n", &s.access);
    s.gate.reload_with(&text);
    assert_eq!(
        metric(&s, "mqgate_splice_pipes_open"),
        0.0,
        "idle pipes closed"
    );
    large_round_trip(s.port, "after");
    assert_eq!(
        metric(&s, "mqgate_spliced_bytes_total"),
        spliced,
        "nothing spliced after splice = \"off\""
    );
}

#[test]
fn a_half_close_after_a_spliced_transfer_arrives_after_every_byte() {
    let s = setup("splice = \"auto\"\nmax_pipes = 4\n");
    let mut sub = subscriber(s.broker.port, "hc-sub", "big/hc");
    let body = payload(7, 10 << 20);
    let mut publ = raw_session(s.port, "hc-pub");
    // The whole 10 MB PUBLISH, then FIN at once: the gateway is still splicing it
    // when the client's EOF arrives, and passes the EOF on only after its last byte.
    publ.write_all(&publish("big/hc", &body)).expect("PUBLISH");
    publ.shutdown(Shutdown::Write).expect("half-close");
    let (t, got) = next_publish(&mut sub);
    assert_eq!(t, "big/hc");
    assert!(
        got == body,
        "the 10 MB message arrived intact before the close"
    );
    // Mosquitto closes a client that sent EOF; the close comes back as a FIN.
    let (_, ended) = read_to_close(&mut publ, Duration::from_secs(20));
    assert_eq!(ended, Ended::Eof, "closed cleanly, as on the copy path");
    wait_until(Duration::from_secs(10), "session ended", || {
        s.gate
            .metric("mqgate_connections_active", &[("node", "b1")])
            == 0.0
    });
    assert!(metric(&s, "mqgate_spliced_bytes_total") > 0.0);
    assert_eq!(metric(&s, "mqgate_splice_pipes_in_use"), 0.0);
    assert!(ping(&mut sub), "the broker serves on");
}

#[test]
fn a_client_reset_in_the_middle_of_a_spliced_transfer_resets_the_broker_side_too() {
    let s = setup("splice = \"auto\"\nmax_pipes = 4\n");
    let b = s.broker.port;
    let before: Vec<u16> = local_ports_towards(b, "01");
    let mut sub = subscriber(s.port, "rst-sub", "big/rst");
    let upstream: Vec<u16> = local_ports_towards(b, "01")
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(upstream.len(), 1, "one relayed connection: {upstream:?}");
    // 10 MB messages from a publisher on the broker itself, while the subscriber reads
    // part of the first one and then aborts.
    let mut publ = raw_session(b, "rst-pub");
    publ.write_all(&publish("big/rst", &payload(1, 10 << 20)))
        .expect("PUBLISH");
    let mut head = [0u8; 256 << 10];
    std::io::Read::read_exact(&mut sub, &mut head).expect("the transfer started");
    wait_until(Duration::from_secs(10), "the flow is spliced", || {
        metric(&s, "mqgate_splice_pipes_in_use") >= 1.0
    });
    socket2::SockRef::from(&sub)
        .set_linger(Some(Duration::ZERO))
        .expect("linger 0");
    drop(sub);
    wait_until(Duration::from_secs(10), "relayed connection gone", || {
        !local_ports_towards(b, "01").contains(&upstream[0])
    });
    assert!(
        !local_ports_towards(b, "06").contains(&upstream[0]),
        "the gateway reset its broker connection (no TIME_WAIT), as on the copy path"
    );
    wait_until(Duration::from_secs(10), "the pipe is released", || {
        metric(&s, "mqgate_splice_pipes_in_use") == 0.0
    });
    assert!(metric(&s, "mqgate_splice_pipes_open") <= 4.0);
    // A new subscriber gets the next message whole: no stale bytes from the old pipe.
    let mut again = subscriber(s.port, "rst-sub2", "big/rst");
    publ.write_all(&publish("big/rst", &payload(2, 1 << 20)))
        .expect("PUBLISH");
    let (_, got) = next_publish(&mut again);
    assert!(got == payload(2, 1 << 20), "intact after the reset");
}

fn vm_rss_kb(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn signal_pid(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(st.success(), "kill -{sig} {pid}");
}

/// The largest TCP receive and send buffers the kernel autotunes to (third fields of
/// `tcp_rmem` and `tcp_wmem`).
fn tcp_buffer_max() -> u64 {
    ["tcp_rmem", "tcp_wmem"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/{f}"))
                .ok()
                .and_then(|t| t.split_whitespace().nth(2)?.parse::<u64>().ok())
                .unwrap_or(32 << 20)
        })
        .sum()
}

/// Message `i` of the backpressure test: its number, then a fixed 1 MB pattern.
fn numbered(i: u64, pattern: &[u8]) -> Vec<u8> {
    let mut m = i.to_be_bytes().to_vec();
    m.extend_from_slice(pattern);
    m
}

#[test]
fn a_broker_that_stops_reading_backpressures_the_client_with_bounded_memory() {
    let s = setup("splice = \"auto\"\nmax_pipes = 4\n");
    let gate_pid = s.gate.pid().expect("gateway pid");
    let broker_pid = s.broker.pid().expect("broker pid");
    let pattern = Arc::new(payload(0, 1 << 20));
    let mut sub = subscriber(s.broker.port, "bp-sub", "big/bp");
    let mut publ = raw_session(s.port, "bp-pub");
    // Warm up the splice path, then stop the broker.
    publ.write_all(&publish("big/bp", &numbered(0, &pattern)))
        .expect("PUBLISH");
    assert!(next_publish(&mut sub).1 == numbered(0, &pattern));
    let rss_before = vm_rss_kb(gate_pid);
    signal_pid(broker_pid, "STOP");
    // What the kernel may hold between client and broker: the client's send buffer,
    // the gateway's receive and send buffers, the broker's receive buffer (each at
    // most the autotuning maximum), and one pipe. Offer four times that.
    let kernel = 2 * tcp_buffer_max() + (1 << 20);
    let total = 4 * kernel / (1 << 20);
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (written, pattern) = (written.clone(), pattern.clone());
        let mut p = publ.try_clone().expect("clone");
        p.set_write_timeout(None).expect("blocking writes");
        std::thread::spawn(move || {
            for i in 1..=total {
                let m = publish("big/bp", &numbered(i, &pattern));
                if p.write_all(&m).is_err() {
                    return;
                }
                written.fetch_add(m.len() as u64, Ordering::Relaxed);
            }
        })
    };
    // Wait until the writer has made no progress for a second.
    let mut last = (u64::MAX, Instant::now());
    wait_until(Duration::from_secs(60), "the client is blocked", || {
        let now = written.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
        last.1.elapsed() > Duration::from_secs(1)
    });
    let blocked_at = written.load(Ordering::Relaxed);
    assert!(
        blocked_at <= kernel + (2 << 20),
        "the client was backpressured after {blocked_at} bytes (kernel buffers: {kernel})"
    );
    assert!(!writer.is_finished(), "the writer is blocked");
    let rss_growth = vm_rss_kb(gate_pid).saturating_sub(rss_before);
    assert!(
        rss_growth < 16 * 1024,
        "the gateway buffered nothing in memory: RSS grew by {rss_growth} kB"
    );
    assert!(
        metric(&s, "mqgate_splice_pipes_in_use") <= 1.0,
        "one pipe (the stopped flow's) at most"
    );
    // The broker resumes: everything arrives, intact and in order.
    signal_pid(broker_pid, "CONT");
    for i in 1..=total {
        let (_, got) = next_publish(&mut sub);
        assert!(
            got == numbered(i, &pattern),
            "message {i} intact after the stall"
        );
    }
    writer.join().expect("writer");
}

#[test]
fn check_takes_splice_and_max_pipes_and_names_bad_values() {
    let dir = tempdir();
    let path = dir.path().join("s.toml");
    let base = "[[listeners]]\nname = \"m\"\nbind = \"127.0.0.1:0\"\ncluster = \"c\"\n\
                [clusters.c]\nnodes = [ { name = \"n\", address = \"127.0.0.1:1883\" } ]\n";
    std::fs::write(
        &path,
        format!("[limits]\nsplice = \"auto\"\nmax_pipes = 8\n{base}"),
    )
    .expect("write");
    let (code, _, err) = mqgate_check(&path);
    assert_eq!(code, Some(0), "{err}");
    std::fs::write(
        &path,
        format!("[limits]\nsplice = \"on\"\nmax_pipes = -1\n{base}"),
    )
    .expect("write");
    let (code, out, err) = mqgate_check(&path);
    let all = format!("{out}{err}");
    assert_eq!(code, Some(1), "{all}");
    assert!(
        all.contains("limits.splice") && all.contains("\"on\""),
        "{all}"
    );
    assert!(all.contains("limits.max_pipes"), "{all}");
    assert!(
        all.contains("s.toml:2:") && all.contains("s.toml:3:"),
        "file and line named: {all}"
    );
}
