//! For the observability tests (metrics, dashboard): a gateway whose traffic moves
//! every metric, and a real Prometheus server scraping it.

use super::admin::{http, metric_value};
use super::fleet::{Gate, Mosquitto};
use super::mqtt::{session, Connect, PINGREQ, PINGRESP};
use super::tools::PROMETHEUS;
use super::{free_port, tempdir, wait_until, Pki};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

/// Ports of [`scenario_config`]'s gateway.
pub struct Ports {
    /// Plain listener `mqtt`, dynsec cluster `brokers` (node1, node2).
    pub plain: u16,
    /// TLS listener `mqtts`, same cluster.
    pub tls: u16,
    /// Plain listener `ha`, full-sync cluster `ha` (solo).
    pub fs: u16,
    pub admin: u16,
}

/// Two clusters (dynsec with two nodes, full-sync with one), a plain and a TLS
/// listener (certificate in `dir`).
pub fn scenario_config(dir: &Path, a: &Mosquitto, b: &Mosquitto, c: &Mosquitto) -> (String, Ports) {
    let p = Ports {
        plain: free_port(),
        tls: free_port(),
        fs: free_port(),
        admin: free_port(),
    };
    let (_ca, cert, key) = Pki::new("metrics-ca").write_server(dir, "srv");
    let health = "interval = \"200ms\"\nfast_interval = \"50ms\"\ndown_interval = \"200ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n";
    let toml = format!(
        "{admin_section}
[[listeners]]
name = \"mqtt\"
bind = \"127.0.0.1:{plain}\"
cluster = \"brokers\"

[[listeners]]
name = \"mqtts\"
bind = \"127.0.0.1:{tls}\"
cluster = \"brokers\"
[listeners.tls]
cert = \"{cert}\"
key = \"{key}\"

[[listeners]]
name = \"ha\"
bind = \"127.0.0.1:{fs}\"
cluster = \"ha\"

[clusters.brokers]
mode = \"dynsec\"
nodes = [ {{ name = \"node1\", address = \"{a}\" }}, {{ name = \"node2\", address = \"{b}\" }} ]
[clusters.brokers.health]
{health}
[clusters.ha]
mode = \"full-sync\"
nodes = [ {{ name = \"solo\", address = \"{c}\" }} ]
[clusters.ha.health]
{health}",
        admin_section = Gate::admin_section(p.admin),
        plain = p.plain,
        tls = p.tls,
        fs = p.fs,
        cert = cert.display(),
        key = key.display(),
        a = a.address(),
        b = b.address(),
        c = c.address(),
    );
    (toml, p)
}

/// Connect through the gateway with `connect` and wait for CONNACK "accepted".
fn connected(port: u16, connect: Connect) -> TcpStream {
    session(port, &connect).unwrap_or_else(|e| panic!("{connect:?}: {e}"))
}

/// Run traffic that moves every metric (except the peer ones, which need peers).
pub fn run_scenario(gate: &Gate, p: &Ports) {
    let port = gate.admin_port;
    wait_until(Duration::from_secs(10), "ready", || {
        http("GET", port, "/readyz", None, None)
            .map(|r| r.0 == 200)
            .unwrap_or(false)
    });
    // One client of each protocol version; persistent ones create sticky entries.
    let mut open = vec![
        connected(p.plain, Connect::new("v31-client").level(3).persistent()),
        connected(p.plain, Connect::new("v311-client").persistent()),
        connected(p.plain, Connect::new("v5-client").v5(true).persistent()),
        connected(p.fs, Connect::new("ha-client")),
    ];
    // Reconnect one: a sticky hit.
    drop(open.remove(1));
    open.push(connected(p.plain, Connect::new("v311-client").persistent()));
    // PINGREQ / PINGRESP: bytes both ways after the CONNACK.
    for s in &mut open {
        s.write_all(&PINGREQ).expect("PINGREQ");
        let mut r = [0u8; 2];
        s.read_exact(&mut r).expect("PINGRESP");
        assert_eq!(r, PINGRESP);
    }
    // Garbage on the plain port, plain text on the TLS port.
    let mut g = TcpStream::connect(("127.0.0.1", p.plain)).expect("connect");
    g.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("garbage");
    let _ = g.read(&mut [0u8; 16]);
    let mut t = TcpStream::connect(("127.0.0.1", p.tls)).expect("connect");
    t.write_all(b"this is not a TLS client hello at all")
        .expect("plain text");
    let _ = t.read(&mut [0u8; 16]);
    // A reload.
    let (code, body) = http("POST", port, "/api/v1/reload", None, None).expect("reload");
    assert_eq!(code, 200, "{body}");
    wait_until(Duration::from_secs(10), "counters settle", || {
        let m = gate.metrics();
        metric_value(
            &m,
            "mqgate_connections_rejected_total",
            &[("reason", "invalid")],
        ) >= 1.0
            && metric_value(&m, "mqgate_tls_handshake_failures_total", &[]) >= 1.0
            && metric_value(&m, "mqgate_connack_total", &[("code", "0")]) >= 5.0
            && metric_value(&m, "mqgate_connections_active", &[]) == 4.0
    });
    drop(open);
}

/// A Prometheus server scraping one target every second. Killed on drop.
pub struct Prometheus {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(target_port: u16) -> Prometheus {
        let dir = tempdir();
        let port = free_port();
        let conf = dir.path().join("prometheus.yml");
        std::fs::write(
            &conf,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: mqgate\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = PROMETHEUS
            .command()
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            port,
            child,
            _dir: dir,
        };
        wait_until(Duration::from_secs(30), "prometheus ready", || {
            http("GET", port, "/-/ready", None, None)
                .map(|r| r.0 == 200)
                .unwrap_or(false)
        });
        p
    }

    /// Instant query; returns the `data.result` array.
    pub fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", url_encode(q));
        let (code, body) = http("GET", self.port, &path, None, None).expect("query prometheus");
        assert_eq!(code, 200, "{q}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["status"], "success", "{q}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
