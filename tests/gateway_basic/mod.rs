//! The core gateway with real clients and real Mosquitto brokers: MQTT 3.1, 3.1.1 and
//! 5.0 clients publish and subscribe through mqgate, QoS 0/1/2 payloads arrive intact,
//! persistent sessions survive a reconnect, odd-but-legal byte streams (1-byte writes,
//! packets right behind the CONNECT, half-close) work, a client's reset reaches the
//! broker as a reset, a dead broker makes the next node take the client,
//! `limits.threads` spreads sessions over that many connection threads, and
//! `mqgate check` reports what an operator needs.
//!
//! `messages`: publish/subscribe, payloads, sessions; `streams`: odd byte streams and
//! ends of connections; `check`: `mqgate check`; `threads`: connection threads. The
//! gateway set-up here is shared by them.

mod check;
mod messages;
mod streams;
mod threads;

use crate::common::mqtt::connack_v5_with_reason;
use crate::common::*;
use std::io::Write;
use std::net::Shutdown;
use std::process::Command;
use std::time::Duration;

/// One gateway (dynsec, listener "mqtt") in front of `nodes`.
struct Setup {
    // Drop order: the gateway (it prints its log on failure), the brokers, the files.
    gate: Gate,
    brokers: Vec<Mosquitto>,
    dir: tempfile::TempDir,
    port: u16,
}

fn setup(n: usize, cluster_extra: &str, health: Option<&str>) -> Setup {
    let dir = tempdir();
    let brokers: Vec<Mosquitto> = (1..=n)
        .map(|i| Mosquitto::start(&format!("b{i}"), dir.path()))
        .collect();
    let (port, admin) = (free_port(), free_port());
    let refs: Vec<&Mosquitto> = brokers.iter().collect();
    let mut toml = basic_config(port, admin, "dynsec", &refs, cluster_extra);
    if let Some(h) = health {
        // Replace the helper's health section with the caller's.
        let i = toml
            .find("[clusters.brokers.health]")
            .expect("health section");
        toml.truncate(i);
        toml.push_str(h);
    }
    let gate = Gate::start(dir.path(), "gate", &toml, admin);
    for b in &brokers {
        gate.wait_node_up(&b.name);
    }
    Setup {
        dir,
        brokers,
        gate,
        port,
    }
}
