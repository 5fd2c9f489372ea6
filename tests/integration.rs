//! mqgate's integration tests, as one test binary: linked once instead of once per
//! file (every file of `tests/` is a module here, with `common` its shared helpers).
//! Run one file's tests with a filter: `cargo test --test integration peers::`.
//!
//! Most tests run real Mosquitto brokers and the real `mqgate` binary; some need more
//! programs (promtool, Prometheus, Chromium, haproxy, paho-mqtt, MQTT.js), which
//! `integration/test` installs and whose absence a test names (`common::tools`).

mod common;

mod access_log;
mod admin_api;
mod alert_rules;
mod bad_input;
mod broker_tls;
mod cert_identity;
mod client_crl;
mod cluster_admin;
mod cluster_dynsec;
mod cluster_fullsync;
mod config_bounds;
mod config_reference;
mod configs;
mod connect_fidelity;
mod dashboard;
mod evacuate;
mod failover_clients;
mod fanout;
mod fanout_access;
mod fanout_takeover;
mod fuzz_corpus;
mod gateway_basic;
mod gateway_tls;
mod hostile;
mod in_process;
mod kubernetes;
mod logs;
mod metrics;
mod migration_guide;
mod mqtt_proptest;
mod ops_cli;
mod peers;
mod peers_discovery;
mod peers_sync;
mod proxy_checks;
mod proxy_protocol;
mod rebalance_hash;
mod reload;
mod restart;
mod secret_files;
mod sessions;
mod sessions_close;
mod sessions_peers;
mod shaping;
mod shutdown;
mod single_live;
mod splice;
mod status_page;
mod websocket;

/// Cargo builds only this file's modules from `tests/` (`autotests = false`): a test
/// file added there but not declared above would silently never run.
#[test]
fn every_file_in_tests_is_a_module_of_this_binary() {
    let me = include_str!("integration.rs");
    let dir = common::repo().join("tests");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("list tests/") {
        let path = entry.expect("tests/ entry").path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let is_module =
            path.extension().is_some_and(|e| e == "rs") || path.join("mod.rs").is_file();
        if is_module && stem != "integration" && !me.contains(&format!("\nmod {stem};\n")) {
            missing.push(path.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "declare these in tests/integration.rs (`mod NAME;`): {missing:?}"
    );
}
