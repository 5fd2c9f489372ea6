//! Hostile clients and faulty brokers against a real mqgate binary over a real
//! Mosquitto: silent and byte-a-second clients by the thousand, a declared 256 MB
//! CONNECT, a CONNECT flood, HTTP and TLS on the plain port, a broker that never sends
//! CONNACK, a broker that resets mid-stream, and running out of file descriptors.
//! Each test checks that the abuse is refused as SPEC section 3 says, that memory stays
//! bounded (VmRSS of the mqgate process), and that well-behaved clients are served
//! meanwhile. (Single refusals, `max_connections` and `per_ip_connect_rate` are in
//! `tests/bad_input.rs`.)

use crate::common::mqtt::{closed_within, session, DISCONNECT};
use crate::common::tools::PRLIMIT;
use crate::common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REJECTED: &str = "mqgate_connections_rejected_total";

/// An MQTT 3.1.1 CONNECT (clean session, keep alive 30 s).
fn connect(id: &str) -> Vec<u8> {
    Connect::new(id).keep_alive(30).bytes()
}

fn status_field(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rss_mb(gate: &Gate) -> u64 {
    status_field(gate.pid().expect("running"), "VmRSS:") / 1024
}

/// A well-behaved client: CONNECT, CONNACK, QoS 1 PUBLISH, PUBACK, DISCONNECT.
fn good_session(port: u16, id: &str) -> Result<(), String> {
    let mut s = session(port, &Connect::new(id).keep_alive(30))?;
    // PUBLISH QoS 1 "h/t" id 7 "x"
    s.write_all(&[0x32, 0x08, 0x00, 0x03, b'h', b'/', b't', 0x00, 0x07, b'x'])
        .map_err(|e| format!("publish: {e}"))?;
    let mut puback = [0u8; 4];
    s.read_exact(&mut puback)
        .map_err(|e| format!("PUBACK: {e}"))?;
    if puback != [0x40, 0x02, 0x00, 0x07] {
        return Err(format!("PUBACK {puback:02x?}"));
    }
    let _ = s.write_all(&DISCONNECT);
    Ok(())
}

fn gate_over(dir: &std::path::Path, broker: &Mosquitto, limits: &str) -> (Gate, u16) {
    let (admin, port) = (free_port(), free_port());
    let toml = format!(
        "[limits]\n{limits}\n{}",
        basic_config(port, admin, "dynsec", &[broker], "")
    );
    let gate = Gate::start(dir, "gate", &toml, admin);
    gate.wait_node_up(&broker.name);
    (gate, port)
}

#[test]
fn silent_and_slow_clients_time_out_while_others_are_served() {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let (gate, port) = gate_over(dir.path(), &broker, "connect_timeout = \"3s\"");
    let rss_before = rss_mb(&gate);

    // 1,000 that send nothing and 1,000 that trickle a CONNECT at one byte per second.
    let mut silent: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect silent"))
        .collect();
    let slow: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect slow"))
        .collect();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let trickler = std::thread::spawn(move || {
        let bytes = connect("slowpoke");
        let mut slow = slow;
        for b in bytes.iter().cycle() {
            if stop2.load(Ordering::Relaxed) {
                break;
            }
            for s in slow.iter_mut() {
                let _ = s.write(&[*b]);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        slow
    });

    // Meanwhile, legitimate clients connect and publish.
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(2) {
        good_session(port, &format!("good-{served}")).expect("legitimate client during the attack");
        served += 1;
    }
    assert!(served > 0);

    wait_until(
        Duration::from_secs(15),
        "2,000 closed at connect_timeout",
        || gate.metric(REJECTED, &[("reason", "timeout")]) == 2000.0,
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2900),
        "not before connect_timeout ({took:?})"
    );
    for s in silent.iter_mut().take(50) {
        assert!(
            closed_within(s, Duration::from_secs(2)),
            "silent client closed"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut slow = trickler.join().expect("trickler");
    for s in slow.iter_mut().take(50) {
        assert!(
            closed_within(s, Duration::from_secs(2)),
            "slow client closed"
        );
    }
    good_session(port, "good-after").expect("served after the attack");
    let rss = rss_mb(&gate);
    assert!(rss < 200, "RSS {rss} MB (was {rss_before} MB)");
    assert_eq!(
        gate.metric("mqgate_connections_total", &[]),
        served as f64 + 1.0
    );
}

#[test]
fn declared_256mb_connect_is_closed_without_buffering() {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let (gate, port) = gate_over(dir.path(), &broker, "");
    let junk = vec![0x41u8; 1 << 20];
    let sent = Arc::new(AtomicUsize::new(0));
    // 20 clients at once declare 268,435,455 bytes and then push as much as they can.
    let attackers: Vec<_> = (0..20)
        .map(|_| {
            let junk = junk.clone();
            let sent = sent.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                s.set_write_timeout(Some(Duration::from_secs(5)))
                    .expect("write timeout");
                let mut head = vec![0x10, 0xff, 0xff, 0xff, 0x7f, 0x00, 0x04];
                head.extend_from_slice(b"MQTT\x04\x02\x00\x3c");
                if s.write_all(&head).is_err() {
                    return;
                }
                for _ in 0..64 {
                    match s.write(&junk) {
                        Ok(n) => sent.fetch_add(n, Ordering::Relaxed),
                        Err(_) => break,
                    };
                }
            })
        })
        .collect();
    for a in attackers {
        a.join().expect("attacker");
    }
    wait_until(Duration::from_secs(10), "20 refused as too_large", || {
        gate.metric(REJECTED, &[("reason", "too_large")]) == 20.0
    });
    let rss = rss_mb(&gate);
    assert!(rss < 200, "RSS {rss} MB after 20 declared 256 MB CONNECTs");
    assert_eq!(
        gate.metric("mqgate_connections_total", &[]),
        0.0,
        "no broker contacted"
    );
    good_session(port, "after-huge").expect("served afterwards");
}

#[test]
fn connect_flood_is_served_and_junk_on_the_plain_port_is_refused() {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let (gate, port) = gate_over(dir.path(), &broker, "");
    let failures = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let failures = failures.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    if let Err(e) = good_session(port, &format!("flood-{w}-{i}")) {
                        eprintln!("flood {w}/{i}: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Junk in the middle of the flood: HTTP, a TLS ClientHello, a client leaving mid-CONNECT.
    let junk: [&[u8]; 3] = [
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        &[
            0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03,
        ],
        &connect("half")[..9],
    ];
    for _ in 0..20 {
        for (i, j) in junk.iter().enumerate() {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.write_all(j).expect("write junk");
            if i == 2 {
                s.shutdown(Shutdown::Both).expect("leave mid-CONNECT");
            } else {
                assert!(
                    closed_within(&mut s, Duration::from_secs(5)),
                    "junk {i} closed"
                );
            }
        }
    }
    for w in workers {
        w.join().expect("flood worker");
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "every flood client served"
    );
    wait_until(Duration::from_secs(5), "junk counted", || {
        gate.metric(REJECTED, &[("reason", "invalid")]) == 40.0
            && gate.metric(REJECTED, &[("reason", "closed")]) == 20.0
    });
    assert_eq!(gate.metric("mqgate_connections_total", &[]), 800.0);
    assert!(rss_mb(&gate) < 200);
}

/// A TCP "broker" that accepts and reads, and either never answers or answers a
/// CONNACK and then resets the connection on the first packet after it.
fn fake_broker(reset_after_connack: bool) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind fake broker");
    let port = l.local_addr().expect("fake broker address").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            acc.fetch_add(1, Ordering::Relaxed);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut answered = false;
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if !reset_after_connack {
                        continue;
                    }
                    if !answered {
                        let (connack, len) = mqgate::mqtt::connack_reply(false, 0);
                        answered = c.write_all(&connack[..len]).is_ok();
                    } else {
                        // SO_LINGER 0: close with RST.
                        let s2 = socket2::SockRef::from(&c);
                        let _ = s2.set_linger(Some(Duration::ZERO));
                        break;
                    }
                }
            });
        }
    });
    (port, accepted)
}

#[test]
fn silent_broker_and_resetting_broker_do_not_hurt_other_clients() {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let (silent_port, silent_accepted) = fake_broker(false);
    let (reset_port, _) = fake_broker(true);
    let (admin, good, silent, reset) = (free_port(), free_port(), free_port(), free_port());
    let listener = |name: &str, port: u16| {
        format!(
            "[[listeners]]\nname = \"{name}\"\nbind = \"127.0.0.1:{port}\"\ncluster = \"{name}\"\n"
        )
    };
    let cluster = |name: &str, addr: String| {
        format!(
            "[clusters.{name}]\nmode = \"dynsec\"\nnodes = [ {{ name = \"n\", address = \"{addr}\" }} ]\n\
             [clusters.{name}.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\nrise = 1\nfall = 1\n"
        )
    };
    let toml = [
        Gate::admin_section(admin),
        listener("good", good),
        listener("silent", silent),
        listener("reset", reset),
        cluster("good", broker.address()),
        cluster("silent", format!("127.0.0.1:{silent_port}")),
        cluster("reset", format!("127.0.0.1:{reset_port}")),
    ]
    .join("\n");
    let gate = Gate::start(dir.path(), "gate", &toml, admin);
    wait_until(Duration::from_secs(10), "3 nodes up", || {
        gate.metric("mqgate_node_up", &[]) == 3.0
    });

    // 200 clients whose broker never answers: they wait (mqgate sets no CONNACK deadline).
    let before = silent_accepted.load(Ordering::Relaxed);
    let mut waiting: Vec<TcpStream> = (0..200)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", silent)).expect("connect");
            s.write_all(&connect(&format!("wait-{i}"))).expect("write");
            s
        })
        .collect();
    wait_until(
        Duration::from_secs(10),
        "all forwarded to the silent broker",
        || silent_accepted.load(Ordering::Relaxed) >= before + 200,
    );
    for i in 0..20 {
        good_session(good, &format!("good-{i}")).expect("other clients unaffected");
    }
    for s in waiting.iter_mut().take(10) {
        assert!(
            !closed_within(s, Duration::from_millis(300)),
            "left waiting, not closed"
        );
    }

    // A broker resetting mid-stream: the client is closed promptly.
    let mut s = TcpStream::connect(("127.0.0.1", reset)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    s.write_all(&connect("victim")).expect("write");
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack)
        .expect("CONNACK from the fake broker");
    assert_eq!(ack, CONNACK_ACCEPTED);
    s.write_all(&[0xc0, 0x00]).expect("PINGREQ");
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "client closed after the reset"
    );
    good_session(good, "good-after-reset").expect("other clients unaffected");

    // Clients that give up on the silent broker are cleaned up.
    drop(waiting);
    wait_until(Duration::from_secs(10), "waiting sessions released", || {
        gate.metric("mqgate_connections_active", &[("cluster", "silent")]) == 0.0
    });
    assert!(rss_mb(&gate) < 200);
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" of the command name: utime and stime are 14th and 15th overall.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

#[test]
fn out_of_file_descriptors_backs_off_and_recovers() {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let (gate, port) = gate_over(dir.path(), &broker, "connect_timeout = \"30s\"");
    let pid = gate.pid().expect("pid");
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count();
    let limit = open + 16;
    let st = PRLIMIT
        .command()
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("run prlimit");
    assert!(st.success(), "prlimit");

    // Far more idle connections than descriptors left: the kernel queues them.
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    wait_until(Duration::from_secs(5), "accept fails with EMFILE", || {
        gate.log_text().contains("out of resources")
    });
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    std::thread::sleep(Duration::from_secs(3)); // the window CPU is measured over
    let ticks = cpu_ticks(pid) - c0;
    let hz = 100.0; // USER_HZ on Linux
    let share = ticks as f64 / hz / t0.elapsed().as_secs_f64();
    assert!(
        share < 0.5,
        "accept loop spins: {:.0}% of a core",
        share * 100.0
    );
    let warnings = gate.log_text().matches("out of resources").count();
    assert!(
        warnings < 60,
        "{warnings} accept-failure warnings: no backoff"
    );

    // Descriptors come back: health and clients are served again.
    drop(idle);
    wait_until(Duration::from_secs(10), "/healthz answers", || {
        http("GET", gate.admin_port, "/healthz", None, None)
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
    });
    wait_until(Duration::from_secs(10), "clients served again", || {
        good_session(port, "after-emfile").is_ok()
    });
}

/// Sticky entries cost bounded memory whatever the client id's length: 1,000 clients
/// with 60,000-byte client ids (Mosquitto accepts them) each leave an entry, and the
/// gateway grows by less than 16 MB (it grew by 63 MB when the ids were stored whole).
#[test]
fn long_client_ids_do_not_grow_the_sticky_table_without_bound() {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let (admin, port) = (free_port(), free_port());
    let toml = format!(
        "{}\n[clusters.brokers.sticky]\nsessions = \"all\"\n",
        basic_config(port, admin, "dynsec", &[&broker], "")
    );
    let gate = Gate::start(dir.path(), "gate", &toml, admin);
    gate.wait_node_up("b1");
    let one_session = |id: &str| {
        let mut s = session(port, &Connect::new(id).keep_alive(30))
            .unwrap_or_else(|e| panic!("CONNACK accepted: {e}"));
        let _ = s.write_all(&DISCONNECT);
    };
    for i in 0..20 {
        one_session(&format!("warm-up-{i}"));
    }
    let base = rss_mb(&gate);
    let tail = "x".repeat(60_000);
    for i in 0..1000 {
        one_session(&format!("{i:05}{tail}"));
    }
    wait_until(Duration::from_secs(10), "an entry per client", || {
        gate.metric("mqgate_sticky_entries", &[]) == 1020.0
    });
    // Freed pages go back to the system half a second after a burst (jemalloc's
    // background thread): poll for it.
    let mut grew = u64::MAX;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        grew = rss_mb(&gate).saturating_sub(base);
        if grew < 16 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(grew < 16, "RSS grew by {grew} MB for 1,000 sticky entries");
    // A long key is found again by the full client id (the admin API hashes it too).
    let key = format!("{:05}{tail}", 7);
    let entry = gate
        .metric("mqgate_sticky_lookups_total", &[("result", "hit")])
        .max(0.0);
    one_session(&key);
    assert_eq!(
        gate.metric("mqgate_sticky_lookups_total", &[("result", "hit")]),
        entry + 1.0,
        "the returning client is a sticky hit"
    );
}
