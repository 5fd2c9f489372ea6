//! Mosquitto brokers and mqgate gateways as child processes, their config files, the
//! `mqgate` command line and the Mosquitto client programs.

use super::admin::{http, metric_value};
use super::{free_port, port_open, wait_until};
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A Mosquitto broker child process, killed when dropped.
pub struct Mosquitto {
    pub port: u16,
    pub dir: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
    pub name: String,
}

/// Options for [`Mosquitto::start_with`].
#[derive(Default, Clone)]
pub struct MosquittoOpts {
    /// Extra lines for mosquitto.conf (after the listener line).
    pub extra: String,
    /// Refuse anonymous clients (allowed by default).
    pub deny_anonymous: bool,
}

impl Mosquitto {
    /// A broker named `name` on a free port, with its files in `dir/name`.
    pub fn start(name: &str, dir: &Path) -> Mosquitto {
        Self::start_with(name, dir, MosquittoOpts::default())
    }

    /// `n` brokers named `node1` … `node{n}`.
    pub fn start_nodes(dir: &Path, n: usize) -> Vec<Mosquitto> {
        (1..=n)
            .map(|i| Mosquitto::start(&format!("node{i}"), dir))
            .collect()
    }

    pub fn start_with(name: &str, dir: &Path, opts: MosquittoOpts) -> Mosquitto {
        Self::start_on(name, dir, free_port(), opts)
    }

    pub fn start_on(name: &str, dir: &Path, port: u16, opts: MosquittoOpts) -> Mosquitto {
        let bdir = dir.join(name);
        std::fs::create_dir_all(&bdir).expect("broker dir");
        let conf = bdir.join("mosquitto.conf");
        let text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous {}\npersistence false\nmax_queued_messages 10000\n{}\n",
            !opts.deny_anonymous, opts.extra
        );
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let mut m = Mosquitto {
            port,
            dir: bdir,
            conf,
            child: None,
            name: name.to_string(),
        };
        m.resume();
        m
    }

    /// Start (again) on the same port, e.g. after [`Mosquitto::stop`].
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .expect("broker log");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto; integration/test installs it)");
        self.child = Some(child);
        let port = self.port;
        wait_until(
            Duration::from_secs(10),
            &format!("mosquitto {} on port {port}", self.name),
            || port_open(port),
        );
    }

    /// Kill the broker (its client listener closes: a full-sync follower looks like this).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let port = self.port;
        wait_until(Duration::from_secs(10), "broker port closed", || {
            !port_open(port)
        });
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The broker's process id, while it runs (e.g. to stop it with SIGSTOP).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// (name, address) of each broker, as [`gate_config`] takes them.
pub fn addresses(nodes: &[Mosquitto]) -> Vec<(&str, String)> {
    nodes
        .iter()
        .map(|m| (m.name.as_str(), m.address()))
        .collect()
}

/// An `mqgate run` child process, killed when dropped (its log is printed if the test
/// failed).
pub struct Gate {
    pub config: PathBuf,
    pub admin_port: u16,
    pub log: PathBuf,
    /// Extra `mqgate run` arguments (e.g. `--handover PATH`).
    pub args: Vec<String>,
    /// Run mqgate in its own mount namespace with this file as `/etc/resolv.conf`
    /// (`unshare --mount`; see `common::dns`).
    pub resolv_conf: Option<PathBuf>,
    child: Option<Child>,
}

impl Gate {
    /// Write `toml` to `dir/name.toml` and start `mqgate run` on it; waits until the
    /// admin API answers. The TOML must contain `[admin] bind = "127.0.0.1:{admin_port}"`
    /// ([`Gate::admin_section`]).
    pub fn start(dir: &Path, name: &str, toml: &str, admin_port: u16) -> Gate {
        Gate::start_args(dir, name, toml, admin_port, &[])
    }

    /// [`Gate::start`] with extra `mqgate run` arguments.
    pub fn start_args(dir: &Path, name: &str, toml: &str, admin_port: u16, args: &[&str]) -> Gate {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).expect("write config");
        let log = dir.join(format!("{name}.log"));
        let mut g = Gate {
            config,
            admin_port,
            log,
            args: args.iter().map(|a| a.to_string()).collect(),
            resolv_conf: None,
            child: None,
        };
        g.resume();
        g
    }

    /// Start `mqgate run` on an existing config file (which may be a symlink, as in a
    /// ConfigMap volume); the log goes to `dir/name.log`.
    pub fn start_at(dir: &Path, name: &str, config: &Path, admin_port: u16) -> Gate {
        let mut g = Gate {
            config: config.to_path_buf(),
            admin_port,
            log: dir.join(format!("{name}.log")),
            args: Vec::new(),
            resolv_conf: None,
            child: None,
        };
        g.resume();
        g
    }

    /// [`Gate::start`] with `resolv_conf` bind-mounted over `/etc/resolv.conf` in a
    /// mount namespace of its own (the host's file is untouched).
    pub fn start_resolving(
        dir: &Path,
        name: &str,
        toml: &str,
        admin_port: u16,
        resolv_conf: &Path,
    ) -> Gate {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).expect("write config");
        let mut g = Gate {
            config,
            admin_port,
            log: dir.join(format!("{name}.log")),
            args: Vec::new(),
            resolv_conf: Some(resolv_conf.to_path_buf()),
            child: None,
        };
        g.resume();
        g
    }

    /// [`basic_config`] on free ports in front of `nodes`, started as `dir/gate.toml`;
    /// returns the gateway and its listener's port.
    pub fn basic(dir: &Path, mode: &str, nodes: &[&Mosquitto]) -> (Gate, u16) {
        Gate::start_with(dir, "gate", |listen, admin| {
            basic_config(listen, admin, mode, nodes, "")
        })
    }

    /// `config(listen, admin)` with two free ports, started as `dir/name.toml`;
    /// returns the gateway and the `listen` port.
    pub fn start_with(
        dir: &Path,
        name: &str,
        config: impl FnOnce(u16, u16) -> String,
    ) -> (Gate, u16) {
        let (listen, admin) = (free_port(), free_port());
        (
            Gate::start(dir, name, &config(listen, admin), admin),
            listen,
        )
    }

    /// Start (again) on the same config file.
    pub fn resume(&mut self) {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("gate log");
        let mut cmd = match &self.resolv_conf {
            None => Command::new(env!("CARGO_BIN_EXE_mqgate")),
            Some(conf) => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                    .arg("mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"")
                    .arg(conf)
                    .arg(env!("CARGO_BIN_EXE_mqgate"));
                c
            }
        };
        let child = cmd
            .arg("run")
            .arg("-c")
            .arg(&self.config)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("MQGATE_TEST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("start mqgate");
        self.child = Some(child);
        let port = self.admin_port;
        let logp = self.log.clone();
        wait_until(Duration::from_secs(20), "mqgate admin API", || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "mqgate exited early ({st}); log:\n{}",
                        std::fs::read_to_string(&logp).unwrap_or_default()
                    );
                }
            }
            http("GET", port, "/healthz", None, None)
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
        });
    }

    pub fn admin_section(port: u16) -> String {
        format!("[admin]\nbind = \"127.0.0.1:{port}\"\n")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Send a signal (e.g. "TERM", "HUP").
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// SIGTERM and wait for exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal("TERM");
        let mut c = self.child.take()?;
        let code = wait_exit(&mut c, Duration::from_secs(40));
        if code.is_none() {
            let _ = c.kill();
            let _ = c.wait();
        }
        code
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait up to `timeout` for the process to exit on its own; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let code = wait_exit(self.child.as_mut()?, timeout);
        if code.is_some() {
            self.child = None;
        }
        code
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `needle` (debug lines are written as they happen).
    pub fn wait_log(&self, needle: &str) {
        wait_until(
            Duration::from_secs(10),
            &format!("log line containing {needle:?}"),
            || self.log_text().contains(needle),
        );
    }

    pub fn metrics(&self) -> String {
        http("GET", self.admin_port, "/metrics", None, None)
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// Value of one sample, e.g. `metric("mqgate_connections_rejected_total", &[("reason","invalid")])`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(), name, labels)
    }

    /// Wait (10 s) until the health checks see `node` up.
    pub fn wait_node_up(&self, node: &str) {
        wait_until(Duration::from_secs(10), &format!("node {node} up"), || {
            self.metric("mqgate_node_up", &[("node", node)]) == 1.0
        });
    }

    /// Write `text` as the config file, send SIGHUP and wait until one more reload is
    /// counted as applied.
    pub fn reload_with(&self, text: &str) {
        let applied = || self.metric("mqgate_config_reloads_total", &[("result", "ok")]);
        let before = applied();
        std::fs::write(&self.config, text).expect("rewrite config");
        self.signal("HUP");
        wait_until(Duration::from_secs(10), "the reload applied", || {
            applied() > before
        });
    }

    /// Save `text` as the config file the way an editor does (a temporary file renamed
    /// over it), so that the file watcher sees one complete change.
    pub fn save_config(&self, text: &str) {
        let tmp = self.config.with_extension("toml.tmp");
        std::fs::write(&tmp, text).expect("write temp config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- mqgate log {} ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// Wait up to `timeout` for `child` to exit; its exit code, or None (still running).
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return st.code();
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills a child process when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `{ name = "…", address = "…" }, …` for a `nodes = [ … ]` line.
fn node_list<'a>(nodes: impl IntoIterator<Item = (&'a str, String)>) -> String {
    nodes
        .into_iter()
        .map(|(n, a)| format!("{{ name = \"{n}\", address = \"{a}\" }}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A single-cluster config: one plain listener `mqtt` on `listen_port` in front of
/// `nodes` (cluster `brokers`, `extra_cluster` lines added to it), health checks every
/// 200 ms that mark a node up or down at the first result.
pub fn basic_config(
    listen_port: u16,
    admin_port: u16,
    mode: &str,
    nodes: &[&Mosquitto],
    extra_cluster: &str,
) -> String {
    let nodes = node_list(nodes.iter().map(|n| (n.name.as_str(), n.address())));
    format!(
        "{}\n[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:{listen_port}\"\ncluster = \"brokers\"\n\n[clusters.brokers]\nmode = \"{mode}\"\nnodes = [ {nodes} ]\n{extra_cluster}\n[clusters.brokers.health]\ninterval = \"200ms\"\nfast_interval = \"50ms\"\ndown_interval = \"200ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n",
        Gate::admin_section(admin_port),
    )
}

/// Health settings of [`gate_config`]: probes every 100 ms, up after 2 successes, down
/// after 3 failures; a generous timeout so that a loaded machine does not flap nodes.
pub const FAST_HEALTH: &str = "interval = \"100ms\"\nfast_interval = \"50ms\"\ndown_interval = \"100ms\"\ntimeout = \"2s\"\nrise = 2\nfall = 3\n";

/// One plain listener in front of one cluster named `brokers`, with [`FAST_HEALTH`]
/// plus `health_extra`, then `sections` (whole tables) at the end.
pub fn gate_config(
    listen: u16,
    admin: u16,
    mode: &str,
    nodes: &[(&str, String)],
    cluster_extra: &str,
    health_extra: &str,
    sections: &str,
) -> String {
    let nodes = node_list(nodes.iter().map(|(n, a)| (*n, a.clone())));
    format!(
        "[admin]\nbind = \"127.0.0.1:{admin}\"\n\n[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:{listen}\"\ncluster = \"brokers\"\n\n[clusters.brokers]\nmode = \"{mode}\"\nnodes = [ {nodes} ]\n{cluster_extra}\n\n[clusters.brokers.health]\n{FAST_HEALTH}{health_extra}\n{sections}\n"
    )
}

/// Run the `mqgate` binary with `args` (no admin token in its environment).
pub fn mqgate(args: &[&str]) -> Output {
    mqgate_command(args).output().expect("run mqgate")
}

/// [`mqgate`] in the working directory `cwd`.
pub fn mqgate_in(cwd: &Path, args: &[&str]) -> Output {
    mqgate_command(args)
        .current_dir(cwd)
        .output()
        .expect("run mqgate")
}

/// The `mqgate` binary with `args`, no admin token in its environment.
pub fn mqgate_command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mqgate"));
    c.args(args).env_remove("MQGATE_ADMIN_TOKEN");
    c
}

/// `mqgate check -c FILE`: (exit code, stdout, stderr).
pub fn mqgate_check(file: &Path) -> (Option<i32>, String, String) {
    let out = mqgate(&["check", "-c", file.to_str().expect("config path is UTF-8")]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `mosquitto_pub` with `args`; panics unless it exits 0.
pub fn mosquitto_pub(args: &[&str]) {
    let out = Command::new("mosquitto_pub")
        .args(args)
        .output()
        .expect("run mosquitto_pub (apt-get install mosquitto-clients)");
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Publish `msg` to `topic` at `qos` with `mosquitto_pub` on 127.0.0.1:`port` (a broker
/// or the gateway); panics unless it exits 0.
pub fn publish(port: u16, qos: u8, topic: &str, msg: &str) {
    mosquitto_pub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-q",
        &qos.to_string(),
        "-t",
        topic,
        "-m",
        msg,
    ]);
}

/// Subscribe with `mosquitto_sub` on 127.0.0.1:`port` (plus `extra` arguments, e.g. TLS
/// options), publish with `mosquitto_pub` (same `extra`) until the subscriber has its
/// message, and return what the subscriber printed. Panics if either client fails.
pub fn cli_round_trip(port: u16, extra: &[&str], version: &str, topic: &str, msg: &str) -> String {
    let p = port.to_string();
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &p, "-V", version, "-q", "1"])
        .args(extra)
        .args(["-t", topic, "-C", "1", "-W", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (apt-get install mosquitto-clients)");
    let mut sub = KillOnDrop(sub);
    let mut status = None;
    wait_until(
        Duration::from_secs(20),
        "subscriber got the message",
        || {
            if let Ok(Some(st)) = sub.0.try_wait() {
                status = Some(st);
                return true;
            }
            let mut args = vec![
                "-h",
                "127.0.0.1",
                "-p",
                &p,
                "-V",
                version,
                "-q",
                "1",
                "-t",
                topic,
                "-m",
                msg,
            ];
            args.extend_from_slice(extra);
            mosquitto_pub(&args);
            false
        },
    );
    let mut out = String::new();
    let mut err = String::new();
    if let Some(o) = sub.0.stdout.as_mut() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(e) = sub.0.stderr.as_mut() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "mosquitto_sub {version} {extra:?} failed: {err}"
    );
    out
}

/// A TCP forwarder standing in for a broker's client listener: its listener can be
/// closed while connections already made keep flowing, which is what a full-sync
/// node that loses leadership looks like from outside when its clients are not
/// closed by the broker itself.
pub struct Forwarder {
    pub port: u16,
    open: Arc<AtomicBool>,
    target: u16,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    pub fn start(target: u16) -> Forwarder {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind forwarder");
        let port = l.local_addr().expect("forwarder addr").port();
        let mut f = Forwarder {
            port,
            open: Arc::new(AtomicBool::new(false)),
            target,
            thread: None,
        };
        f.run(l);
        f
    }

    fn run(&mut self, l: TcpListener) {
        l.set_nonblocking(true).expect("nonblocking");
        self.open.store(true, Ordering::SeqCst);
        let open = self.open.clone();
        let target = self.target;
        self.thread = Some(std::thread::spawn(move || {
            while open.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((a, _)) => {
                        let _ = a.set_nonblocking(false);
                        if let Ok(b) = TcpStream::connect(("127.0.0.1", target)) {
                            pipe(a, b);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }

    /// Close the listener; established connections keep flowing.
    pub fn close_listener(&mut self) {
        self.open.store(false, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.close_listener();
    }
}

/// Copy bytes both ways between `a` and `b` (one thread each); either side's end
/// closes the other.
fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    std::thread::spawn(move || copy(a, b2));
    std::thread::spawn(move || copy(b, a2));
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Both);
}
