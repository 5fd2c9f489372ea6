//! `dashboards/mqgate.json`: a well-formed Grafana dashboard with a datasource
//! variable, whose every query names metrics that mqgate exports and is valid PromQL
//! that returns data from a real Prometheus scraping a real gateway.

use crate::common::observe::{run_scenario, scenario_config, Prometheus};
use crate::common::{tempdir, Gate, Mosquitto};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn dashboard() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/mqgate.json");
    let text = std::fs::read_to_string(path).expect("read dashboards/mqgate.json");
    serde_json::from_str(&text).expect("dashboards/mqgate.json is JSON")
}

/// Every non-row panel, including panels nested in collapsed rows.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

/// (panel title, expr) of every query.
fn exprs(d: &Value) -> Vec<(String, String)> {
    panels(d)
        .iter()
        .flat_map(|p| {
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                (
                    p["title"].as_str().unwrap_or("").to_string(),
                    t["expr"].as_str().unwrap_or("").to_string(),
                )
            })
        })
        .collect()
}

/// The `mqgate_…` series names an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("mqgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Grafana's variables, as Grafana would expand them for "All" over a short range.
fn expand(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$instance", ".*")
        .replace("$cluster", ".*")
}

#[test]
fn dashboard_is_well_formed_and_covers_the_operations_view() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().expect("templating");
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(ds["query"], "prometheus");
    let ds_ref = format!("${{{}}}", ds["name"].as_str().expect("name"));
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().expect("title");
        assert!(
            ids.insert(p["id"].as_i64().expect("id")),
            "duplicate id: {title}"
        );
        assert_eq!(p["datasource"]["uid"], ds_ref.as_str(), "{title}");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_i64().expect("x"), g["w"].as_i64().expect("w"));
        assert!(x >= 0 && w > 0 && x + w <= 24, "{title} outside the grid");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], ds_ref.as_str(), "{title}");
        }
    }
    let used: BTreeSet<String> = exprs(&d)
        .iter()
        .flat_map(|(_, e)| metric_names(e))
        .collect();
    for needed in [
        "mqgate_connections_active",
        "mqgate_connections_rejected_total",
        "mqgate_node_leader",
        "mqgate_leader_changes_total",
        "mqgate_node_up",
        "mqgate_node_admin_state",
        "mqgate_connack_total",
        "mqgate_connack_latency_seconds_bucket",
        "mqgate_bytes_total",
        "mqgate_sticky_entries",
        "mqgate_peer_up",
        "mqgate_peer_updates_total",
        "mqgate_config_reloads_total",
    ] {
        assert!(used.contains(needed), "no panel shows {needed}");
    }
}

#[test]
fn every_dashboard_query_runs_against_prometheus() {
    let dir = tempdir();
    let a = Mosquitto::start("node1", dir.path());
    let b = Mosquitto::start("node2", dir.path());
    let c = Mosquitto::start("solo", dir.path());
    let (toml, ports) = scenario_config(dir.path(), &a, &b, &c);
    let gate = Gate::start(dir.path(), "gate", &toml, ports.admin);
    let prom = Prometheus::start(gate.admin_port);
    run_scenario(&gate, &ports);
    let exported = gate.metrics();
    let d = dashboard();
    let all = exprs(&d);

    // Every metric a panel reads is exported. Peer metrics appear only while peers
    // are configured and linked; they must at least be SPEC metric names.
    let peer_names = [
        mqgate::metrics::names::PEER_UP,
        mqgate::metrics::names::PEER_UPDATES_TOTAL,
    ];
    for (title, e) in &all {
        for name in metric_names(e) {
            if peer_names.contains(&name.as_str()) {
                continue;
            }
            assert!(
                exported
                    .lines()
                    .any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                "panel `{title}` reads {name}, which /metrics does not export"
            );
        }
    }

    // Every query is valid PromQL; those over non-peer metrics return data once
    // Prometheus has a few scrapes.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (title, e) in &all {
        let q = expand(e);
        let needs_data = !metric_names(e)
            .iter()
            .any(|n| n.starts_with("mqgate_peer_"));
        loop {
            let result = prom.query(&q);
            if !needs_data || !result.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "panel `{title}`: `{q}` returned nothing from Prometheus"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    // Annotations' queries are PromQL too.
    for ann in d["annotations"]["list"].as_array().expect("annotations") {
        if let Some(e) = ann["expr"].as_str() {
            prom.query(&expand(e));
        }
    }
}
