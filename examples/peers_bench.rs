//! Peer replication benchmark (not a test), run through `integration/bench-peers`.
//!
//! Gateways run in this process, linked over loopback TCP exactly as separate processes
//! would be (same handshake, sealed frames and merge path), as a full mesh.
//!
//! - `peers_bench sync [ENTRIES] [KEY_BYTES]` (defaults 1000000 15): `gate-0` holds
//!   ENTRIES entries (keys `client-000…` of KEY_BYTES bytes);
//!   `gate-1` starts empty and dials it. Prints the full sync time (from `gate-1`'s
//!   start to a complete table) and the memory per entry (resident set growth of this
//!   process while `gate-0` is filled, and while `gate-1` receives, divided by ENTRIES;
//!   jemalloc, as the `mqgate` binary), and the CPU time the process used during the
//!   sync (both gateways), which the other load on the host does not inflate.
//! - `peers_bench mesh [GATEWAYS] [SAMPLES] [RATE] [SECONDS]` (defaults 8 1000 10000
//!   10): GATEWAYS gateways; SAMPLES single writes (on each gateway in turn), each timed
//!   until every other gateway has it (convergence p50/p99/max); then RATE new entries a
//!   second for SECONDS seconds, spread over all gateways (a reconnect storm), with the
//!   lag (entries written but not yet everywhere) each second, at the end of the writes,
//!   and the time until every table is complete.
//!
//! The probes poll the tables from a thread of their own, which competes for the CPU
//! with the gateways.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// The tests' port picker (below the ephemeral range: a port-0 pick can be taken as
// the source port of a peer link before the gateway binds it).
#[path = "../tests/common/port.rs"]
mod port;

use mqgate::cluster::Cluster;
use mqgate::sticky::{now_ms, Update};
use mqgate::Gateway;
use port::free_port;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(dir: &Path, name: &str, port: u16, peers: &[(String, u16)], capacity: usize) -> String {
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

/// A full mesh of `n` gateways' names and peer ports.
struct Mesh {
    names: Vec<String>,
    ports: Vec<u16>,
}

impl Mesh {
    fn new(n: usize) -> Mesh {
        Mesh {
            names: (0..n).map(|i| format!("gate-{i}")).collect(),
            ports: (0..n).map(|_| free_port()).collect(),
        }
    }

    /// Start gateway `i`, listing every other one.
    async fn start(&self, dir: &Path, i: usize, capacity: usize) -> anyhow::Result<Gateway> {
        let others: Vec<(String, u16)> = (0..self.names.len())
            .filter(|j| *j != i)
            .map(|j| (self.names[j].clone(), self.ports[j]))
            .collect();
        let path = dir.join(format!("{}.toml", self.names[i]));
        std::fs::write(
            &path,
            config(dir, &self.names[i], self.ports[i], &others, capacity),
        )?;
        let cfg = mqgate::config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Gateway::start(cfg).await?)
    }
}

fn table(gw: &Gateway) -> anyhow::Result<Arc<Cluster>> {
    gw.host
        .cluster("brokers")
        .ok_or_else(|| anyhow::anyhow!("no cluster"))
}

async fn wait_len(c: &Cluster, n: usize, limit: Duration) -> anyhow::Result<Duration> {
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

/// Resident set size of this process, bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// CPU time (user + system) this process has used, seconds: what a sync costs whatever
/// else runs on the host (the wall time depends on the other load).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    let ticks = 100.0; // USER_HZ on Linux
    f.iter().sum::<f64>() / ticks
}

/// The 1-minute load average of the host.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> anyhow::Result<T> {
    match args.get(i) {
        Some(s) => s
            .parse()
            .map_err(|_| anyhow::anyhow!("argument {} ({s:?}) is not a number", i + 1)),
        None => Ok(default),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("secret"), "bench-secret")?;
    match args.first().map(String::as_str) {
        Some("sync") => sync(dir.path(), arg(&args, 1, 1_000_000)?, arg(&args, 2, 15)?).await,
        Some("mesh") => {
            mesh(
                dir.path(),
                arg(&args, 1, 8)?,
                arg(&args, 2, 1000)?,
                arg(&args, 3, 10_000)?,
                arg(&args, 4, 10)?,
            )
            .await
        }
        _ => anyhow::bail!(
            "usage: peers_bench sync [ENTRIES] [KEY_BYTES] | mesh [GATEWAYS] [SAMPLES] [RATE] [SECONDS]"
        ),
    }
}

async fn sync(dir: &Path, entries: usize, key_bytes: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        (15..=128).contains(&key_bytes),
        "key length {key_bytes}: 15 to 128 bytes"
    );
    let mesh = Mesh::new(2);
    // Per-shard capacity is capacity / 16; leave room so hashing skew evicts nothing.
    let cap = 2 * entries + 1000;
    let g0 = mesh.start(dir, 0, cap).await?;
    let t0c = table(&g0)?;
    let before = rss();
    let t0 = Instant::now();
    let origin: Arc<str> = Arc::from("gate-0");
    let nodes: [Arc<str>; 2] = [Arc::from("node1"), Arc::from("node2")];
    let stamp = now_ms();
    for i in 0..entries {
        t0c.sticky.merge(&Update {
            key: Arc::from(format!("client-{i:0w$}", w = key_bytes - 7).as_str()),
            node: Some(nodes[i % 2].clone()),
            stamp,
            origin: origin.clone(),
            idle_ms: 0,
        });
    }
    let filled = rss();
    println!(
        "filled gate-0 with {} entries (keys `client-NNN…`, {key_bytes} bytes) in {:.2?}; resident set +{} MB = {:.0} B per entry",
        t0c.sticky.len(),
        t0.elapsed(),
        filled.saturating_sub(before) / 1_000_000,
        filled.saturating_sub(before) as f64 / entries as f64
    );
    let started = Instant::now();
    let cpu0 = cpu_seconds();
    let load0 = load();
    let g1 = mesh.start(dir, 1, cap).await?;
    let t1c = table(&g1)?;
    wait_len(&t1c, entries, Duration::from_secs(1800)).await?;
    let full = started.elapsed();
    let cpu = cpu_seconds() - cpu0;
    let synced = rss();
    println!(
        "full sync of {entries} entries gate-0 -> gate-1: {:.2?} from gateway start ({:.0} entries/s; CPU {cpu:.2} s for both gateways together; load average {load0} before, {} after); resident set +{} MB = {:.0} B per received entry",
        full,
        entries as f64 / full.as_secs_f64(),
        load(),
        synced.saturating_sub(filled) / 1_000_000,
        synced.saturating_sub(filled) as f64 / entries as f64
    );
    for g in [&g1, &g0] {
        g.shutdown().await;
    }
    Ok(())
}

async fn mesh(
    dir: &Path,
    n: usize,
    samples: usize,
    rate: usize,
    seconds: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(n >= 2, "at least 2 gateways");
    let mesh = Mesh::new(n);
    let cap = 4 * (samples + rate * seconds) + 100_000;
    let mut gws = Vec::with_capacity(n);
    let idle_before = rss();
    for i in 0..n {
        gws.push(mesh.start(dir, i, cap).await?);
    }
    let t0 = Instant::now();
    while gws.iter().any(|g| g.peers.connected().len() < n - 1) {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(60),
            "mesh not up after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "{n} gateways, full mesh ({} links) up in {:.2?}; resident set of the process +{} MB for {n} idle gateways",
        n * (n - 1) / 2,
        t0.elapsed(),
        rss().saturating_sub(idle_before) / 1_000_000
    );
    let tables: Vec<Arc<Cluster>> = gws.iter().map(table).collect::<anyhow::Result<_>>()?;

    // Convergence of one update to all.
    let mut lat = Vec::with_capacity(samples);
    let mut missing = 0usize;
    for i in 0..samples {
        let key = format!("probe-{i}");
        let tables = tables.clone();
        let from = i % n;
        let got = tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            tables[from].sticky.record(&key, "node2");
            let mut pending: Vec<usize> = (0..tables.len()).filter(|j| *j != from).collect();
            while !pending.is_empty() {
                pending.retain(|j| tables[*j].sticky.get(&key).is_none());
                if t0.elapsed() > Duration::from_secs(10) {
                    return None;
                }
                std::thread::yield_now();
            }
            Some(t0.elapsed())
        })
        .await?;
        match got {
            Some(d) => lat.push(d),
            None => missing += 1,
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    lat.sort();
    if lat.is_empty() {
        println!("convergence: no sample reached all gateways");
    } else {
        println!(
            "convergence of one update to all {} other gateways: p50 {:.0?}  p99 {:.0?}  max {:.0?}  ({} of {samples} samples; {missing} not everywhere within 10 s)",
            n - 1,
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat[lat.len() - 1],
            lat.len()
        );
    }

    // Sustained writes: `rate` new entries a second, spread over every gateway.
    let base: Vec<usize> = tables.iter().map(|t| t.sticky.len()).collect();
    let total = rate * seconds;
    let writer_tables = tables.clone();
    let writer = std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut written = 0usize;
        while written < total {
            // Catch up to the schedule every millisecond.
            let due = ((t0.elapsed().as_secs_f64() * rate as f64) as usize).min(total);
            while written < due {
                let g = written % writer_tables.len();
                writer_tables[g]
                    .sticky
                    .record(&format!("storm-{written:09}"), "node1");
                written += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        t0.elapsed()
    });
    let started = Instant::now();
    let lag = |elapsed: f64| -> usize {
        let written = ((elapsed * rate as f64) as usize).min(total);
        tables
            .iter()
            .zip(&base)
            .map(|(t, b)| written.saturating_sub(t.sticky.len().saturating_sub(*b)))
            .max()
            .unwrap_or(0)
    };
    let mut per_second = Vec::new();
    for s in 1..=seconds {
        let at = Duration::from_secs(s as u64);
        if let Some(w) = at.checked_sub(started.elapsed()) {
            tokio::time::sleep(w).await;
        }
        per_second.push(lag(started.elapsed().as_secs_f64()));
    }
    let wrote_in = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
    let at_end: usize = tables
        .iter()
        .zip(&base)
        .map(|(t, b)| total.saturating_sub(t.sticky.len().saturating_sub(*b)))
        .max()
        .unwrap_or(0);
    let end = Instant::now();
    let mut complete = None;
    while end.elapsed() < Duration::from_secs(60) {
        if tables
            .iter()
            .zip(&base)
            .all(|(t, b)| t.sticky.len() >= b + total)
        {
            complete = Some(end.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "sustained {rate} new entries/s for {seconds} s over {n} gateways ({total} written in {wrote_in:.2?}): lag (entries not yet on the furthest gateway) each second {per_second:?}; at the end of the writes {at_end}; every table complete {} after the last write",
        match complete {
            Some(d) => format!("{d:.2?}"),
            None => "NOT within 60 s".into(),
        }
    );
    for g in &gws {
        g.shutdown().await;
    }
    Ok(())
}
