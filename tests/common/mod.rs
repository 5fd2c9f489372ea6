//! What the integration tests share. Every test runs against real processes on free
//! ports: Mosquitto brokers and the real `mqgate` binary, killed when their handles are
//! dropped. Waits poll with a deadline ([`wait_until`]) instead of sleeping.
//!
//! - [`fleet`]: Mosquitto brokers, mqgate gateways (`mqgate run`) and their config
//!   files, the `mqgate` command line, the Mosquitto client programs;
//! - [`inproc`]: the gateway started from the library in the test's runtime (paused
//!   clock: deadlines in virtual time);
//! - [`mqtt`]: MQTT packets (the library's own encoders where it has them, one
//!   hand-written CONNECT builder for everything else) and raw sessions on a socket;
//! - [`client`]: a small blocking MQTT client (persistent sessions, QoS 1, credentials);
//! - [`admin`]: the admin HTTP API: requests, metric samples, status and sticky lookups;
//! - [`paho`]: a paho-mqtt device process that subscribes once;
//! - [`pair`]: two gateways linked as peers;
//! - [`pki`]: a CA and certificates made on the fly;
//! - [`tools`]: the programs some tests need besides Mosquitto (promtool, Prometheus,
//!   Chromium, haproxy, paho-mqtt, MQTT.js, openssl), each named clearly when missing;
//! - [`docs`]: blocks and tables read from the repository's documents;
//! - [`observe`]: traffic that moves every metric, and a real Prometheus scraping.
//!
//! The everyday names are re-exported here: `use crate::common::*`.

pub mod admin;
pub mod client;
pub mod dns;
pub mod docs;
pub mod fleet;
pub mod inproc;
pub mod mqtt;
pub mod observe;
pub mod paho;
pub mod pair;
pub mod pki;
mod port;
pub mod tools;

pub use admin::{http, metric_value, sticky_node};
pub use client::Client;
pub use fleet::{
    basic_config, cli_round_trip, gate_config, mosquitto_pub, mqgate, mqgate_check, publish, Gate,
    KillOnDrop, Mosquitto, MosquittoOpts,
};
pub use mqtt::{
    connect_v311, connect_v5, mqtt_field, mqtt_packet, ping, raw_session, read_exact_n,
    read_to_close, subscribe_v311, tcp, Connect, Ended, CONNACK_ACCEPTED,
};
pub use pki::Pki;
pub use port::free_port;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Poll `f` every 20 ms until it returns true or `timeout` passes (then panic, naming
/// `what`).
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

/// Does something accept TCP connections on 127.0.0.1:`port`?
pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A temporary directory, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mqgate-test-")
        .tempdir()
        .expect("tempdir")
}

/// The repository's root directory.
pub fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Panics unless the program behind `out` exited 0, showing `what` and its output.
pub fn assert_success(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first line of `file` with every needle in it, waited for up to `timeout` (an
/// access log, a process's log).
pub fn wait_line(file: &std::path::Path, needles: &[&str], timeout: Duration) -> String {
    let mut found = String::new();
    wait_until(
        timeout,
        &format!("a line of {} with {needles:?}", file.display()),
        || {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            match text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                Some(l) => {
                    found = l.to_string();
                    true
                }
                None => false,
            }
        },
    );
    found
}

/// TCP connections of this machine in `state` (hex code of /proc/net/tcp: 01
/// ESTABLISHED, 06 TIME_WAIT) whose remote end is 127.0.0.1:`remote_port`, as their
/// local ports.
pub fn local_ports_towards(remote_port: u16, state: &str) -> Vec<u16> {
    let text = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let want = format!("0100007F:{remote_port:04X}");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 3 && f[2] == want && f[3] == state)
                .then(|| f[1].rsplit(':').next())
                .flatten()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        })
        .collect()
}
