//! Saturating throughput: P publisher → subscriber pairs (one topic each), closed loop.
//!
//! Each publisher keeps at most `window` messages between "published" and "delivered to
//! its subscriber" (and, at QoS 1, "acknowledged by the broker"), so the broker is kept
//! busy without queueing without bound (Mosquitto drops past `max_queued_messages`).
//! The figure is messages delivered to subscribers per second after a warm-up.

use crate::mqtt;
use crate::net::{subscribe, Target};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

pub struct Opts {
    pub pairs: usize,
    pub qos: u8,
    pub size: usize,
    pub window: u64,
    pub warmup: Duration,
    pub secs: Duration,
}

#[derive(Default)]
pub(crate) struct Pair {
    pub(crate) delivered: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) notify: Notify,
}

const BATCH: u64 = 16;

pub async fn run(target: Target, o: Opts) -> Result<serde_json::Value, String> {
    let tag = std::process::id();
    let stop = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicU64::new(0));
    let mut pairs = Vec::new();
    let mut tasks = Vec::new();
    for k in 0..o.pairs {
        let topic = format!("bench/{tag}/{k}");
        let pair = Arc::new(Pair::default());
        let mut sub = target
            .session(&format!("tp-sub-{tag}-{k}"), false)
            .await
            .map_err(|e| format!("subscriber connect: {e}"))?;
        subscribe(&mut sub, &topic, o.qos)
            .await
            .map_err(|e| format!("subscribe: {e}"))?;
        let publ = target
            .session(&format!("tp-pub-{tag}-{k}"), false)
            .await
            .map_err(|e| format!("publisher connect: {e}"))?;
        tasks.push(tokio::spawn(subscriber(sub, pair.clone(), stop.clone())));
        let (rd, wr) = tokio::io::split(publ);
        if o.qos > 0 {
            tasks.push(tokio::spawn(puback_reader(rd, pair.clone(), stop.clone())));
        }
        tasks.push(tokio::spawn(publisher(
            wr,
            mqtt::publish(&topic, o.qos, o.size),
            pair.clone(),
            o.window,
            stop.clone(),
            lost.clone(),
        )));
        pairs.push(pair);
    }
    let total =
        |ps: &[Arc<Pair>]| -> u64 { ps.iter().map(|p| p.delivered.load(Ordering::Relaxed)).sum() };
    tokio::time::sleep(o.warmup).await;
    let (t0, d0, l0) = (Instant::now(), total(&pairs), lost.load(Ordering::Relaxed));
    tokio::time::sleep(o.secs).await;
    let (el, d1, l1) = (t0.elapsed(), total(&pairs), lost.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    for p in &pairs {
        p.notify.notify_one();
    }
    for t in tasks {
        t.abort();
    }
    let delivered = d1 - d0;
    let delivered_total = d1;
    Ok(json!({
        "msgs_per_sec": delivered as f64 / el.as_secs_f64(),
        "delivered": delivered,
        "delivered_total": delivered_total,
        "secs": el.as_secs_f64(),
        "lost": l1 - l0,
        "pairs": o.pairs,
        "qos": o.qos,
        "size": o.size,
    }))
}

pub(crate) async fn publisher<W: tokio::io::AsyncWrite + Unpin>(
    mut wr: W,
    tpl: mqtt::Publish,
    pair: Arc<Pair>,
    window: u64,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicU64>,
) {
    let qos1 = tpl.pid_at.is_some();
    let mut published = 0u64;
    let mut written_off = 0u64;
    let mut pid: u16 = 0;
    let mut buf = Vec::with_capacity(tpl.bytes.len() * BATCH as usize);
    while !stop.load(Ordering::Relaxed) {
        let mut done = pair.delivered.load(Ordering::Acquire);
        if qos1 {
            done = done.min(pair.acked.load(Ordering::Acquire));
        }
        let inflight = published - (done + written_off).min(published);
        if inflight + BATCH > window {
            let before = done;
            if tokio::time::timeout(Duration::from_secs(1), pair.notify.notified())
                .await
                .is_err()
            {
                let mut now = pair.delivered.load(Ordering::Acquire);
                if qos1 {
                    now = now.min(pair.acked.load(Ordering::Acquire));
                }
                if now == before {
                    // No progress for a second: the broker dropped what was in flight.
                    lost.fetch_add(inflight, Ordering::Relaxed);
                    written_off += inflight;
                }
            }
            continue;
        }
        buf.clear();
        for _ in 0..BATCH {
            let at = buf.len();
            buf.extend_from_slice(&tpl.bytes);
            if let Some(p) = tpl.pid_at {
                pid = if pid == u16::MAX { 1 } else { pid + 1 };
                buf[at + p..at + p + 2].copy_from_slice(&pid.to_be_bytes());
            }
        }
        if wr.write_all(&buf).await.is_err() {
            return;
        }
        published += BATCH;
    }
}

pub(crate) async fn puback_reader<R: tokio::io::AsyncRead + Unpin>(
    mut rd: R,
    pair: Arc<Pair>,
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
        pair.acked.fetch_add(acks, Ordering::Release);
        pair.notify.notify_one();
    }
}

async fn subscriber(mut s: crate::net::Stream, pair: Arc<Pair>, stop: Arc<AtomicBool>) {
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
        pair.delivered.fetch_add(got, Ordering::Release);
        pair.notify.notify_one();
    }
}
