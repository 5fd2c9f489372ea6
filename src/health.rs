//! Health checks: one task per node on its own timer (SPEC section 4).
//!
//! `rise` successes in a row mark a node up, `fall` failures mark it down; while a
//! node is changing state the next probe comes after `fast_interval`, while it is down
//! after `down_interval`. A node's first probe decides its state at once, so a fresh
//! gateway knows the full-sync leader after one round. Only state changes are logged
//! (once, at `info`). The same task re-resolves DNS names every `dns_refresh`.

use crate::cluster::{Cluster, Health, Node};
use crate::config::{CheckKind, HealthConfig};
use crate::metrics::Metrics;
use crate::mqtt::{self, observe_connack, Parse};
use hickory_resolver::TokioAsyncResolver;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared DNS resolver (system configuration, falling back to defaults).
pub fn resolver() -> Arc<TokioAsyncResolver> {
    let r = TokioAsyncResolver::tokio_from_system_conf().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read system DNS configuration; using defaults");
        TokioAsyncResolver::tokio(Default::default(), Default::default())
    });
    Arc::new(r)
}

pub fn spawn(
    tracker: &TaskTracker,
    cluster: Arc<Cluster>,
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    resolver: Arc<TokioAsyncResolver>,
    shutdown: CancellationToken,
) {
    tracker.spawn(run(cluster, node, metrics, resolver, shutdown));
}

async fn run(
    cluster: Arc<Cluster>,
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    resolver: Arc<TokioAsyncResolver>,
    shutdown: CancellationToken,
) {
    let client_id = format!("mqgate-hc-{:08x}", rand::random::<u32>());
    let ok_counter = metrics
        .health_checks
        .with_label_values(&[&cluster.name, &node.name, "ok"]);
    let fail_counter =
        metrics
            .health_checks
            .with_label_values(&[&cluster.name, &node.name, "fail"]);
    let duration = metrics
        .health_check_duration
        .with_label_values(&[&cluster.name, &node.name]);
    let (mut oks, mut fails) = (0u32, 0u32);
    let mut next_dns = Instant::now();
    let mut last_error = String::new();
    loop {
        let cfg = cluster.config();
        let h = &cfg.health;
        let start = Instant::now();
        let addr = node.address();
        if addr.literal().is_none() && start >= next_dns {
            refresh_dns(&resolver, &node).await;
            next_dns = Instant::now() + cfg.dns_refresh;
        }
        let result = match timeout(h.timeout, probe(&node, h, &client_id)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", h.timeout)),
        };
        duration.observe(start.elapsed().as_secs_f64());
        match &result {
            Ok(()) => {
                ok_counter.inc();
                oks += 1;
                fails = 0;
            }
            Err(e) => {
                fail_counter.inc();
                fails += 1;
                oks = 0;
                last_error = e.clone();
            }
        }
        let state = node.health();
        let next = match state {
            Health::Unknown if oks > 0 => Some(Health::Up),
            Health::Unknown if fails > 0 => Some(Health::Down),
            Health::Down if oks >= h.rise => Some(Health::Up),
            Health::Up if fails >= h.fall => Some(Health::Down),
            _ => None,
        };
        if let Some(n) = next {
            match n {
                Health::Up => {
                    tracing::info!(cluster = %cluster.name, node = %node.name, address = %addr, "node is up")
                }
                _ => {
                    tracing::info!(cluster = %cluster.name, node = %node.name, address = %addr, reason = %last_error, "node is down")
                }
            }
            cluster.set_health(&node, n);
        }
        let now_state = node.health();
        let changing =
            (now_state == Health::Up && fails > 0) || (now_state == Health::Down && oks > 0);
        let wait = if changing {
            h.fast_interval
        } else if now_state == Health::Down {
            h.down_interval
        } else {
            h.interval
        };
        tokio::select! {
            _ = sleep_until((start + wait).into()) => {}
            _ = node.tasks.cancelled() => return,
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn refresh_dns(resolver: &TokioAsyncResolver, node: &Node) {
    let a = node.address();
    match resolver.lookup_ip(a.host.as_str()).await {
        Ok(ips) => {
            let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(ip, a.port)).collect();
            if !addrs.is_empty() && *node.resolved() != addrs {
                tracing::info!(cluster = %node.cluster, node = %node.name, host = %a.host, addresses = ?addrs, "node address resolved");
                node.set_resolved(addrs);
            }
        }
        Err(e) => {
            tracing::warn!(cluster = %node.cluster, node = %node.name, host = %a.host, error = %e, "DNS lookup failed; keeping the last addresses");
        }
    }
}

/// Connect to the first reachable address of the node.
pub async fn connect_node(node: &Node) -> std::io::Result<TcpStream> {
    let addrs = node.resolved();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "address not resolved yet");
    for a in addrs.iter() {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn probe(node: &Node, h: &HealthConfig, client_id: &str) -> Result<(), String> {
    let mut s = connect_node(node)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if h.check == CheckKind::Tcp {
        return Ok(());
    }
    let _ = s.set_nodelay(true);
    let pkt = mqtt::connect::encode_connect_v311(
        client_id,
        h.username.as_deref(),
        h.password.as_ref().map(|p| p.expose()),
        10,
    );
    s.write_all(&pkt)
        .await
        .map_err(|e| format!("send CONNECT: {e}"))?;
    let mut buf = [0u8; 8];
    let mut n = 0;
    let info = loop {
        let r = s
            .read(&mut buf[n..])
            .await
            .map_err(|e| format!("read CONNACK: {e}"))?;
        if r == 0 {
            return Err("closed before CONNACK".into());
        }
        n += r;
        match observe_connack(&buf[..n]) {
            Ok(Parse::Complete(info)) => break info,
            Ok(Parse::Incomplete) if n < buf.len() => continue,
            _ => return Err("answer is not a CONNACK".into()),
        }
    };
    let _ = s.write_all(&mqtt::CONNECT_DISCONNECT).await;
    let _ = s.shutdown().await;
    if info.code == 0 {
        Ok(())
    } else {
        Err(format!("CONNACK code {:#04x}", info.code))
    }
}

/// Used by tests and the status page: how long until a node flips, roughly.
pub fn worst_case_detection(h: &HealthConfig) -> Duration {
    h.interval + h.fast_interval * h.fall.saturating_sub(1) + h.timeout * h.fall
}
