//! Shared helpers for integration tests: real Mosquitto processes and a real mqgate
//! binary on free ports, polling instead of sleeping, and a tiny HTTP client for the
//! admin API. Processes are killed when their handle is dropped.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod port;
pub use port::free_port;

/// Poll `f` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// Async version of [`wait_until`].
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mqgate-test-")
        .tempdir()
        .expect("tempdir")
}

/// A Mosquitto broker child process.
pub struct Mosquitto {
    pub port: u16,
    pub dir: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
    pub name: String,
}

/// Options for [`Mosquitto::start`].
#[derive(Default, Clone)]
pub struct MosquittoOpts {
    /// Extra lines for mosquitto.conf (after the listener line).
    pub extra: String,
    /// Anonymous clients allowed (default true unless `extra` sets up auth).
    pub deny_anonymous: bool,
}

impl Mosquitto {
    pub fn start(name: &str, dir: &Path) -> Mosquitto {
        Self::start_with(name, dir, MosquittoOpts::default())
    }

    pub fn start_with(name: &str, dir: &Path, opts: MosquittoOpts) -> Mosquitto {
        let port = free_port();
        Self::start_on(name, dir, port, opts)
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
            .expect("start mosquitto (apt-get install mosquitto)");
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

/// An mqgate child process.
pub struct Gate {
    pub config: PathBuf,
    pub admin_port: u16,
    pub log: PathBuf,
    /// Extra `mqgate run` arguments (e.g. `--handover PATH`).
    pub args: Vec<String>,
    child: Option<Child>,
}

impl Gate {
    /// Write `toml` to `dir/name.toml` and start `mqgate run` on it; waits until the
    /// admin API answers. The caller's TOML must contain `[admin] bind = "127.0.0.1:{admin_port}"`
    /// — use [`Gate::admin_section`].
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
            child: None,
        };
        g.resume();
        g
    }

    pub fn resume(&mut self) {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("gate log");
        let child = Command::new(env!("CARGO_BIN_EXE_mqgate"))
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
        let end = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > end {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

/// Sum of the samples of `name` whose labels include all of `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (head, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (n, lbl) = match head.find('{') {
            Some(i) => (&head[..i], &head[i..]),
            None => (head, ""),
        };
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| lbl.contains(&format!("{k}=\"{v}\"")))
        {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

/// Minimal HTTP/1.1 client for the admin API: (status, body).
pub fn http(
    method: &str,
    port: u16,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status"))?;
    let body = match text.find("\r\n\r\n") {
        Some(i) => text[i + 4..].to_string(),
        None => String::new(),
    };
    Ok((status, body))
}

/// Self-signed CA and certificates for TLS tests (rcgen).
pub struct Pki {
    pub ca_pem: String,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub fn new(cn: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Pki {
            ca_pem: cert.pem(),
            ca_cert: cert,
            ca_key: key,
        }
    }

    /// A leaf certificate signed by this CA: (cert PEM, key PEM).
    pub fn leaf(&self, cn: &str, sans: &[&str]) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// Write CA, server cert/key into `dir`; returns (ca, cert, key) paths.
    pub fn write_server(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let (c, k) = self.leaf("localhost", &["localhost", "127.0.0.1"]);
        let ca = dir.join(format!("{name}-ca.pem"));
        let cert = dir.join(format!("{name}-cert.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        std::fs::write(&ca, &self.ca_pem).expect("write ca");
        std::fs::write(&cert, c).expect("write cert");
        std::fs::write(&key, k).expect("write key");
        (ca, cert, key)
    }
}

/// A basic single-cluster config: one plain listener in front of `nodes`.
pub fn basic_config(
    listen_port: u16,
    admin_port: u16,
    mode: &str,
    nodes: &[&Mosquitto],
    extra_cluster: &str,
) -> String {
    let nodes_toml: Vec<String> = nodes
        .iter()
        .map(|n| format!("{{ name = \"{}\", address = \"{}\" }}", n.name, n.address()))
        .collect();
    format!(
        "{}\n[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:{listen_port}\"\ncluster = \"brokers\"\n\n[clusters.brokers]\nmode = \"{mode}\"\nnodes = [ {} ]\n{extra_cluster}\n[clusters.brokers.health]\ninterval = \"200ms\"\nfast_interval = \"50ms\"\ndown_interval = \"200ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n",
        Gate::admin_section(admin_port),
        nodes_toml.join(", ")
    )
}

// ---- Raw MQTT helpers (appended for the core gateway tests) ----

/// Append an MQTT variable byte integer.
pub fn put_remaining_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// A u16-length-prefixed MQTT string or binary field.
pub fn mqtt_field(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// Wrap a variable header + payload into a packet with fixed-header byte `first`.
pub fn mqtt_packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    put_remaining_len(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// A minimal clean-session MQTT 3.1.1 CONNECT (keep alive 60 s).
pub fn connect_v311(client_id: &str) -> Vec<u8> {
    let mut body = mqtt_field(b"MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 60]);
    body.extend(mqtt_field(client_id.as_bytes()));
    mqtt_packet(0x10, &body)
}

/// A minimal clean-start MQTT 5.0 CONNECT (no properties, keep alive 60 s).
pub fn connect_v5(client_id: &str) -> Vec<u8> {
    let mut body = mqtt_field(b"MQTT");
    body.extend_from_slice(&[5, 0x02, 0, 60, 0]);
    body.extend(mqtt_field(client_id.as_bytes()));
    mqtt_packet(0x10, &body)
}

/// An MQTT 3.1.1 SUBSCRIBE of one topic filter.
pub fn subscribe_v311(packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    body.extend(mqtt_field(filter.as_bytes()));
    body.push(qos);
    mqtt_packet(0x82, &body)
}

/// Connect to 127.0.0.1:`port` with 10 s read/write timeouts.
pub fn tcp(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to mqgate");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("write timeout");
    s
}

/// How a raw read ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Orderly close (FIN) after the bytes returned.
    Eof,
    /// Connection reset.
    Reset,
    /// Still open when the timeout passed.
    Open,
}

/// Read everything until the peer closes or `timeout` passes.
pub fn read_to_close(s: &mut TcpStream, timeout: Duration) -> (Vec<u8>, Ended) {
    let end = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, Ended::Open);
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) => return (out, Ended::Eof),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (out, Ended::Open)
            }
            Err(_) => return (out, Ended::Reset),
        }
    }
}

/// Read exactly `n` bytes (panics on close or after 10 s).
pub fn read_exact_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    s.read_exact(&mut out).expect("read reply");
    out
}

/// Open a raw MQTT 3.1.1 session through `port`: asserts CONNACK "accepted".
pub fn raw_session(port: u16, client_id: &str) -> TcpStream {
    let mut s = tcp(port);
    s.write_all(&connect_v311(client_id)).expect("send CONNECT");
    assert_eq!(
        read_exact_n(&mut s, 4),
        [0x20, 0x02, 0x00, 0x00],
        "CONNACK accepted"
    );
    s
}

/// PINGREQ → PINGRESP on an open session: true if the session answers.
pub fn ping(s: &mut TcpStream) -> bool {
    if s.write_all(&[0xC0, 0x00]).is_err() {
        return false;
    }
    let mut b = [0u8; 2];
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.read_exact(&mut b).is_ok() && b == [0xD0, 0x00]
}

/// Run `mosquitto_pub` with `args`; panics unless it exits 0.
pub fn mosquitto_pub(args: &[&str]) {
    let out = Command::new("mosquitto_pub")
        .args(args)
        .output()
        .expect("run mosquitto_pub");
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Gate {
    /// Wait up to `timeout` for the process to exit on its own; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return st.code();
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until the log contains `needle` (debug lines are written as they happen).
    pub fn wait_log(&self, needle: &str) {
        wait_until(
            Duration::from_secs(10),
            &format!("log line containing {needle:?}"),
            || self.log_text().contains(needle),
        );
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
        .expect("mosquitto_sub");
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
