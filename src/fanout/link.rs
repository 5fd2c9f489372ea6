//! Setting up one node connection of a fan-out session: a short task of its own that
//! connects to the node, forwards the client's CONNECT and waits for the node's
//! first packet, then hands the connection to the session ([`Up::Connack`] with a
//! [`NodeIo`]) and ends. From then on the session task reads and writes the node's
//! socket itself, in the same turn as the client's (`super::io`): no task hand-over
//! per message.

use super::outbox::Outbox;
use crate::cluster::Node;
use crate::config::ClusterConfig;
use crate::mqtt::scanner::{Scanned, Scanner};
use crate::proxy::ClientCtx;
use crate::upstream::Broker;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a connection being set up tells its session. `gen` tells one connection of a
/// node from the next.
pub enum Up {
    /// The node's first packet (a CONNACK, or something else: then refused), and
    /// the connection, now the session's.
    Connack {
        idx: usize,
        gen: u32,
        bytes: Vec<u8>,
        io: Box<NodeIo>,
    },
    /// Connecting failed, or the connection ended before its first packet.
    Lost { idx: usize, gen: u32, why: String },
}

/// A node connection owned by the session: the stream, the packet scanner of what
/// it sends, and what is queued for it.
pub struct NodeIo {
    pub stream: Broker,
    pub scanner: Scanner,
    /// Whole packets that came in the same read as the CONNACK (back to back).
    pub early: Vec<u8>,
    pub out: Outbox,
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
    pub max_packet: usize,
    pub up: mpsc::Sender<Up>,
}

/// Start setting the connection up; cancelling the token drops it.
pub fn start(s: LinkStart, tracker: &tokio_util::task::TaskTracker) -> CancellationToken {
    let stop = CancellationToken::new();
    tracker.spawn(run(s, stop.clone()));
    stop
}

async fn run(s: LinkStart, stop: CancellationToken) {
    let (idx, gen) = (s.idx, s.gen);
    let up = s.up.clone();
    let ev = tokio::select! {
        r = connected(s) => match r {
            Ok((bytes, io)) => Up::Connack { idx, gen, bytes, io },
            Err(why) => Up::Lost { idx, gen, why },
        },
        _ = stop.cancelled() => return,
    };
    let _ = up.send(ev).await;
}

/// A scanner that hands over every packet whole (all 16 packet types), up to
/// `max_packet` bytes each: what a fan-out session reads from the client and the nodes.
pub(super) fn whole_packets(max_packet: usize) -> Scanner {
    Scanner::new(&std::array::from_fn::<u8, 16, _>(|t| t as u8), max_packet)
}

/// Why what a node sent cannot be split into packets, for the scanner events that say
/// so (`None` for the others): the node's connection is then dropped.
pub(super) fn unframed(ev: &Scanned<'_>) -> Option<String> {
    match ev {
        Scanned::Oversized { len, .. } => {
            Some(format!("packet of {len} bytes over max_packet_size"))
        }
        Scanned::Lost => Some("malformed remaining length".to_string()),
        Scanned::Whole(_) | Scanned::Pass(_) => None,
    }
}

/// Connect, forward the CONNECT, read the node's first packet.
async fn connected(s: LinkStart) -> Result<(Vec<u8>, Box<NodeIo>), String> {
    let cfg = &s.cfg;
    let tcp = crate::upstream::connect(&s.node, cfg.connect_timeout)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let first = crate::upstream::forward_first(
        cfg,
        s.tls.as_deref(),
        &s.node,
        &s.ctx,
        tcp,
        &s.connect,
        &[],
    );
    let mut broker = first
        .await
        .map_err(|e| format!("forwarding the CONNECT: {e}"))?;
    let mut scanner = whole_packets(s.max_packet);
    let connack_wait = if cfg.connack_timeout.is_zero() {
        cfg.connect_timeout.max(Duration::from_secs(10))
    } else {
        cfg.connack_timeout
    };
    let deadline = Instant::now() + connack_wait;
    let mut buf = Vec::with_capacity(4 * 1024);
    loop {
        buf.clear();
        let n = match tokio::time::timeout_at(deadline, broker.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Err("closed by the node".to_string()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(format!("read: {e}")),
            Err(_) => return Err("no CONNACK in time".to_string()),
        };
        let mut connack: Option<Vec<u8>> = None;
        let mut early = Vec::new();
        let mut bad = None;
        scanner.feed(&buf[..n], |ev| match ev {
            Scanned::Whole(p) if connack.is_none() => connack = Some(p.to_vec()),
            Scanned::Whole(p) => early.extend_from_slice(p),
            ev => bad = unframed(&ev).or(bad.take()),
        });
        if let Some(b) = bad {
            return Err(b);
        }
        if let Some(bytes) = connack {
            let io = NodeIo {
                stream: broker,
                scanner,
                early,
                out: Outbox::default(),
            };
            return Ok((bytes, Box::new(io)));
        }
    }
}
