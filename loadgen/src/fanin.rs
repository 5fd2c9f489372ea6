//! Fan-in to one backend: one publisher on each broker node (connected straight to
//! it), and one subscriber that sees all of them, either through a gateway's fan-out
//! session (`--via ADDR`: one connection, mqgate connects it to every node) or by
//! opening one connection per node itself ("direct"). Both are run in one invocation,
//! alternating for `--rounds`, so the figures are side by side on the same host.
//!
//! Closed loop as in `throughput`: each publisher keeps at most `window` messages
//! between "published" and "delivered" (and acknowledged, at QoS 1). The figure is
//! messages delivered to the backend per second after a warm-up.

use crate::closedloop::{puback_reader, publisher, Pair};
use crate::mqtt;
use crate::net::{subscribe, Target};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Opts {
    pub nodes: Vec<SocketAddr>,
    pub via: SocketAddr,
    /// A/B: a second gateway measured in the same rounds (`--via-b`).
    pub via_b: Option<SocketAddr>,
    pub client_id: String,
    pub qos: u8,
    pub size: usize,
    pub window: u64,
    pub warmup: Duration,
    pub secs: Duration,
    pub rounds: usize,
    /// The nodes' process ids (`--node-pids`): their CPU per message is reported for
    /// each target, beside this load generator's own.
    pub node_pids: Vec<u32>,
}

/// One round through one target.
struct Round {
    msgs_per_sec: f64,
    /// CPU µs per message delivered: the nodes' (`--node-pids`), then this process's.
    nodes_cpu: Option<f64>,
    own_cpu: Option<f64>,
}

/// User + system CPU of a process so far, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn ticks_of(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|p| cpu_ticks(&p.to_string())).sum()
}

pub async fn run(o: Opts) -> Result<serde_json::Value, String> {
    let mut direct = Vec::new();
    let mut via = Vec::new();
    let mut via_b = Vec::new();
    for r in 0..o.rounds {
        direct.push(one(&o, None, r).await?);
        match o.via_b {
            // A and B take turns going first, so that neither always follows direct.
            Some(b) if r % 2 == 1 => {
                via_b.push(one(&o, Some((b, 2)), r).await?);
                via.push(one(&o, Some((o.via, 1)), r).await?);
            }
            Some(b) => {
                via.push(one(&o, Some((o.via, 1)), r).await?);
                via_b.push(one(&o, Some((b, 2)), r).await?);
            }
            None => via.push(one(&o, Some((o.via, 1)), r).await?),
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let rates = |v: &[Round]| v.iter().map(|r| r.msgs_per_sec).collect::<Vec<f64>>();
    // CPU per message: the median over the rounds that could be read.
    let cpu = |v: &[Round], pick: fn(&Round) -> Option<f64>| {
        let c: Vec<f64> = v.iter().filter_map(pick).collect();
        (!c.is_empty()).then(|| (median(&c) * 1000.0).round() / 1000.0)
    };
    let (d, f) = (median(&rates(&direct)), median(&rates(&via)));
    let mut out = json!({
        "direct_msgs_per_sec": d,
        "fanout_msgs_per_sec": f,
        "ratio": f / d,
        "direct_rounds": rates(&direct),
        "fanout_rounds": rates(&via),
        "nodes": o.nodes.len(),
        "qos": o.qos,
        "size": o.size,
        "loadgen_cpu_us_per_msg": { "direct": cpu(&direct, |r| r.own_cpu), "fanout": cpu(&via, |r| r.own_cpu) },
    });
    if !o.node_pids.is_empty() {
        out["nodes_cpu_us_per_msg"] = json!({ "direct": cpu(&direct, |r| r.nodes_cpu), "fanout": cpu(&via, |r| r.nodes_cpu) });
    }
    let via_b = rates(&via_b);
    if o.via_b.is_some() {
        let b = median(&via_b);
        out["fanout_b_msgs_per_sec"] = json!(b);
        out["ratio_b"] = json!(b / d);
        out["b_over_a"] = json!(b / f);
        out["fanout_b_rounds"] = json!(via_b);
    }
    Ok(out)
}

/// One measurement: messages per second delivered to the backend.
/// `via`: the gateway and a tag (1 A, 2 B); `None` is direct.
async fn one(o: &Opts, via: Option<(SocketAddr, u8)>, round: usize) -> Result<Round, String> {
    let tag = format!("{}-{round}-{}", std::process::id(), via.map_or(0, |v| v.1));
    let filter = format!("bench/fanin/{tag}/#");
    let stop = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicU64::new(0));
    let pairs: Arc<Vec<Arc<Pair>>> = Arc::new((0..o.nodes.len()).map(|_| Arc::default()).collect());
    let mut tasks = Vec::new();
    // The backend: one connection through the gateway, or one per node.
    let subs: Vec<SocketAddr> = match via {
        Some((g, _)) => vec![g],
        None => o.nodes.clone(),
    };
    for addr in subs {
        let t = Target::new(addr, None, None)?;
        let mut s = t
            .session(&o.client_id, false)
            .await
            .map_err(|e| format!("backend connect {addr}: {e}"))?;
        subscribe(&mut s, &filter, o.qos)
            .await
            .map_err(|e| format!("backend subscribe {addr}: {e}"))?;
        tasks.push(tokio::spawn(backend(s, pairs.clone(), stop.clone())));
    }
    for (k, addr) in o.nodes.iter().enumerate() {
        let t = Target::new(*addr, None, None)?;
        let publ = t
            .session(&format!("fanin-pub-{tag}-{k}"), false)
            .await
            .map_err(|e| format!("publisher connect {addr}: {e}"))?;
        let (rd, wr) = tokio::io::split(publ);
        if o.qos > 0 {
            tasks.push(tokio::spawn(puback_reader(
                rd,
                pairs[k].clone(),
                stop.clone(),
            )));
        }
        let mut tpl = mqtt::publish(&format!("bench/fanin/{tag}/{k}"), o.qos, o.size.max(1));
        // The payload's first byte names the publisher, for the backend's counts.
        tpl.bytes[tpl.payload_at] = k as u8;
        tasks.push(tokio::spawn(publisher(
            wr,
            tpl,
            pairs[k].clone(),
            o.window,
            stop.clone(),
            lost.clone(),
        )));
    }
    let total = || -> u64 {
        pairs
            .iter()
            .map(|p| p.delivered.load(Ordering::Relaxed))
            .sum()
    };
    tokio::time::sleep(o.warmup).await;
    let (t0, d0) = (Instant::now(), total());
    let (n0, s0) = (ticks_of(&o.node_pids), cpu_ticks("self"));
    tokio::time::sleep(o.secs).await;
    let (el, d1) = (t0.elapsed(), total());
    let (n1, s1) = (ticks_of(&o.node_pids), cpu_ticks("self"));
    stop.store(true, Ordering::Relaxed);
    for p in pairs.iter() {
        p.notify.notify_one();
    }
    for t in tasks {
        t.abort();
    }
    let msgs = (d1 - d0) as f64;
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
    let tick = 100.0;
    let per_msg = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if msgs > 0.0 && tick > 0.0 => {
            Some(b.saturating_sub(a) as f64 / tick * 1e6 / msgs)
        }
        _ => None,
    };
    Ok(Round {
        msgs_per_sec: msgs / el.as_secs_f64(),
        nodes_cpu: if o.node_pids.is_empty() {
            None
        } else {
            per_msg(n0, n1)
        },
        own_cpu: per_msg(s0, s1),
    })
}

/// Read the backend's connection: count each PUBLISH for its publisher, PUBACK QoS 1.
async fn backend(mut s: crate::net::Stream, pairs: Arc<Vec<Arc<Pair>>>, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut have = 0;
    let mut out = Vec::with_capacity(16 * 1024);
    let mut got = vec![0u64; pairs.len()];
    while !stop.load(Ordering::Relaxed) {
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = match s.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        have += n;
        out.clear();
        got.iter_mut().for_each(|g| *g = 0);
        let Ok(used) = mqtt::split(&buf[..have], |p| {
            if let Some((pid, payload)) = p.publish_parts() {
                if let Some(g) = payload.first().and_then(|k| got.get_mut(usize::from(*k))) {
                    *g += 1;
                }
                if let Some(pid) = pid {
                    out.extend_from_slice(&mqtt::puback(pid));
                }
            }
        }) else {
            return;
        };
        buf.copy_within(used..have, 0);
        have -= used;
        if !out.is_empty() && s.write_all(&out).await.is_err() {
            return;
        }
        for (k, g) in got.iter().enumerate() {
            if *g > 0 {
                pairs[k].delivered.fetch_add(*g, Ordering::Release);
                pairs[k].notify.notify_one();
            }
        }
    }
}
