//! Publish → deliver latency at a fixed rate well below saturation.
//!
//! One publisher thread paces messages on a schedule (each message its own write, the
//! send time in its payload); one subscriber thread (same process, same clock) records
//! receive time − send time in a µs histogram. Plain blocking sockets keep the
//! measuring side simple and its own scheduling delay small.

use crate::mqtt;
use hdrhistogram::Histogram;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Opts {
    /// Messages per second into the subscriber, all publishers together.
    pub rate: u64,
    /// Publishers (threads), each on its own topic at `rate / pubs`; with more than one,
    /// the subscriber takes them all on a wildcard (fan-in).
    pub pubs: usize,
    /// Idle sessions held open beside the traffic (opened before it starts).
    pub idle: usize,
    pub size: usize,
    pub warmup: Duration,
    pub secs: Duration,
}

/// Plain TCP, or MQTT over WebSocket (`--ws PATH`).
enum Conn {
    Tcp(TcpStream),
    Ws(crate::ws::WsSync<TcpStream>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Tcp(s) => s,
            Conn::Ws(w) => &w.inner,
        }
    }

    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        self.tcp().set_read_timeout(d)
    }
}

impl Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(b),
            Conn::Ws(w) => w.read(b),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(b),
            Conn::Ws(w) => w.write(b),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn session(addr: SocketAddr, ws: Option<&str>, id: &str) -> Result<Conn, String> {
    let mut tcp = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut s = match ws {
        None => Conn::Tcp(tcp),
        Some(path) => {
            crate::ws::upgrade_sync(&mut tcp, path).map_err(|e| e.to_string())?;
            Conn::Ws(crate::ws::WsSync::new(tcp))
        }
    };
    s.write_all(&mqtt::connect(id, 0, true))
        .map_err(|e| e.to_string())?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack)
        .map_err(|e| format!("CONNACK: {e}"))?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(format!("CONNACK refused: {ack:02x?}"));
    }
    Ok(s)
}

pub fn run(addr: SocketAddr, ws: Option<&str>, o: Opts) -> Result<serde_json::Value, String> {
    let tag = std::process::id();
    let pubs = o.pubs.max(1);
    let topic = format!("lat/{tag}");
    let filter = if pubs == 1 {
        topic.clone()
    } else {
        format!("{topic}/+")
    };
    let mut idle = Vec::with_capacity(o.idle);
    for k in 0..o.idle {
        idle.push(session(addr, ws, &format!("lat-idle-{tag}-{k}"))?);
    }
    let mut sub = session(addr, ws, &format!("lat-sub-{tag}"))?;
    sub.write_all(&mqtt::subscribe(1, &filter, 0))
        .map_err(|e| e.to_string())?;
    let mut ack = [0u8; 5];
    sub.read_exact(&mut ack)
        .map_err(|e| format!("SUBACK: {e}"))?;
    let mut publs = Vec::with_capacity(pubs);
    for k in 0..pubs {
        publs.push(session(addr, ws, &format!("lat-pub-{tag}-{k}"))?);
    }
    let base = Instant::now();
    let warm_ns = o.warmup.as_nanos() as u64;
    let end_ns = warm_ns + o.secs.as_nanos() as u64;
    let sent = Arc::new(AtomicU64::new(0));
    let publishing = Arc::new(AtomicBool::new(true));
    let received = Arc::new(AtomicU64::new(0));

    let rx = {
        let received = received.clone();
        sub.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| e.to_string())?;
        let sent = sent.clone();
        let publishing = publishing.clone();
        std::thread::spawn(move || -> Result<Histogram<u64>, String> {
            let mut h =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut have = 0;
            let mut idle_since: Option<Instant> = None;
            loop {
                let n = match sub.read(&mut buf[have..]) {
                    Ok(0) => return Err("subscriber: connection closed".into()),
                    Ok(n) => n,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        0
                    }
                    Err(e) => return Err(format!("subscriber: {e}")),
                };
                let now = base.elapsed().as_nanos() as u64;
                have += n;
                let mut got = 0;
                let used = mqtt::split(&buf[..have], |p| {
                    if let Some((_, payload)) = p.publish_parts() {
                        if payload.len() >= 8 {
                            let mut t = [0u8; 8];
                            t.copy_from_slice(&payload[..8]);
                            let ts = u64::from_be_bytes(t);
                            if ts >= warm_ns {
                                let _ = h.record(now.saturating_sub(ts) / 1000);
                            }
                        }
                        got += 1;
                    }
                })?;
                buf.copy_within(used..have, 0);
                have -= used;
                let total = received.fetch_add(got, Ordering::Relaxed) + got;
                if !publishing.load(Ordering::Relaxed) {
                    if total >= sent.load(Ordering::Relaxed) {
                        return Ok(h);
                    }
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(2) {
                        return Ok(h);
                    }
                }
            }
        })
    };

    // Publisher k sends at `rate / pubs`, shifted by k / rate: together one message
    // every 1 / rate.
    let step = 1_000_000_000 / o.rate.max(1);
    let threads: Vec<_> = publs
        .into_iter()
        .enumerate()
        .map(|(k, mut publ)| {
            let t = if pubs == 1 {
                topic.clone()
            } else {
                format!("{topic}/{k}")
            };
            let tpl = mqtt::publish(&t, 0, o.size.max(8));
            let sent = sent.clone();
            let (interval, offset) = (step * pubs as u64, step * k as u64);
            std::thread::spawn(move || -> Result<(), String> {
                let mut msg = tpl.bytes.clone();
                let mut i: u64 = 0;
                loop {
                    let now = base.elapsed().as_nanos() as u64;
                    if now >= end_ns {
                        break;
                    }
                    let due = offset + i * interval;
                    if due > now {
                        std::thread::sleep(Duration::from_nanos(due - now));
                        continue;
                    }
                    while offset + i * interval <= now {
                        let ts = base.elapsed().as_nanos() as u64;
                        msg[tpl.payload_at..tpl.payload_at + 8].copy_from_slice(&ts.to_be_bytes());
                        publ.write_all(&msg)
                            .map_err(|e| format!("publisher {k}: {e}"))?;
                        i += 1;
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let _ = publ.write_all(&mqtt::DISCONNECT);
                Ok(())
            })
        })
        .collect();
    let mut first_err = None;
    for t in threads {
        let r = t
            .join()
            .map_err(|_| "publisher thread panicked".to_string())
            .and_then(|r| r);
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    publishing.store(false, Ordering::Relaxed);
    let h = rx
        .join()
        .map_err(|_| "subscriber thread panicked".to_string())??;
    if let Some(e) = first_err {
        return Err(e);
    }
    drop(idle);
    let i = sent.load(Ordering::Relaxed);
    let got = received.load(Ordering::Relaxed);
    Ok(json!({
        "rate": o.rate,
        "pubs": pubs,
        "idle": o.idle,
        "size": o.size,
        "sent": i,
        "received": got,
        "lost": i.saturating_sub(got),
        "samples": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
        "mean_us": h.mean(),
    }))
}
