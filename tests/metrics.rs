//! Prometheus metrics (SPEC section 8): every metric appears with its type and labels
//! after a scenario that exercises it, `promtool check metrics` accepts the exposition,
//! and a real Prometheus server scrapes mqgate.

use crate::common::observe::{run_scenario, scenario_config, Prometheus};
use crate::common::tools::PROMTOOL;
use crate::common::*;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

/// Every metric of SPEC section 8 with its Prometheus type.
const SPEC_METRICS: &[(&str, &str)] = &[
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

#[test]
fn every_metric_moves_and_promtool_accepts_the_exposition() {
    let dir = tempdir();
    let a = Mosquitto::start("node1", dir.path());
    let b = Mosquitto::start("node2", dir.path());
    let c = Mosquitto::start("solo", dir.path());
    let (toml, ports) = scenario_config(dir.path(), &a, &b, &c);
    let gate = Gate::start(dir.path(), "gate", &toml, ports.admin);
    run_scenario(&gate, &ports);
    let text = gate.metrics();

    for (name, kind) in SPEC_METRICS {
        if name.starts_with("mqgate_peer_") {
            continue; // only with [peers]; see peer_metrics_follow_the_links
        }
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} ({kind}) missing from /metrics:\n{text}"
        );
    }
    let v = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    assert_eq!(
        v(
            "mqgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(
        v(
            "mqgate_connections_total",
            &[("listener", "mqtt"), ("cluster", "brokers")]
        ) >= 4.0
    );
    assert_eq!(
        v(
            "mqgate_connections_total",
            &[("listener", "ha"), ("node", "solo")]
        ),
        1.0
    );
    for proto in ["3.1", "3.1.1", "5.0"] {
        assert!(
            v(
                "mqgate_connect_packets_total",
                &[("listener", "mqtt"), ("protocol", proto)]
            ) >= 1.0,
            "{proto}"
        );
    }
    assert!(
        v(
            "mqgate_connections_rejected_total",
            &[("listener", "mqtt"), ("reason", "invalid")]
        ) >= 1.0
    );
    assert!(
        v(
            "mqgate_connections_rejected_total",
            &[("listener", "mqtts"), ("reason", "tls")]
        ) >= 1.0
    );
    assert!(
        v(
            "mqgate_tls_handshake_failures_total",
            &[("listener", "mqtts")]
        ) >= 1.0
    );
    for dir in ["to_broker", "to_client"] {
        assert!(
            v(
                "mqgate_bytes_total",
                &[("cluster", "brokers"), ("direction", dir)]
            ) > 0.0,
            "{dir}"
        );
    }
    assert!(
        v(
            "mqgate_connack_total",
            &[("cluster", "brokers"), ("code", "0")]
        ) >= 4.0
    );
    assert!(
        v(
            "mqgate_connack_latency_seconds_count",
            &[("cluster", "brokers")]
        ) >= 4.0
    );
    for n in ["node1", "node2"] {
        assert_eq!(
            v("mqgate_node_up", &[("cluster", "brokers"), ("node", n)]),
            1.0,
            "{n}"
        );
        assert_eq!(
            v(
                "mqgate_node_admin_state",
                &[("node", n), ("state", "ready")]
            ),
            1.0
        );
        assert_eq!(
            v(
                "mqgate_node_admin_state",
                &[("node", n), ("state", "maint")]
            ),
            0.0
        );
        assert!(
            v(
                "mqgate_health_checks_total",
                &[("node", n), ("result", "ok")]
            ) >= 1.0
        );
        assert!(v("mqgate_health_check_duration_seconds_count", &[("node", n)]) >= 1.0);
    }
    assert_eq!(
        v("mqgate_node_leader", &[("cluster", "ha"), ("node", "solo")]),
        1.0
    );
    assert!(v("mqgate_leader_changes_total", &[("cluster", "ha")]) >= 1.0);
    assert_eq!(v("mqgate_sticky_entries", &[("cluster", "brokers")]), 3.0);
    assert!(
        v(
            "mqgate_sticky_lookups_total",
            &[("cluster", "brokers"), ("result", "hit")]
        ) >= 1.0
    );
    assert!(
        v(
            "mqgate_sticky_lookups_total",
            &[("cluster", "brokers"), ("result", "miss")]
        ) >= 3.0
    );
    assert!(v("mqgate_config_reloads_total", &[("result", "ok")]) >= 1.0);
    let loaded = v("mqgate_config_last_reload_success_timestamp_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        (now - loaded).abs() < 120.0,
        "last reload at {loaded}, now {now}"
    );

    // Closed connections leave the active gauge.
    wait_until(
        Duration::from_secs(10),
        "active connections back to 0",
        || gate.metric("mqgate_connections_active", &[]) == 0.0,
    );

    // promtool lints the exposition format.
    let mut child = PROMTOOL
        .command()
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    assert_success(&out, "promtool check metrics");
}

#[test]
fn prometheus_scrapes_node_up_for_every_node() {
    let dir = tempdir();
    let a = Mosquitto::start("node1", dir.path());
    let b = Mosquitto::start("node2", dir.path());
    let c = Mosquitto::start("solo", dir.path());
    let (toml, ports) = scenario_config(dir.path(), &a, &b, &c);
    let gate = Gate::start(dir.path(), "gate", &toml, ports.admin);
    wait_until(Duration::from_secs(10), "nodes up", || {
        gate.metric("mqgate_node_up", &[]) == 3.0
    });
    let prom = Prometheus::start(gate.admin_port);
    wait_until(
        Duration::from_secs(30),
        "prometheus has mqgate_node_up for each node",
        || prom.query("mqgate_node_up == 1").len() == 3,
    );
    let mut seen: Vec<String> = prom
        .query("mqgate_node_up")
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["metric"]["cluster"].as_str().unwrap_or(""),
                r["metric"]["node"].as_str().unwrap_or("")
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ["brokers/node1", "brokers/node2", "ha/solo"]);
    let up = prom.query("up{job=\"mqgate\"}");
    assert_eq!(up.len(), 1);
    assert_eq!(up[0]["value"][1], "1");
}

/// Two gateways replicating their sticky tables: the peer metrics follow the link,
/// and `/api/v1/status` and `mqgate status` show it.
#[test]
fn peer_metrics_follow_the_links() {
    let dir = tempdir();
    let node = Mosquitto::start("node1", dir.path());
    let secret = dir.path().join("peers.secret");
    std::fs::write(&secret, "a shared secret for the test\n").expect("write secret");
    let names = ["gate-a", "gate-b"];
    let peer_ports = [free_port(), free_port()];
    let mut gates = Vec::new();
    let mut listens = Vec::new();
    for i in 0..2 {
        let (listen, admin) = (free_port(), free_port());
        let other = 1 - i;
        let toml = format!(
            "{}\n[peers]\nname = \"{}\"\nbind = \"127.0.0.1:{}\"\nsecret_file = \"{}\"\npeers = [ {{ name = \"{}\", address = \"127.0.0.1:{}\" }} ]\n",
            basic_config(listen, admin, "dynsec", &[&node], ""),
            names[i],
            peer_ports[i],
            secret.display(),
            names[other],
            peer_ports[other],
        );
        gates.push(Gate::start(dir.path(), names[i], &toml, admin));
        listens.push(listen);
    }
    for (i, g) in gates.iter().enumerate() {
        wait_until(Duration::from_secs(20), "peer link up", || {
            g.metric("mqgate_peer_up", &[("peer", names[1 - i])]) == 1.0
        });
    }
    // A persistent client through gate-a: its entry is sent to gate-b.
    let _c = crate::common::mqtt::session(listens[0], &Connect::new("replicated-1").persistent())
        .expect("CONNACK accepted");
    wait_until(Duration::from_secs(20), "update replicated", || {
        gates[0].metric(
            "mqgate_peer_updates_total",
            &[("peer", "gate-b"), ("direction", "sent")],
        ) >= 1.0
            && gates[1].metric(
                "mqgate_peer_updates_total",
                &[("peer", "gate-a"), ("direction", "received")],
            ) >= 1.0
    });
    let text = gates[0].metrics();
    for (name, kind) in SPEC_METRICS
        .iter()
        .filter(|(n, _)| n.starts_with("mqgate_peer_"))
    {
        assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
    }
    let (_, body) = http("GET", gates[0].admin_port, "/api/v1/status", None, None).expect("status");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["peers"]["name"], "gate-a");
    assert_eq!(v["peers"]["peers"][0]["name"], "gate-b");
    assert_eq!(v["peers"]["peers"][0]["up"], true);
    assert!(v["peers"]["peers"][0]["updates_sent"].as_u64().unwrap_or(0) >= 1);
    let out = mqgate(&[
        "status",
        "--admin",
        &format!("http://127.0.0.1:{}", gates[0].admin_port),
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.contains("gate-b"))
        .expect("peer row");
    assert!(row.contains(" up "), "{table}");

    // gate-b goes away: gate-a sees the link down.
    gates[1].kill();
    wait_until(Duration::from_secs(20), "peer link down", || {
        gates[0].metric("mqgate_peer_up", &[("peer", "gate-b")]) == 0.0
    });
    let (_, body) = http("GET", gates[0].admin_port, "/api/v1/status", None, None).expect("status");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["peers"]["peers"][0]["up"], false);
}
