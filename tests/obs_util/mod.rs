//! Helpers shared by the observability tests (metrics, dashboard, status page): a
//! scenario that moves every metric, a hand-written MQTT CONNECT for each protocol
//! version, and a real Prometheus server scraping mqgate.
#![allow(dead_code)]

use crate::common::{
    free_port, http, metric_value, mqtt_field, mqtt_packet, tempdir, wait_until, Gate, Mosquitto,
    Pki,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Every metric of SPEC section 8 with its Prometheus type.
pub const SPEC_METRICS: &[(&str, &str)] = &[
    ("mqgate_build_info", "gauge"),
    ("mqgate_connections_active", "gauge"),
    ("mqgate_connections_total", "counter"),
    ("mqgate_connections_rejected_total", "counter"),
    ("mqgate_connect_packets_total", "counter"),
    ("mqgate_bytes_total", "counter"),
    ("mqgate_connack_total", "counter"),
    ("mqgate_connack_latency_seconds", "histogram"),
    ("mqgate_node_up", "gauge"),
    ("mqgate_node_admin_state", "gauge"),
    ("mqgate_node_leader", "gauge"),
    ("mqgate_leader_changes_total", "counter"),
    ("mqgate_health_checks_total", "counter"),
    ("mqgate_health_check_duration_seconds", "histogram"),
    ("mqgate_sticky_entries", "gauge"),
    ("mqgate_sticky_lookups_total", "counter"),
    ("mqgate_peer_up", "gauge"),
    ("mqgate_peer_updates_total", "counter"),
    ("mqgate_tls_handshake_failures_total", "counter"),
    ("mqgate_config_reloads_total", "counter"),
    (
        "mqgate_config_last_reload_success_timestamp_seconds",
        "gauge",
    ),
];

/// A CONNECT of MQTT 3.1 (level 3), 3.1.1 (4) or 5.0 (5).
pub fn connect_packet(level: u8, client_id: &str, clean: bool) -> Vec<u8> {
    let proto: &[u8] = if level == 3 { b"MQIsdp" } else { b"MQTT" };
    let mut body = mqtt_field(proto);
    body.push(level);
    body.push(if clean { 0x02 } else { 0x00 });
    body.extend_from_slice(&60u16.to_be_bytes());
    if level == 5 {
        if clean {
            body.push(0);
        } else {
            // Session Expiry Interval = 3600 s: the client keeps a session.
            body.extend_from_slice(&[5, 0x11, 0, 0, 0x0e, 0x10]);
        }
    }
    body.extend(mqtt_field(client_id.as_bytes()));
    mqtt_packet(0x10, &body)
}

/// Connect through the gateway and wait for the CONNACK; returns the open stream.
pub fn mqtt_connect(port: u16, level: u8, client_id: &str, clean: bool) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&connect_packet(level, client_id, clean))
        .expect("CONNECT");
    let mut head = [0u8; 2];
    s.read_exact(&mut head).expect("CONNACK");
    assert_eq!(head[0], 0x20, "CONNACK expected");
    let mut rest = vec![0u8; head[1] as usize];
    s.read_exact(&mut rest).expect("CONNACK body");
    s
}

/// Two clusters (dynsec with two nodes, full-sync with one), a plain and a TLS listener.
pub fn scenario_config(
    dir: &Path,
    a: &Mosquitto,
    b: &Mosquitto,
    c: &Mosquitto,
) -> (String, u16, u16, u16) {
    let (plain, tls, fs, admin) = (free_port(), free_port(), free_port(), free_port());
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
        admin_section = Gate::admin_section(admin),
        cert = cert.display(),
        key = key.display(),
        a = a.address(),
        b = b.address(),
        c = c.address(),
    );
    (toml, plain, fs, admin)
}

/// Listener port of the TLS listener, read back from the config text.
pub fn tls_port(toml: &str) -> u16 {
    let after = toml
        .split("name = \"mqtts\"")
        .nth(1)
        .expect("mqtts listener");
    let bind = after.split("127.0.0.1:").nth(1).expect("bind");
    bind[..bind.find('"').expect("quote")]
        .parse()
        .expect("port")
}

/// Run traffic that moves every metric (except the peer ones, which need peers).
pub fn run_scenario(gate: &Gate, plain: u16, fs: u16, tls: u16) {
    let port = gate.admin_port;
    wait_until(Duration::from_secs(10), "ready", || {
        http("GET", port, "/readyz", None, None)
            .map(|r| r.0 == 200)
            .unwrap_or(false)
    });
    // One client of each protocol version; persistent ones create sticky entries.
    let mut open = vec![
        mqtt_connect(plain, 3, "v31-client", false),
        mqtt_connect(plain, 4, "v311-client", false),
        mqtt_connect(plain, 5, "v5-client", false),
        mqtt_connect(fs, 4, "ha-client", true),
    ];
    // Reconnect one: a sticky hit.
    drop(open.remove(1));
    open.push(mqtt_connect(plain, 4, "v311-client", false));
    // PINGREQ / PINGRESP: bytes both ways after the CONNACK.
    for s in &mut open {
        s.write_all(&[0xc0, 0x00]).expect("PINGREQ");
        let mut r = [0u8; 2];
        s.read_exact(&mut r).expect("PINGRESP");
        assert_eq!(r, [0xd0, 0x00]);
    }
    // Garbage on the plain port, plain text on the TLS port.
    let mut g = TcpStream::connect(("127.0.0.1", plain)).expect("connect");
    g.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("garbage");
    let _ = g.read(&mut [0u8; 16]);
    let mut t = TcpStream::connect(("127.0.0.1", tls)).expect("connect");
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
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus is required for this test (apt-get install prometheus)");
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
        let path = format!("/api/v1/query?query={}", encode(q));
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

pub fn encode(s: &str) -> String {
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
