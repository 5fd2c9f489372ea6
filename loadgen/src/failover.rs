//! Reconnect storm after a failover (`integration/bench-storm`): hold `clients` sessions,
//! and when the gateway closes them (the broker behind it was killed), reconnect every
//! one of them at once, as a herd of real clients does, retrying with a jittered
//! exponential back-off after a refusal ("server busy" CONNACK) or a failure.

use crate::net::{ConnackResult, Target};
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

pub struct Opts {
    pub clients: u64,
    /// Sessions opened at a time while setting up.
    pub conc: usize,
    /// First back-off after a refused or failed attempt (doubles up to `max_backoff`;
    /// each wait is drawn uniformly from [0, back-off]: "full jitter").
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// One attempt (TCP connect to CONNACK) longer than this counts as failed.
    pub attempt_timeout: Duration,
    /// Give up waiting for the herd after this long from the first close.
    pub secs: Duration,
}

#[derive(Default)]
struct Shared {
    /// Accepted reconnects: TCP connect → accepting CONNACK, µs.
    accepted: Option<Histogram<u64>>,
    busy: u64,
    /// Failed attempts by kind (anything but an accepted CONNACK or a "busy" one).
    failed: BTreeMap<String, u64>,
    first_drop: Option<Instant>,
    /// When the first and the last failed attempt started.
    failed_span: Option<(Instant, Instant)>,
    last_served: Option<Instant>,
}

/// A small xorshift generator: jitter needs no cryptographic quality.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        if n == 0 {
            0
        } else {
            self.0 % n
        }
    }
}

fn kind(e: &std::io::Error) -> String {
    format!("{:?}", e.kind()).to_lowercase()
}

/// Prints `{"ready":N,...}` once the sessions are open, then waits for a line on stdin
/// (the harness kills the leader then), then for every client to be served again (or
/// `secs`), and prints the result.
pub async fn run(target: Target, o: Opts) -> Result<serde_json::Value, String> {
    let tag = std::process::id();
    let start = Instant::now();
    // Set-up: open the sessions, `conc` at a time.
    let next = Arc::new(AtomicU64::new(0));
    let held = Arc::new(Mutex::new(Vec::new()));
    let setup_errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..o.conc {
        let (target, next, held, setup_errors) = (
            target.clone(),
            next.clone(),
            held.clone(),
            setup_errors.clone(),
        );
        let clients = o.clients;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= clients {
                    break;
                }
                let id = format!("fo-{tag}-{i}");
                // Set-up goes through the same admission rate: a refusal is retried.
                for _ in 0..200 {
                    match target.session(&id, true).await {
                        Ok(s) => {
                            held.lock().unwrap_or_else(|p| p.into_inner()).push((id, s));
                            break;
                        }
                        Err(_) => {
                            setup_errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let held = std::mem::take(&mut *held.lock().unwrap_or_else(|p| p.into_inner()));
    let ready = held.len();
    println!(
        "{}",
        json!({"ready": ready, "errors": setup_errors.load(Ordering::Relaxed),
               "secs": start.elapsed().as_secs_f64()})
    );
    let shared = Arc::new(Mutex::new(Shared {
        accepted: Some(
            Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())?,
        ),
        ..Shared::default()
    }));
    let served = Arc::new(AtomicU64::new(0));
    let attempts = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(ready);
    for (n, (id, mut s)) in held.into_iter().enumerate() {
        let (target, shared, served, attempts) = (
            target.clone(),
            shared.clone(),
            served.clone(),
            attempts.clone(),
        );
        let (b0, bmax, at) = (o.backoff, o.max_backoff, o.attempt_timeout);
        let seed = 0x9e37_79b9_7f4a_7c15u64 ^ ((n as u64 + 1) * 0x2545_f491_4f6c_dd1d);
        tasks.push(tokio::spawn(async move {
            // Held until the gateway closes it (keep-alive 0: nothing to read before).
            let mut buf = [0u8; 64];
            while let Ok(k) = s.read(&mut buf).await {
                if k == 0 {
                    break;
                }
            }
            drop(s);
            {
                let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                g.first_drop = Some(g.first_drop.map_or(now, |f| f.min(now)));
            }
            let mut rng = Rng(seed);
            let mut backoff = b0;
            loop {
                attempts.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let r = tokio::time::timeout(at, target.session_or_code(&id)).await;
                let took = t.elapsed();
                let stream = {
                    let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
                    let failed = match &r {
                        Ok(Ok(ConnackResult::Accepted(_))) => false,
                        Ok(Ok(ConnackResult::Refused(c))) => *c != 0x03 && *c != 0x89,
                        _ => true,
                    };
                    if failed {
                        g.failed_span =
                            Some(g.failed_span.map_or((t, t), |(a, b)| (a.min(t), b.max(t))));
                    }
                    match r {
                        Ok(Ok(ConnackResult::Accepted(stream))) => {
                            if let Some(h) = g.accepted.as_mut() {
                                let _ = h.record(took.as_micros().max(1) as u64);
                            }
                            let now = Instant::now();
                            g.last_served = Some(g.last_served.map_or(now, |l| l.max(now)));
                            Some(stream)
                        }
                        Ok(Ok(ConnackResult::Refused(code))) => {
                            if code == 0x03 || code == 0x89 {
                                g.busy += 1;
                            } else {
                                *g.failed.entry(format!("connack_{code:#04x}")).or_default() += 1;
                            }
                            None
                        }
                        Ok(Err(e)) => {
                            *g.failed.entry(kind(&e)).or_default() += 1;
                            None
                        }
                        Err(_) => {
                            *g.failed.entry("timeout".into()).or_default() += 1;
                            None
                        }
                    }
                };
                if let Some(stream) = stream {
                    served.fetch_add(1, Ordering::Relaxed);
                    // Stay connected: the new leader carries the whole herd.
                    return Some(stream);
                }
                let wait = rng.below(backoff.as_micros() as u64 + 1);
                tokio::time::sleep(Duration::from_micros(wait)).await;
                backoff = (backoff * 2).min(bmax);
            }
        }));
    }
    // The harness kills the leader after our "ready" line and tells us on stdin.
    let mut line = String::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let _ = stdin.read_line(&mut line).await;
    let killed = Instant::now();
    let deadline = killed + o.secs;
    while served.load(Ordering::Relaxed) < ready as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let g = shared.lock().unwrap_or_else(|p| p.into_inner());
    let h = g.accepted.as_ref().ok_or("no histogram")?;
    let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(killed).as_secs_f64());
    let failed_total: u64 = g.failed.values().sum();
    let out = json!({
        "clients": ready,
        "served_again": served.load(Ordering::Relaxed),
        "first_close_s": since(g.first_drop),
        "all_served_s": if served.load(Ordering::Relaxed) == ready as u64 { since(g.last_served) } else { None },
        "attempts": attempts.load(Ordering::Relaxed),
        "busy_replies": g.busy,
        "failed_connects": failed_total,
        "failed_by_kind": g.failed,
        "failed_from_s": since(g.failed_span.map(|s| s.0)),
        "failed_until_s": since(g.failed_span.map(|s| s.1)),
        "connack_p50_ms": h.value_at_quantile(0.50) as f64 / 1000.0,
        "connack_p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
        "connack_max_ms": h.max() as f64 / 1000.0,
    });
    drop(g);
    for t in tasks {
        t.abort();
    }
    Ok(out)
}
