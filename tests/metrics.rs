//! Prometheus metrics (SPEC section 8): every metric appears with its type and labels
//! after a scenario that exercises it, `promtool check metrics` accepts the exposition,
//! and a real Prometheus server scrapes mqgate.

mod common;
mod obs_util;

use common::{metric_value, tempdir, wait_until, Gate, Mosquitto};
use obs_util::{run_scenario, scenario_config, tls_port, Prometheus, SPEC_METRICS};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn every_metric_moves_and_promtool_accepts_the_exposition() {
    let dir = tempdir();
    let a = Mosquitto::start("node1", dir.path());
    let b = Mosquitto::start("node2", dir.path());
    let c = Mosquitto::start("solo", dir.path());
    let (toml, plain, fs, admin) = scenario_config(dir.path(), &a, &b, &c);
    let gate = Gate::start(dir.path(), "gate", &toml, admin);
    run_scenario(&gate, plain, fs, tls_port(&toml));
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
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is required for this test (apt-get install prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_scrapes_node_up_for_every_node() {
    let dir = tempdir();
    let a = Mosquitto::start("node1", dir.path());
    let b = Mosquitto::start("node2", dir.path());
    let c = Mosquitto::start("solo", dir.path());
    let (toml, _plain, _fs, admin) = scenario_config(dir.path(), &a, &b, &c);
    let gate = Gate::start(dir.path(), "gate", &toml, admin);
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
