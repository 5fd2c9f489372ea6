//! One node connection of a fan-out session: a task of its own that connects to the
//! node, forwards the client's CONNECT, reports the node's CONNACK, then reads the
//! node's packets whole (to the session: the packets of one read as one message,
//! through one bounded channel shared by all its nodes; when the session stops
//! taking them, the task stops reading and TCP pushes back on the broker) and writes what the session queues for it (an
//! [`super::outbox`], whose size the session bounds before it reads more from the
//! client). It sends PINGREQ at the client's keep-alive. Reading and writing
//! are two futures of the same task, so a full session channel never stops the
//! writes (which is what frees it).

use super::outbox::{Outbox, OutboxTx};
use crate::cluster::Node;
use crate::config::ClusterConfig;
use crate::mqtt::scanner::{Scanned, Scanner};
use crate::proxy::ClientCtx;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a node has to close once the session has closed its side.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// What a node connection tells its session. `gen` tells one connection of a node
/// from the next.
#[derive(Debug)]
pub enum Up {
    /// The node's first packet (a CONNACK, or something else: then refused).
    Connack {
        idx: usize,
        gen: u32,
        bytes: Vec<u8>,
    },
    /// The whole packets of one read after the CONNACK, back to back.
    Packets {
        idx: usize,
        gen: u32,
        bytes: Vec<u8>,
    },
    /// Connecting failed, or the connection ended.
    Lost { idx: usize, gen: u32, why: String },
}

/// The session's side of one node connection; dropping it closes the connection
/// once what was queued is written.
pub struct LinkHandle {
    out: OutboxTx,
    pub stop: CancellationToken,
}

impl LinkHandle {
    /// Queue bytes for the node.
    pub fn send(&self, bytes: Vec<u8>) {
        self.out.push(&bytes);
    }

    /// Bytes queued for the node and not taken by its writer yet.
    pub fn queued(&self) -> usize {
        self.out.queued()
    }
}

/// What a node connection needs to start.
pub struct LinkStart {
    pub node: Arc<Node>,
    pub idx: usize,
    pub gen: u32,
    pub cfg: Arc<ClusterConfig>,
    pub tls: Option<Arc<crate::broker_tls::BrokerTls>>,
    pub ctx: Arc<ClientCtx>,
    /// The client's CONNECT, unchanged.
    pub connect: Arc<Vec<u8>>,
    pub keep_alive: Duration,
    pub max_packet: usize,
    pub up: mpsc::Sender<Up>,
    /// Woken when a write drained the queue (the session may read its client again).
    pub drained: Arc<Notify>,
}

/// Start the connection task; the handle is the session's.
pub fn start(s: LinkStart, tracker: &tokio_util::task::TaskTracker) -> LinkHandle {
    let (out, rx) = OutboxTx::new();
    let stop = CancellationToken::new();
    let h = LinkHandle {
        out,
        stop: stop.clone(),
    };
    tracker.spawn(run(s, rx, stop));
    h
}

async fn run(s: LinkStart, rx: Arc<Outbox>, stop: CancellationToken) {
    let (idx, gen) = (s.idx, s.gen);
    let up = s.up.clone();
    let why = tokio::select! {
        r = connected(s, rx) => r,
        _ = stop.cancelled() => "stopped by the session".to_string(),
    };
    let _ = up.send(Up::Lost { idx, gen, why }).await;
}

/// Connect, forward the CONNECT, relay until the connection ends; returns why.
async fn connected(s: LinkStart, rx: Arc<Outbox>) -> String {
    let cfg = &s.cfg;
    let tcp = match crate::upstream::connect(&s.node, cfg.connect_timeout).await {
        Ok(t) => t,
        Err(e) => return format!("connect: {e}"),
    };
    let first = crate::upstream::forward_first(
        cfg,
        s.tls.as_deref(),
        &s.node,
        &s.ctx,
        tcp,
        &s.connect,
        &[],
    );
    let broker = match first.await {
        Ok(b) => b,
        Err(e) => return format!("forwarding the CONNECT: {e}"),
    };
    let (mut rd, mut wr) = tokio::io::split(broker);
    let mut scanner = Scanner::new(&(0u8..16).collect::<Vec<_>>(), s.max_packet);
    let mut buf = Vec::with_capacity(16 * 1024);
    let connack_wait = if cfg.connack_timeout.is_zero() {
        cfg.connect_timeout.max(Duration::from_secs(10))
    } else {
        cfg.connack_timeout
    };
    let deadline = Instant::now() + connack_wait;
    let mut got_connack = false;
    let reading = async {
        loop {
            buf.clear();
            let n = if got_connack {
                rd.read_buf(&mut buf).await
            } else {
                match tokio::time::timeout_at(deadline, rd.read_buf(&mut buf)).await {
                    Ok(r) => r,
                    Err(_) => return "no CONNACK in time".to_string(),
                }
            };
            match n {
                Ok(0) => return "closed by the node".to_string(),
                Err(e) => return format!("read: {e}"),
                Ok(_) => {}
            }
            // Every whole packet of this read goes to the session as one message
            // (one allocation, one channel send); the first packet of the
            // connection (its CONNACK) on its own.
            let mut connack: Option<Vec<u8>> = None;
            let mut batch: Vec<u8> = Vec::new();
            let mut bad = None;
            scanner.feed(&buf, |ev| match ev {
                Scanned::Whole(p) if !got_connack && connack.is_none() => {
                    connack = Some(p.to_vec())
                }
                Scanned::Whole(p) => batch.extend_from_slice(p),
                Scanned::Oversized { len, .. } => {
                    bad = Some(format!("packet of {len} bytes over max_packet_size"))
                }
                Scanned::Lost => bad = Some("malformed remaining length".to_string()),
                Scanned::Pass(_) => {}
            });
            if let Some(bytes) = connack {
                got_connack = true;
                let ev = Up::Connack {
                    idx: s.idx,
                    gen: s.gen,
                    bytes,
                };
                if s.up.send(ev).await.is_err() {
                    return "session ended".to_string();
                }
            }
            if !batch.is_empty() {
                let ev = Up::Packets {
                    idx: s.idx,
                    gen: s.gen,
                    bytes: batch,
                };
                if s.up.send(ev).await.is_err() {
                    return "session ended".to_string();
                }
            }
            if let Some(b) = bad {
                return b;
            }
        }
    };
    let writing = async {
        let mut ping = (!s.keep_alive.is_zero()).then(|| {
            let mut i = tokio::time::interval_at(Instant::now() + s.keep_alive, s.keep_alive);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let mut mine: Vec<u8> = Vec::new();
        loop {
            rx.take(&mut mine);
            if !mine.is_empty() {
                if let Err(e) = wr.write_all(&mine).await {
                    return format!("write: {e}");
                }
                mine.clear();
                if mine.capacity() > 4 * 1024 * 1024 {
                    mine = Vec::new();
                }
                s.drained.notify_one();
                continue;
            }
            if rx.is_closed() {
                // The session ended (or sent DISCONNECT): close our side and give
                // the node a moment to close its own.
                let _ = wr.shutdown().await;
                tokio::time::sleep(CLOSE_LINGER).await;
                return "closed after the session ended".to_string();
            }
            let tick = async {
                match ping.as_mut() {
                    Some(i) => {
                        i.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = rx.ready() => {}
                _ = tick => {
                    if let Err(e) = wr.write_all(&super::packet::PINGREQ_BYTES).await {
                        return format!("write: {e}");
                    }
                }
            }
        }
    };
    tokio::select! {
        r = reading => r,
        r = writing => r,
    }
}
