//! Saturating throughput, closed loop, in three shapes (`--shape`):
//!
//! - `pairs` (default): P publisher → subscriber pairs, one topic each;
//! - `fanin`: P publishers, each on its own topic, → one subscriber on a wildcard
//!   (`bench/TAG/+`): one connection carries all the traffic out;
//! - `fanout`: one publisher → P subscribers of its topic: every message is delivered
//!   P times (the figure counts deliveries).
//!
//! Each group of publishers keeps at most `window` messages per publisher between
//! "published" and "delivered to its slowest subscriber" (and, at QoS 1, "acknowledged
//! by the broker"), so the broker is kept busy without queueing without bound
//! (Mosquitto drops past `max_queued_messages`). Large messages lower the window so that
//! at most ~8 MB per publisher is in flight. The figure is messages (and MB) delivered to
//! subscribers per second after a warm-up.

use crate::mqtt;
use crate::net::{subscribe, Target};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Shape {
    Pairs,
    FanIn,
    FanOut,
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Shape, String> {
        match s {
            "pairs" => Ok(Shape::Pairs),
            "fanin" => Ok(Shape::FanIn),
            "fanout" => Ok(Shape::FanOut),
            _ => Err(format!("unknown shape {s:?} (pairs, fanin, fanout)")),
        }
    }
}

pub struct Opts {
    pub shape: Shape,
    /// Pairs (`pairs`), publishers (`fanin`) or subscribers (`fanout`).
    pub pairs: usize,
    pub qos: u8,
    pub size: usize,
    pub window: u64,
    pub warmup: Duration,
    pub secs: Duration,
}

/// Publishers and subscribers that share flow control.
struct Group {
    /// Messages delivered, per subscriber.
    delivered: Vec<AtomicU64>,
    /// Messages published, all publishers of the group.
    published: AtomicU64,
    /// PUBACKs received (QoS 1), all publishers.
    acked: AtomicU64,
    /// Written off as lost (no progress for a second).
    written_off: AtomicU64,
    /// One per publisher: woken by every delivery or acknowledgement.
    notify: Vec<Notify>,
}

impl Group {
    fn new(subs: usize, pubs: usize) -> Group {
        Group {
            delivered: (0..subs).map(|_| AtomicU64::new(0)).collect(),
            published: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            written_off: AtomicU64::new(0),
            notify: (0..pubs).map(|_| Notify::new()).collect(),
        }
    }

    /// Messages that reached every subscriber (and, at QoS 1, were acknowledged).
    fn done(&self, qos1: bool) -> u64 {
        let mut d = self
            .delivered
            .iter()
            .map(|x| x.load(Ordering::Acquire))
            .min()
            .unwrap_or(0);
        if qos1 {
            d = d.min(self.acked.load(Ordering::Acquire));
        }
        d
    }

    fn wake(&self) {
        for n in &self.notify {
            n.notify_one();
        }
    }

    fn delivered_total(&self) -> u64 {
        self.delivered
            .iter()
            .map(|x| x.load(Ordering::Relaxed))
            .sum()
    }
}

/// Messages per write: 16 small ones, fewer large ones (at most ~64 KB per write
/// unless one message is larger).
fn batch_for(len: usize) -> u64 {
    (64 * 1024 / len.max(1)).clamp(1, 16) as u64
}

pub async fn run(target: Target, o: Opts) -> Result<serde_json::Value, String> {
    let tag = std::process::id();
    let stop = Arc::new(AtomicBool::new(false));
    let mut groups = Vec::new();
    let mut tasks = Vec::new();
    let n = o.pairs.max(1);
    // (publishers' topics, subscribers' filter, subscribers) per group.
    let layout: Vec<(Vec<String>, String, usize)> = match o.shape {
        Shape::Pairs => (0..n)
            .map(|k| {
                let t = format!("bench/{tag}/{k}");
                (vec![t.clone()], t, 1)
            })
            .collect(),
        Shape::FanIn => vec![(
            (0..n).map(|k| format!("bench/{tag}/{k}")).collect(),
            format!("bench/{tag}/+"),
            1,
        )],
        Shape::FanOut => {
            let t = format!("bench/{tag}/0");
            vec![(vec![t.clone()], t, n)]
        }
    };
    let tpl_len = mqtt::publish("bench/0000000/00", o.qos, o.size).bytes.len();
    let batch = batch_for(tpl_len);
    // At most ~8 MB in flight per publisher, and at least two batches.
    let window = o.window.min((8 << 20) / tpl_len as u64).max(2 * batch);
    for (g, (topics, filter, subs)) in layout.into_iter().enumerate() {
        let group = Arc::new(Group::new(subs, topics.len()));
        for s in 0..subs {
            let mut sub = target
                .session(&format!("tp-sub-{tag}-{g}-{s}"), false)
                .await
                .map_err(|e| format!("subscriber connect: {e}"))?;
            subscribe(&mut sub, &filter, o.qos)
                .await
                .map_err(|e| format!("subscribe: {e}"))?;
            tasks.push(tokio::spawn(subscriber(
                sub,
                group.clone(),
                s,
                stop.clone(),
            )));
        }
        let pubs = topics.len() as u64;
        for (k, topic) in topics.iter().enumerate() {
            let publ = target
                .session(&format!("tp-pub-{tag}-{g}-{k}"), false)
                .await
                .map_err(|e| format!("publisher connect: {e}"))?;
            let (rd, wr) = tokio::io::split(publ);
            if o.qos > 0 {
                tasks.push(tokio::spawn(puback_reader(rd, group.clone(), stop.clone())));
            }
            tasks.push(tokio::spawn(publisher(
                wr,
                mqtt::publish(topic, o.qos, o.size),
                Flow {
                    group: group.clone(),
                    me: k,
                    window: window * pubs,
                    batch,
                },
                stop.clone(),
            )));
        }
        groups.push(group);
    }
    let total = |gs: &[Arc<Group>]| -> u64 { gs.iter().map(|g| g.delivered_total()).sum() };
    let lost = |gs: &[Arc<Group>]| -> u64 {
        gs.iter()
            .map(|g| g.written_off.load(Ordering::Relaxed))
            .sum()
    };
    tokio::time::sleep(o.warmup).await;
    let (t0, d0, l0) = (Instant::now(), total(&groups), lost(&groups));
    tokio::time::sleep(o.secs).await;
    let (el, d1, l1) = (t0.elapsed(), total(&groups), lost(&groups));
    stop.store(true, Ordering::Relaxed);
    for g in &groups {
        g.wake();
    }
    for t in tasks {
        t.abort();
    }
    let delivered = d1 - d0;
    let secs = el.as_secs_f64();
    Ok(json!({
        "msgs_per_sec": delivered as f64 / secs,
        "mbytes_per_sec": (delivered as f64 * o.size as f64) / 1e6 / secs,
        "delivered": delivered,
        "delivered_total": d1,
        "secs": secs,
        "lost": l1 - l0,
        "shape": format!("{:?}", o.shape).to_lowercase(),
        "pairs": o.pairs,
        "qos": o.qos,
        "size": o.size,
        "window": window,
    }))
}

/// A publisher's place in its group's flow control.
struct Flow {
    group: Arc<Group>,
    /// This publisher's index (its Notify; 0 writes off what the broker dropped).
    me: usize,
    /// Messages in flight allowed for the whole group.
    window: u64,
    batch: u64,
}

async fn publisher<W: tokio::io::AsyncWrite + Unpin>(
    mut wr: W,
    tpl: mqtt::Publish,
    f: Flow,
    stop: Arc<AtomicBool>,
) {
    let g = &f.group;
    let qos1 = tpl.pid_at.is_some();
    let mut pid: u16 = 0;
    let mut buf = Vec::with_capacity(tpl.bytes.len() * f.batch as usize);
    while !stop.load(Ordering::Relaxed) {
        let done = g.done(qos1);
        let published = g.published.load(Ordering::Relaxed);
        let settled = done + g.written_off.load(Ordering::Relaxed);
        let inflight = published - settled.min(published);
        if inflight + f.batch > f.window {
            if tokio::time::timeout(Duration::from_secs(1), g.notify[f.me].notified())
                .await
                .is_err()
                && f.me == 0
                && g.done(qos1) == done
            {
                // No progress for a second: the broker dropped what was in flight.
                g.written_off.fetch_add(inflight, Ordering::Relaxed);
                g.wake();
            }
            continue;
        }
        buf.clear();
        for _ in 0..f.batch {
            let at = buf.len();
            buf.extend_from_slice(&tpl.bytes);
            if let Some(p) = tpl.pid_at {
                pid = if pid == u16::MAX { 1 } else { pid + 1 };
                buf[at + p..at + p + 2].copy_from_slice(&pid.to_be_bytes());
            }
        }
        g.published.fetch_add(f.batch, Ordering::Relaxed);
        if wr.write_all(&buf).await.is_err() {
            return;
        }
    }
}

async fn puback_reader<R: tokio::io::AsyncRead + Unpin>(
    mut rd: R,
    g: Arc<Group>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut have = 0;
    while !stop.load(Ordering::Relaxed) {
        let n = match rd.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        have += n;
        let mut acks = 0;
        let Ok(used) = mqtt::split(&buf[..have], |p| {
            if p.kind == 4 {
                acks += 1;
            }
        }) else {
            return;
        };
        buf.copy_within(used..have, 0);
        have -= used;
        g.acked.fetch_add(acks, Ordering::Release);
        g.wake();
    }
}

async fn subscriber(mut s: crate::net::Stream, g: Arc<Group>, me: usize, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut have = 0;
    let mut out = Vec::with_capacity(16 * 1024);
    while !stop.load(Ordering::Relaxed) {
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = match s.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        have += n;
        let mut got = 0;
        out.clear();
        let Ok(used) = mqtt::split(&buf[..have], |p| {
            if let Some((pid, _)) = p.publish_parts() {
                got += 1;
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
        if got > 0 {
            g.delivered[me].fetch_add(got, Ordering::Release);
            g.wake();
        }
    }
}
