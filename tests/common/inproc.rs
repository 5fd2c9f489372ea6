//! The gateway started from the library inside the test's own runtime (as mini-redis's
//! `tests/server.rs` does), on port 0, with no connection threads (`threads = 0`): no
//! separate process, and under `#[tokio::test(start_paused = true)]` its deadlines
//! (CONNECT, queue, CONNACK, health intervals) pass in virtual time, so a test of a
//! 10-second deadline takes milliseconds. Tests where the process boundary is the point
//! (signals, handover, the CLI, logs, reload of the file) keep the real binary
//! ([`super::fleet::Gate`]).

use mqgate::Gateway;
use std::net::SocketAddr;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct InProc {
    pub gw: Gateway,
}

impl InProc {
    /// Start a gateway from config text (`[limits] threads = 0` is added: connections
    /// run on the caller's runtime, whose clock the test may pause).
    pub async fn start(toml: &str) -> InProc {
        let text = format!("{toml}\n");
        let text = match text.find("[limits]") {
            Some(at) => {
                let mut t = text.clone();
                t.insert_str(at + "[limits]".len(), "\nthreads = 0");
                t
            }
            None => format!("{text}\n[limits]\nthreads = 0\n"),
        };
        let cfg = match mqgate::config::parse(Path::new("inproc.toml"), &text) {
            Ok(c) => c,
            Err(e) => panic!("config:\n{e}\n{text}"),
        };
        match Gateway::start(cfg).await {
            Ok(gw) => InProc { gw },
            Err(e) => panic!("gateway start: {e}"),
        }
    }

    /// The address a listener is bound to.
    pub fn listener(&self, name: &str) -> SocketAddr {
        let rt = self.gw.host.runtime();
        match rt.listeners.get(name) {
            Some(l) => l.local_addr,
            None => panic!("no listener {name}"),
        }
    }

    /// A metric sample (summed over the series matching `labels`), from the gateway's
    /// registry in the exposition format, as a scrape reads it.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let families = self.gw.host.metrics.registry.gather();
        if let Err(e) = prometheus::TextEncoder::new().encode(&families, &mut out) {
            panic!("encoding metrics: {e}");
        }
        super::metric_value(&String::from_utf8_lossy(&out), name, labels)
    }

    /// Poll until the node's health is `up` (or `down`), letting virtual time run.
    pub async fn wait_health(&self, cluster: &str, node: &str, health: &str) {
        for _ in 0..10_000 {
            let now = self
                .gw
                .host
                .cluster(cluster)
                .and_then(|c| {
                    c.nodes()
                        .iter()
                        .find(|n| n.name == node)
                        .map(|n| n.health().as_str().to_string())
                })
                .unwrap_or_default();
            if now == health {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("node {node} of {cluster} never became {health}");
    }

    pub async fn stop(self) {
        self.gw.shutdown().await;
    }
}

/// A minimal config: listener `mqtt` on port 0 in front of `nodes` (name, address),
/// cluster `brokers` in `mode`, with `cluster_extra` lines in the cluster section.
pub fn config(mode: &str, nodes: &[(&str, String)], cluster_extra: &str) -> String {
    let mut t = format!(
        "[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\ncluster = \"brokers\"\n\n\
         [clusters.brokers]\nmode = \"{mode}\"\n{cluster_extra}\n"
    );
    for (name, addr) in nodes {
        t.push_str(&format!(
            "[[clusters.brokers.nodes]]\nname = \"{name}\"\naddress = \"{addr}\"\n"
        ));
    }
    t
}

/// A local address where nothing listens (bound, then released).
pub async fn closed_address() -> String {
    let l = match TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    };
    match l.local_addr() {
        Ok(a) => a.to_string(),
        Err(e) => panic!("local addr: {e}"),
    }
}

/// Connect to `addr` and send `bytes`.
pub async fn client(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut c = match TcpStream::connect(addr).await {
        Ok(c) => c,
        Err(e) => panic!("connect {addr}: {e}"),
    };
    if let Err(e) = c.write_all(bytes).await {
        panic!("write: {e}");
    }
    c
}

/// Everything the peer sends until it closes (or resets).
pub async fn read_until_close(c: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}
