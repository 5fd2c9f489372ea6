//! The closed loop of the fan-in benchmark (`fanin`): a publisher keeps at most `window`
//! messages in flight against what its one reader counted delivered (and, at QoS 1,
//! acknowledged). The `throughput` scenarios have their own, shared by groups.

use crate::mqtt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct Pair {
    pub(crate) delivered: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) notify: Notify,
}

const BATCH: u64 = 16;

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
