//! Zero-downtime restart: a second mqgate process binds the same client port
//! (SO_REUSEPORT) while the first one drains after SIGTERM. Clients connect in a tight
//! loop throughout and every failed connect is counted; the sticky table is taken over
//! from the old process through the peer link (the new process is configured as the
//! old one's peer).
//!
//! Guaranteed lossless only with `net.ipv4.tcp_migrate_req = 1`: otherwise Linux resets
//! connections that reach the old socket's queues between its last accept and its close
//! (measured: 2 in 99 restarts). With the sysctl set the tests require zero failures;
//! without it they allow a handful and print the count (see docs/hardening.md).
//!
//! With `mqgate run --handover PATH` the new process takes the old one's listening
//! sockets themselves (SCM_RIGHTS over a Unix socket): the accept queue outlives the
//! old process, and that test requires zero failures whatever the sysctl says.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// CONNECT, CONNACK, DISCONNECT. `persistent` sends clean session = 0.
fn session(port: u16, id: &str, persistent: bool) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut body = b"\x00\x04MQTT\x04".to_vec();
    body.push(if persistent { 0x00 } else { 0x02 });
    body.extend_from_slice(&[0x00, 0x1e]);
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut pkt = vec![0x10, body.len() as u8];
    pkt.extend(body);
    s.write_all(&pkt).map_err(|e| format!("write: {e}"))?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack)
        .map_err(|e| format!("CONNACK: {e}"))?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(format!("CONNACK {ack:02x?}"));
    }
    s.write_all(&[0xe0, 0x00])
        .map_err(|e| format!("DISCONNECT: {e}"))?;
    Ok(())
}

struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    /// `n` threads connecting back to back.
    fn start(port: u16, n: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..n)
            .map(|t| {
                let (stop, ok, failed, errors) =
                    (stop.clone(), ok.clone(), failed.clone(), errors.clone());
                std::thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        match session(port, &format!("steady-{t}-{i}"), false) {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                errors.lock().unwrap().push(e);
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            ok,
            failed,
            errors,
            threads,
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("traffic thread");
        }
        let errors = self.errors.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

/// Failed connects tolerated: none when the kernel migrates the closing listener's
/// queue to the new process, else the few that were in flight in that queue.
fn allowed_failures() -> usize {
    let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").unwrap_or_default();
    if migrate.trim() == "1" {
        0
    } else {
        eprintln!("net.ipv4.tcp_migrate_req is not 1: connections queued on the old listener may be reset");
        5
    }
}

fn config(admin: u16, listen: u16, broker: &Mosquitto, peers: &str) -> String {
    format!(
        "[limits]\nshutdown_grace = \"3s\"\n{peers}\n{}",
        basic_config(
            listen,
            admin,
            "dynsec",
            &[broker],
            "[clusters.brokers.sticky]\nkey = \"client_id\"\nsessions = \"persistent\"\n"
        )
    )
}

/// Start `new`, check it takes clients, SIGTERM `old`; traffic runs throughout.
fn restart(
    old: &mut Gate,
    dir: &std::path::Path,
    toml: &str,
    admin: u16,
    traffic: &Traffic,
) -> Gate {
    let base = traffic.ok();
    wait_until(Duration::from_secs(10), "steady traffic", || {
        traffic.ok() > base + 50
    });
    let new = Gate::start(dir, "gate-new", toml, admin);
    wait_until(Duration::from_secs(10), "new process takes clients", || {
        new.metric("mqgate_connections_total", &[]) > 10.0
    });
    let t = Instant::now();
    assert_eq!(old.stop(), Some(0), "old process drains and exits 0");
    eprintln!("old process exited {:?} after SIGTERM", t.elapsed());
    let base = traffic.ok();
    wait_until(Duration::from_secs(10), "traffic continues", || {
        traffic.ok() > base + 100
    });
    new
}

#[test]
fn restart_under_steady_connect_traffic_counts_failed_connects() {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let (admin_a, admin_b, listen) = (free_port(), free_port(), free_port());
    let mut a = Gate::start(
        dir.path(),
        "gate-old",
        &config(admin_a, listen, &broker, ""),
        admin_a,
    );
    wait_until(Duration::from_secs(10), "node up", || {
        a.metric("mqgate_node_up", &[]) == 1.0
    });
    let traffic = Traffic::start(listen, 4);
    let b = restart(
        &mut a,
        dir.path(),
        &config(admin_b, listen, &broker, ""),
        admin_b,
        &traffic,
    );
    let (ok, failed, errors) = traffic.finish();
    eprintln!(
        "restart: {ok} connects, {failed} failed: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert!(b.log_text().contains("listening"));
    assert!(
        failed <= allowed_failures(),
        "failed connects during the restart: {errors:?}"
    );
}

#[test]
fn new_process_takes_the_sticky_table_over_from_the_old_one_as_a_peer() {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let secret = dir.path().join("peers.secret");
    std::fs::write(&secret, "restart-test-secret\n").unwrap();
    let (admin_a, admin_b, listen, peer_a, peer_b) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let peers = |me: &str, bind: u16, other: &str, other_port: u16| {
        format!(
            "[peers]\nname = \"{me}\"\nbind = \"127.0.0.1:{bind}\"\nsecret_file = \"{}\"\n\
             peers = [ {{ name = \"{other}\", address = \"127.0.0.1:{other_port}\" }} ]\n",
            secret.display()
        )
    };
    let toml_a = config(
        admin_a,
        listen,
        &broker,
        &peers("gate-old", peer_a, "gate-new", peer_b),
    );
    let toml_b = config(
        admin_b,
        listen,
        &broker,
        &peers("gate-new", peer_b, "gate-old", peer_a),
    );
    let mut a = Gate::start(dir.path(), "gate-old", &toml_a, admin_a);
    wait_until(Duration::from_secs(10), "node up", || {
        a.metric("mqgate_node_up", &[]) == 1.0
    });
    for i in 0..20 {
        session(listen, &format!("keeper-{i}"), true).expect("persistent client");
    }
    let sticky = |port: u16, key: &str| {
        http(
            "GET",
            port,
            &format!("/api/v1/clusters/brokers/sticky/{key}"),
            None,
            None,
        )
        .map(|(s, _)| s)
        .unwrap_or(0)
    };
    assert_eq!(sticky(admin_a, "keeper-7"), 200);

    let traffic = Traffic::start(listen, 2);
    let _new = restart(&mut a, dir.path(), &toml_b, admin_b, &traffic);
    let (ok, failed, errors) = traffic.finish();
    eprintln!(
        "restart with peers: {ok} connects, {failed} failed: {:?}",
        &errors[..errors.len().min(5)]
    );
    for i in 0..20 {
        assert_eq!(
            sticky(admin_b, &format!("keeper-{i}")),
            200,
            "keeper-{i} taken over"
        );
    }
    assert!(
        failed <= allowed_failures(),
        "failed connects during the restart: {errors:?}"
    );
}

/// The handover socket file of the `--handover` tests, in their temporary directory.
const HANDOVER_SOCK: &str = "handover.sock";

/// A gateway started with `--handover dir/HANDOVER_SOCK`; returned once its node is up
/// and the socket file exists.
fn start_with_handover(dir: &std::path::Path, name: &str, toml: &str, admin: u16) -> Gate {
    let sock = dir.join(HANDOVER_SOCK);
    let sock_arg = sock.display().to_string();
    let g = Gate::start_args(dir, name, toml, admin, &["--handover", &sock_arg]);
    wait_until(Duration::from_secs(10), "node up", || {
        g.metric("mqgate_node_up", &[]) == 1.0
    });
    wait_until(Duration::from_secs(10), "handover socket file", || {
        sock.exists()
    });
    g
}

/// `--handover`: each new process takes the listening socket from the running one,
/// which then shuts down by itself. Two restarts in a row under steady connects; not
/// one connect may fail, whatever `tcp_migrate_req` says.
#[test]
fn handover_of_listening_sockets_loses_no_connects() {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let sock = dir.path().join(HANDOVER_SOCK);
    let listen = free_port();
    let admin = free_port();
    let mut old = start_with_handover(
        dir.path(),
        "gate-1",
        &config(admin, listen, &broker, ""),
        admin,
    );
    let traffic = Traffic::start(listen, 4);
    for i in 2..=3 {
        let base = traffic.ok();
        wait_until(Duration::from_secs(10), "steady traffic", || {
            traffic.ok() > base + 50
        });
        // The second handover uses the very same config (admin address included,
        // bound with SO_REUSEPORT next to the old one's): one command line for every
        // restart.
        let admin = if i == 2 { free_port() } else { old.admin_port };
        let new = start_with_handover(
            dir.path(),
            &format!("gate-{i}"),
            &config(admin, listen, &broker, ""),
            admin,
        );
        assert_eq!(
            old.wait_exit(Duration::from_secs(20)),
            Some(0),
            "the old process shuts down by itself after the handover, exit 0"
        );
        assert!(old
            .log_text()
            .contains("handover: the new process runs on our sockets"));
        assert!(new
            .log_text()
            .contains("handover: listening socket received"));
        let base = traffic.ok();
        wait_until(Duration::from_secs(10), "traffic continues", || {
            traffic.ok() > base + 100
        });
        assert!(new.metric("mqgate_connections_total", &[]) > 100.0);
        old = new;
    }
    let (ok, failed, errors) = traffic.finish();
    eprintln!(
        "handover: {ok} connects, {failed} failed: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert_eq!(
        failed, 0,
        "failed connects during the handovers: {errors:?}"
    );
    assert_eq!(old.stop(), Some(0));
    assert!(
        !sock.exists(),
        "the last process removes its handover socket file"
    );
}

/// A new process that cannot start (here: a second listener on a port taken by
/// another program) exits with an error before confirming; the old process keeps its
/// sockets and clients, and still hands over to the next, correct, process.
#[test]
fn failed_handover_leaves_the_old_process_serving() {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let sock = dir.path().join(HANDOVER_SOCK);
    let (listen, admin) = (free_port(), free_port());
    let good = config(admin, listen, &broker, "");
    let mut old = start_with_handover(dir.path(), "gate-old", &good, admin);

    let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind blocker");
    let taken = blocker.local_addr().expect("blocker addr").port();
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(
        &bad_toml,
        format!(
            "{good}\n[[listeners]]\nname = \"second\"\nbind = \"127.0.0.1:{taken}\"\ncluster = \"brokers\"\n"
        ),
    )
    .expect("write bad config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqgate"))
        .args(["run", "-c"])
        .arg(&bad_toml)
        .arg("--handover")
        .arg(&sock)
        .output()
        .expect("run the failing process");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the new process fails: {stderr}"
    );
    assert!(stderr.contains("cannot bind"), "{stderr}");

    old.wait_log("did not confirm");
    session(listen, "still-served", false).expect("the old process still serves clients");
    assert!(
        sock.exists(),
        "the old process still serves the handover socket"
    );

    let admin2 = free_port();
    let _new = start_with_handover(
        dir.path(),
        "gate-new",
        &config(admin2, listen, &broker, ""),
        admin2,
    );
    assert_eq!(old.wait_exit(Duration::from_secs(20)), Some(0));
    session(listen, "after-handover", false).expect("the new process serves clients");
    drop(blocker);
}
