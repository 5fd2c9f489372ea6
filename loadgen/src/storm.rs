//! Connect storm (CONNECT → CONNACK per second, with TLS or not) and idle connections
//! held open for memory measurements.

use crate::net::Target;
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

/// `clients` sessions in total, `conc` at a time, each: TCP connect (+ full TLS
/// handshake) → CONNECT → CONNACK → reset. Stops early after `max_secs`.
pub async fn connect_storm(
    target: Target,
    clients: u64,
    conc: usize,
    max_secs: Duration,
) -> Result<serde_json::Value, String> {
    let tag = std::process::id();
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let start = Instant::now();
    let deadline = start + max_secs;
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (target, next, errors, hist, first_error) = (
            target.clone(),
            next.clone(),
            errors.clone(),
            hist.clone(),
            first_error.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("static histogram bounds");
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= clients || Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                match target.session(&format!("cs-{tag}-{i}"), true).await {
                    Ok(s) => {
                        let _ = local.record(t.elapsed().as_micros() as u64);
                        drop(s);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        let mut fe = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        fe.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            let mut h = hist.lock().unwrap_or_else(|p| p.into_inner());
            let _ = h.add(&local);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let el = start.elapsed();
    let h = hist.lock().unwrap_or_else(|p| p.into_inner());
    let ok = h.len();
    let fe = first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(json!({
        "connects_per_sec": ok as f64 / el.as_secs_f64(),
        "ok": ok,
        "errors": errors.load(Ordering::Relaxed),
        "first_error": fe,
        "secs": el.as_secs_f64(),
        "concurrency": conc,
        "tls": target.tls.is_some(),
        "p50_us": h.value_at_quantile(0.50),
        "p99_us": h.value_at_quantile(0.99),
        "max_us": h.max(),
    }))
}

/// Open `clients` sessions (keep-alive 0, so nobody pings), print one JSON line
/// `{"ready":N,...}`, hold them until stdin gives a line or closes, then reset them all.
pub async fn idle(target: Target, clients: u64, conc: usize) -> Result<(), String> {
    let tag = std::process::id();
    let next = Arc::new(AtomicU64::new(0));
    let held = Arc::new(Mutex::new(Vec::with_capacity(clients as usize)));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (target, next, held, errors, first_error) = (
            target.clone(),
            next.clone(),
            held.clone(),
            errors.clone(),
            first_error.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= clients {
                    break;
                }
                match target.session(&format!("idle-{tag}-{i}"), true).await {
                    Ok(s) => held.lock().unwrap_or_else(|p| p.into_inner()).push(s),
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        let mut fe = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        fe.get_or_insert_with(|| e.to_string());
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let n = held.lock().unwrap_or_else(|p| p.into_inner()).len();
    let fe = first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    println!(
        "{}",
        json!({"ready": n, "errors": errors.load(Ordering::Relaxed), "first_error": fe,
               "secs": start.elapsed().as_secs_f64()})
    );
    let mut line = String::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let _ = stdin.read_line(&mut line).await;
    let conns = std::mem::take(&mut *held.lock().unwrap_or_else(|p| p.into_inner()));
    drop(conns);
    // Give the resets a moment to leave before the process (and its fds) go away.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}
