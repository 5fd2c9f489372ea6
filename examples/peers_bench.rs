//! Peer replication benchmark (not a test): how long a full sync of a large sticky table
//! takes, and how long one change takes to reach the other peers.
//!
//! Three gateways run in this process, linked over loopback TCP exactly as separate
//! processes would be (same handshake, frames and merge path): `gate-z` holds the table;
//! `gate-a` and `gate-b` start empty and dial it. Run through `integration/bench-peers`.
//!
//! Usage: `peers_bench [ENTRIES] [SAMPLES]` (defaults 1000000 and 1000).

// The tests' port picker (below the ephemeral range: a port-0 pick can be taken as
// the source port of a peer link before the gateway binds it).
#[path = "../tests/common/port.rs"]
mod port;

use mqgate::sticky::{now_ms, Update};
use mqgate::Gateway;
use port::free_port;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(dir: &Path, name: &str, port: u16, peers: &[(&str, u16)], capacity: usize) -> String {
    let list: Vec<String> = peers
        .iter()
        .map(|(n, p)| format!("{{ name = \"{n}\", address = \"127.0.0.1:{p}\" }}"))
        .collect();
    format!(
        r#"[[listeners]]
name = "mqtt"
bind = "127.0.0.1:0"
cluster = "brokers"

[clusters.brokers]
mode = "dynsec"
nodes = [ {{ name = "node1", address = "127.0.0.1:1" }}, {{ name = "node2", address = "127.0.0.1:2" }} ]

[clusters.brokers.health]
check = "tcp"
interval = "1h"
down_interval = "1h"

[clusters.brokers.sticky]
sessions = "all"
capacity = {capacity}

[peers]
name = "{name}"
bind = "127.0.0.1:{port}"
secret_file = "{}"
peers = [ {} ]
"#,
        dir.join("secret").display(),
        list.join(", ")
    )
}

/// Start gateway `name` with its peer listener on `port`, dialing `peers`.
async fn gateway(
    dir: &Path,
    name: &str,
    port: u16,
    peers: &[(&str, u16)],
    capacity: usize,
) -> anyhow::Result<Gateway> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config(dir, name, port, peers, capacity))?;
    let cfg = mqgate::config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Gateway::start(cfg).await?)
}

fn table(gw: &Gateway) -> anyhow::Result<Arc<mqgate::cluster::Cluster>> {
    gw.host
        .cluster("brokers")
        .ok_or_else(|| anyhow::anyhow!("no cluster"))
}

async fn wait_len(gw: &Gateway, n: usize, limit: Duration) -> anyhow::Result<Duration> {
    let c = table(gw)?;
    let t0 = Instant::now();
    while c.sticky.len() < n {
        if t0.elapsed() > limit {
            anyhow::bail!("only {} of {n} entries after {limit:?}", c.sticky.len());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(t0.elapsed())
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let entries: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let samples: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("secret"), "bench-secret")?;
    let (pz, pa, pb) = (free_port(), free_port(), free_port());
    // Per-shard capacity is capacity / 16; leave room so hashing skew evicts nothing.
    let cap = 2 * (entries + samples) + 1000;

    let z = gateway(
        dir.path(),
        "gate-z",
        pz,
        &[("gate-a", pa), ("gate-b", pb)],
        cap,
    )
    .await?;
    let zc = table(&z)?;
    let t0 = Instant::now();
    let origin: Arc<str> = Arc::from("gate-z");
    let nodes: [Arc<str>; 2] = [Arc::from("node1"), Arc::from("node2")];
    let stamp = now_ms();
    for i in 0..entries {
        zc.sticky.merge(&Update {
            key: Arc::from(format!("client-{i:08}").as_str()),
            node: Some(nodes[i % 2].clone()),
            stamp,
            origin: origin.clone(),
            idle_ms: 0,
        });
    }
    println!(
        "filled gate-z with {} entries in {:.2?}",
        zc.sticky.len(),
        t0.elapsed()
    );

    let started = Instant::now();
    let a = gateway(
        dir.path(),
        "gate-a",
        pa,
        &[("gate-z", pz), ("gate-b", pb)],
        cap,
    )
    .await?;
    let took = wait_len(&a, entries, Duration::from_secs(600)).await?;
    let full = started.elapsed();
    println!(
        "full sync of {entries} entries gate-z -> gate-a: {:.2?} from gateway start ({:.0} entries/s; table complete {:.2?} after start of polling)",
        full,
        entries as f64 / full.as_secs_f64(),
        took
    );
    let started = Instant::now();
    let b = gateway(
        dir.path(),
        "gate-b",
        pb,
        &[("gate-z", pz), ("gate-a", pa)],
        cap,
    )
    .await?;
    wait_len(&b, entries, Duration::from_secs(600)).await?;
    println!(
        "full sync of {entries} entries into gate-b (from gate-z and gate-a at once): {:.2?}",
        started.elapsed()
    );

    // Propagation: one write on gate-z, time until gate-a and gate-b both have it.
    let (ac, bc) = (table(&a)?, table(&b)?);
    let mut lat_a = Vec::with_capacity(samples);
    let mut lat_b = Vec::with_capacity(samples);
    for i in 0..samples {
        let key = format!("probe-{i}");
        let (zc, ac, bc) = (zc.clone(), ac.clone(), bc.clone());
        let (da, db) = tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            zc.sticky.record(&key, "node2");
            let (mut da, mut db) = (None, None);
            while da.is_none() || db.is_none() {
                if da.is_none() && ac.sticky.get(&key).is_some() {
                    da = Some(t0.elapsed());
                }
                if db.is_none() && bc.sticky.get(&key).is_some() {
                    db = Some(t0.elapsed());
                }
                if t0.elapsed() > Duration::from_secs(10) {
                    break;
                }
                std::thread::yield_now();
            }
            (da, db)
        })
        .await?;
        lat_a.extend(da);
        lat_b.extend(db);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for (peer, lat) in [("gate-a", &mut lat_a), ("gate-b", &mut lat_b)] {
        lat.sort();
        if lat.is_empty() {
            println!("update gate-z -> {peer}: no sample arrived");
            continue;
        }
        println!(
            "update gate-z -> {peer}: p50 {:.0?}  p99 {:.0?}  max {:.0?}  ({} of {samples} samples)",
            pct(lat, 0.5),
            pct(lat, 0.99),
            lat[lat.len() - 1],
            lat.len()
        );
    }
    for g in [&a, &b, &z] {
        g.shutdown().await;
    }
    Ok(())
}
