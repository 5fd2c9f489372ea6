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
//!
//! `reuseport`: restarts over SO_REUSEPORT; `handover`: restarts with `--handover`;
//! `handover_guard`: what the handover socket refuses. The helpers here are shared by
//! them.

mod handover;
mod handover_guard;
mod reuseport;

use crate::common::fleet::wait_exit;
use crate::common::mqtt::DISCONNECT;
use crate::common::*;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// CONNECT (keep alive 30 s), CONNACK, DISCONNECT. `persistent` sends clean session = 0.
fn session(port: u16, id: &str, persistent: bool) -> Result<(), String> {
    let connect = Connect::new(id).keep_alive(30).clean(!persistent);
    let mut s = crate::common::mqtt::session(port, &connect)?;
    s.write_all(&DISCONNECT)
        .map_err(|e| format!("DISCONNECT: {e}"))
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

/// The handover socket file of the `--handover` tests, in their temporary directory.
const HANDOVER_SOCK: &str = "handover.sock";

/// What the `--handover` tests share: a broker, one client port, and the handover
/// socket's path, in a temporary directory.
struct Handover {
    broker: Mosquitto,
    dir: tempfile::TempDir,
    sock: std::path::PathBuf,
    listen: u16,
}

impl Handover {
    fn new() -> Handover {
        let dir = tempdir();
        let broker = Mosquitto::start("b1", dir.path());
        let sock = dir.path().join(HANDOVER_SOCK);
        Handover {
            broker,
            dir,
            sock,
            listen: free_port(),
        }
    }

    /// A gateway on [`config`] (the client port, admin API `admin`) started as `name`
    /// with `--handover SOCK`; returned once its node is up and the socket file exists.
    fn start(&self, name: &str, admin: u16) -> Gate {
        let sock_arg = self.sock.display().to_string();
        let toml = config(admin, self.listen, &self.broker, "");
        let g = Gate::start_args(
            self.dir.path(),
            name,
            &toml,
            admin,
            &["--handover", &sock_arg],
        );
        wait_until(Duration::from_secs(10), "node up", || {
            g.metric("mqgate_node_up", &[]) == 1.0
        });
        wait_until(Duration::from_secs(10), "handover socket file", || {
            self.sock.exists()
        });
        g
    }
}

/// A config with one plain listener on 127.0.0.1:`listen` and a node nobody listens on:
/// enough for a process that takes (or fails to take) sockets over the handover socket.
fn brokerless_config(admin: u16, listen: u16) -> String {
    format!(
        "{}\n[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:{listen}\"\ncluster = \"brokers\"\n\n\
         [clusters.brokers]\nmode = \"dynsec\"\nnodes = [ {{ name = \"b1\", address = \"127.0.0.1:1\" }} ]\n",
        Gate::admin_section(admin)
    )
}
