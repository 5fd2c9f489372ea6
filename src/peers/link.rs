//! One authenticated peer link: a full sync of every sticky table to the peer, then every
//! change as it happens, heartbeats both ways, and the peer's updates merged into ours.
//!
//! Memory stays bounded whatever the peer does: frames are at most `MAX_FRAME` bytes and
//! are merged one at a time before the next is read (TCP backpressure slows a flooding
//! peer down; the table's capacity bounds what it can add). Outgoing changes come straight from
//! the gateway's bounded change feed (every sticky table writes into it); a peer too slow to keep up falls behind the queue and gets a
//! fresh full sync instead of an ever-growing buffer. A full sync copies one table shard
//! at a time (the lock is held only for the copy), then writes it at the peer's pace.
//!
//! On a link without TLS every frame is sealed (`super::seal`): the reader checks each
//! frame's tag before decoding it, the writer adds one to each frame it sends.
//!
//! Updates for a cluster this gateway does not have, or pointing at a node its cluster
//! does not have, are dropped and counted (`mqgate_peer_updates_dropped_total`).

use super::frame::{self, Frame, FrameError, Interner};
use super::merger::Merger;
use super::pull::{Pull, Scope};
use super::seal::FrameKeys;
use super::seal::{Opener, SealError, Sealer};
use crate::host::Host;
use crate::sticky::subs::SubsChange;
use crate::sticky::{Update, SHARDS};
use bytes::{Buf, BytesMut};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// A heartbeat is sent this often.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A link that has received nothing for this long is closed.
pub const DEAD_AFTER: Duration = Duration::from_secs(10);
/// A write that cannot progress for this long closes the link.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Changes drained from the queue into one write.
const DRAIN: usize = 4096;

/// A change of one cluster's table, as the gateway's feed carries it.
pub use crate::sticky::Change;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("connection closed by the peer")]
    Closed,
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("nothing received for {0:?}")]
    Timeout(Duration),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Auth(String),
    #[error("refused by the peer: {0}")]
    Refused(String),
    /// A sealed frame's tag did not match (see `super::seal`).
    #[error("frame failed its integrity check (injected, altered or replayed)")]
    Integrity,
    /// A discovered address led to a peer that is linked already.
    #[error("already linked to this peer")]
    Duplicate,
}

impl From<SealError> for LinkError {
    fn from(e: SealError) -> Self {
        match e {
            SealError::Tag => LinkError::Integrity,
            SealError::Frame(f) => LinkError::Frame(f),
        }
    }
}

impl LinkError {
    pub fn unexpected(f: &Frame) -> LinkError {
        let name = match f {
            Frame::Hello { .. } => "HELLO",
            Frame::Auth { .. } => "AUTH",
            Frame::Updates { .. } | Frame::Batch(_) => "UPDATES",
            Frame::SyncBegin => "SYNC_BEGIN",
            Frame::SyncEnd { .. } => "SYNC_END",
            Frame::SyncRequest { .. } => "SYNC_REQUEST",
            Frame::SyncDone { .. } => "SYNC_DONE",
            Frame::Heartbeat => "HEARTBEAT",
            Frame::Error { .. } => "ERROR",
            Frame::Subs { .. } => "SUBS",
            Frame::Live { .. } => "LIVE",
        };
        LinkError::Protocol(format!("unexpected {name} frame"))
    }
}

/// Reads whole frames from a byte stream, never buffering more than one frame.
pub struct FrameReader<R> {
    r: R,
    buf: BytesMut,
    interner: Interner,
    opener: Option<Opener>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(r: R) -> Self {
        FrameReader {
            r,
            buf: BytesMut::with_capacity(8 * 1024),
            interner: Interner::default(),
            opener: None,
        }
    }

    /// From now on, every frame must be sealed with `key` (see `super::seal`).
    pub fn seal(&mut self, key: &[u8; 32]) {
        self.opener = Some(Opener::new(key));
    }

    /// The next frame at the front of the buffer, if it is complete.
    fn decode_buffered(&mut self) -> Result<Option<Frame>, LinkError> {
        let Some(opener) = self.opener.as_mut() else {
            return Ok(match frame::decode_lazy(&self.buf, &mut self.interner)? {
                Some((f, n)) => {
                    self.buf.advance(n);
                    Some(f)
                }
                None => None,
            });
        };
        let Some(total) = Opener::frame_len(&self.buf)? else {
            return Ok(None);
        };
        if self.buf.len() < total {
            return Ok(None);
        }
        let plain = opener.open(&mut self.buf[..total])?;
        let f = match frame::decode_lazy(&self.buf[..plain], &mut self.interner)? {
            Some((f, _)) => f,
            None => return Err(LinkError::Truncated), // cannot happen: the frame is whole
        };
        self.buf.advance(total);
        Ok(Some(f))
    }

    /// The next frame, or `None` on a clean close between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, LinkError> {
        loop {
            if let Some(f) = self.decode_buffered()? {
                return Ok(Some(f));
            }
            // Room for the rest of this frame (its size is already checked), at most 64 KiB.
            let want = frame::frame_len(&self.buf).unwrap_or(4);
            let more = want.saturating_sub(self.buf.len()).clamp(4, 64 * 1024);
            self.buf.reserve(more);
            if self.r.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(LinkError::Truncated)
                };
            }
        }
    }
}

/// The sending half of a link: seals frames when the link has no TLS.
struct Out<W> {
    w: W,
    sealer: Option<Sealer>,
    sealed: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> Out<W> {
    /// Write whole encoded frames.
    async fn write(&mut self, buf: &[u8]) -> Result<(), LinkError> {
        let bytes = match self.sealer.as_mut() {
            Some(s) => {
                self.sealed.clear();
                s.seal(buf, &mut self.sealed);
                &self.sealed[..]
            }
            None => buf,
        };
        match tokio::time::timeout(WRITE_TIMEOUT, self.w.write_all(bytes)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(LinkError::Protocol(format!(
                "peer has not read anything for {WRITE_TIMEOUT:?}"
            ))),
        }
    }
}

/// A link's part in choosing where the full table comes from ([`super::pull`]).
pub struct Pulling {
    pub pull: Arc<Pull>,
    /// The link's id (unique per gateway).
    pub id: u64,
    /// Protocol version 3 or later: tables are sent when asked (else: unasked, at once).
    pub on_request: bool,
}

/// Run an authenticated link until it fails or `stop` is cancelled. `sealing`: the
/// frame keys of a link without TLS (every frame is then sealed both ways).
#[allow(clippy::too_many_arguments)]
pub async fn run<R, W>(
    host: Arc<Host>,
    hub: broadcast::Sender<Change>,
    peer: Arc<str>,
    mut r: FrameReader<R>,
    w: W,
    sealing: Option<FrameKeys>,
    pulling: Pulling,
    stop: CancellationToken,
) -> Result<(), LinkError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    if let Some(k) = &sealing {
        r.seal(&k.recv);
    }
    let mut w = Out {
        w,
        sealer: sealing.map(|k| Sealer::new(&k.send)),
        sealed: Vec::new(),
    };
    // Subscribe before the full sync, so no change made during it is missed (what is
    // sent twice merges as a no-op).
    let rx = hub.subscribe();
    let srx = crate::sticky::subs::changes().subscribe();
    let lrx = crate::live::changes().subscribe();
    // What to ask the peer for (first now, then if the coordinator says so), and what
    // the peer asked for.
    let (ask_tx, ask) = mpsc::unbounded_channel();
    let (want_tx, wants) = mpsc::unbounded_channel();
    if pulling.on_request {
        let first = pulling.pull.link_up(pulling.id, &peer, ask_tx.clone());
        let _ = ask_tx.send(first);
    }
    let requests = Requests {
        on_request: pulling.on_request,
        ask,
        wants,
    };
    let sending = send_loop(&host, &peer, rx, srx, lrx, &hub, requests, &mut w);
    let receiving = receive_loop(&host, &peer, &mut r, &pulling, &want_tx);
    let result = tokio::select! {
        r = sending => r,
        r = receiving => r,
        _ = stop.cancelled() => Ok(()),
    };
    let _ = w.w.shutdown().await;
    result
}

/// The table requests of a link of version 3: ours to send, the peer's to answer.
struct Requests {
    on_request: bool,
    ask: mpsc::UnboundedReceiver<Scope>,
    wants: mpsc::UnboundedReceiver<Scope>,
}

#[allow(clippy::too_many_arguments)]
async fn send_loop<W: AsyncWrite + Unpin>(
    host: &Host,
    peer: &str,
    mut rx: broadcast::Receiver<Change>,
    mut srx: broadcast::Receiver<SubsChange>,
    mut lrx: broadcast::Receiver<crate::live::LiveChange>,
    hub: &broadcast::Sender<Change>,
    mut req: Requests,
    w: &mut Out<W>,
) -> Result<(), LinkError> {
    let sent = host.metrics.peer_updates.with_label_values(&[peer, "sent"]);
    let v3 = req.on_request;
    if !v3 {
        // Version 2: the full table at once, unasked.
        let n = full_sync(host, w, None).await?;
        sent.inc_by(n);
        tracing::info!(peer, entries = n, "full sticky table sent to peer");
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut batch: Vec<Update> = Vec::new();
    loop {
        let first = tokio::select! {
            r = rx.recv() => r,
            _ = heartbeat.tick() => {
                buf.clear();
                frame::encode(&Frame::Heartbeat, &mut buf);
                w.write(&buf).await?;
                continue;
            }
            Some(scope) = req.ask.recv(), if v3 => {
                buf.clear();
                frame::encode(&Frame::SyncRequest { scope: scope.code() }, &mut buf);
                w.write(&buf).await?;
                continue;
            }
            Some(scope) = req.wants.recv(), if v3 => {
                let n = full_sync(host, w, Some(scope)).await?;
                sent.inc_by(n);
                tracing::info!(peer, entries = n, scope = scope.name(), "sticky table sent to peer, as asked");
                continue;
            }
            l = lrx.recv() => {
                match l {
                    Ok(ch) => send_live(host, ch, &mut lrx, &mut buf, w).await?,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::info!(peer, missed, "peer link fell behind on live client ids; sending them all again");
                        lrx = crate::live::changes().subscribe();
                        buf.clear();
                        encode_all_live(host, &mut buf);
                        w.write(&buf).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => {}
                }
                continue;
            }
            s = srx.recv() => {
                match s {
                    Ok(ch) => send_subs(host, ch, &mut srx, &mut buf, w).await?,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::info!(peer, missed, "peer link fell behind on subscriptions; sending them all again");
                        srx = crate::sticky::subs::changes().subscribe();
                        buf.clear();
                        encode_all_subs(host, &mut buf);
                        w.write(&buf).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => {}
                }
                continue;
            }
        };
        let (mut cluster, u) = match first {
            Ok(c) => c,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::info!(
                    peer,
                    missed,
                    "peer link fell behind; sending the full table again"
                );
                rx = hub.subscribe();
                let n = full_sync(host, w, v3.then_some(Scope::Full)).await?;
                sent.inc_by(n);
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        buf.clear();
        batch.clear();
        batch.push(u);
        let mut count = 1u64;
        // Drain what is already queued into one write, one frame run per cluster.
        while count < DRAIN as u64 {
            match rx.try_recv() {
                Ok((c, u)) => {
                    if c != cluster {
                        frame::encode_updates(&cluster, &batch, &mut buf);
                        batch.clear();
                        cluster = c;
                    }
                    batch.push(u);
                    count += 1;
                }
                Err(_) => break, // empty, or lagged: the next recv() reports it
            }
        }
        frame::encode_updates(&cluster, &batch, &mut buf);
        w.write(&buf).await?;
        sent.inc_by(count);
    }
}

/// Send a local subscription change (and those queued behind it) for clusters that
/// restore subscriptions.
async fn send_subs<W: AsyncWrite + Unpin>(
    host: &Host,
    first: SubsChange,
    srx: &mut broadcast::Receiver<SubsChange>,
    buf: &mut Vec<u8>,
    w: &mut Out<W>,
) -> Result<(), LinkError> {
    send_drained(first, srx, buf, w, |ch, buf| {
        let on = host
            .cluster(&ch.cluster)
            .is_some_and(|c| c.config().sessions.restore_subscriptions);
        if on {
            frame::encode_subs(&ch.cluster, &[(ch.key, ch.stamp, ch.subs.to_vec())], buf);
        }
    })
    .await
}

/// Announce a connection that went live here (and those queued behind it) for
/// clusters with `single_live`.
async fn send_live<W: AsyncWrite + Unpin>(
    host: &Host,
    first: crate::live::LiveChange,
    lrx: &mut broadcast::Receiver<crate::live::LiveChange>,
    buf: &mut Vec<u8>,
    w: &mut Out<W>,
) -> Result<(), LinkError> {
    send_drained(first, lrx, buf, w, |ch, buf| {
        let on = host
            .cluster(&ch.cluster)
            .is_some_and(|c| c.config().sessions.single_live.enabled);
        if on {
            frame::encode_live(&ch.cluster, &[(ch.id, ch.stamp, ch.addr)], buf);
        }
    })
    .await
}

/// Encode `first` and up to [`DRAIN`] changes queued behind it, then write them in
/// one go (nothing when none was encoded).
async fn send_drained<T: Clone, W: AsyncWrite + Unpin>(
    first: T,
    rx: &mut broadcast::Receiver<T>,
    buf: &mut Vec<u8>,
    w: &mut Out<W>,
    mut encode: impl FnMut(T, &mut Vec<u8>),
) -> Result<(), LinkError> {
    buf.clear();
    let mut next = Some(first);
    let mut n = 0;
    while let Some(ch) = next.take() {
        encode(ch, buf);
        n += 1;
        if n < DRAIN {
            next = rx.try_recv().ok();
        }
    }
    if !buf.is_empty() {
        w.write(buf).await?;
    }
    Ok(())
}

/// Every live connection of the clusters with `single_live`, as LIVE frames.
pub(super) fn encode_all_live(host: &Host, buf: &mut Vec<u8>) {
    for c in host.clusters_sorted() {
        if c.config().sessions.single_live.enabled {
            let all = c.live.export();
            if !all.is_empty() {
                frame::encode_live(&c.name, &all, buf);
            }
        }
    }
}

/// Every stored subscription of the clusters that restore them, as SUBS frames.
pub(super) fn encode_all_subs(host: &Host, buf: &mut Vec<u8>) {
    for c in host.clusters_sorted() {
        if c.config().sessions.restore_subscriptions {
            let all = c.subs.export();
            if !all.is_empty() {
                frame::encode_subs(&c.name, &all, buf);
            }
        }
    }
}

/// Bytes of encoded frames gathered before a write during a full sync.
const SYNC_WRITE: usize = 1 << 20;

/// Send every table, shard by shard; returns how many updates went. Each shard is
/// encoded straight from the table under its lock (no copy of the entries), into
/// frames of up to [`frame::SYNC_BATCH`] updates, written a megabyte or more at a time.
///
/// `scope`: on a link of version 3, what the peer asked for ([`Scope::Own`]: only the
/// entries this gateway wrote), ended by SYNC_DONE; `None` on a link of version 2
/// (the whole table, ended by SYNC_END).
async fn full_sync<W: AsyncWrite + Unpin>(
    host: &Host,
    w: &mut Out<W>,
    scope: Option<Scope>,
) -> Result<u64, LinkError> {
    let mut buf = Vec::with_capacity(2 * SYNC_WRITE);
    frame::encode(&Frame::SyncBegin, &mut buf);
    let clusters = host.clusters_sorted();
    let mut total = 0u64;
    let own_only = scope == Some(Scope::Own);
    for c in clusters {
        let own = c.sticky.origin().clone();
        for shard in 0..SHARDS {
            let mut enc = frame::UpdatesWriter::new(&c.name, frame::SYNC_BATCH);
            c.sticky.for_each_in_shard(shard, |u| {
                if !own_only || u.origin == &*own {
                    enc.push(&mut buf, &u);
                    total += 1;
                }
            });
            enc.flush(&mut buf);
            if buf.len() >= SYNC_WRITE {
                w.write(&buf).await?;
                buf.clear();
            }
        }
    }
    encode_all_subs(host, &mut buf);
    encode_all_live(host, &mut buf);
    match scope {
        Some(scope) => frame::encode(
            &Frame::SyncDone {
                scope: scope.code(),
                entries: total,
            },
            &mut buf,
        ),
        None => frame::encode(&Frame::SyncEnd { entries: total }, &mut buf),
    }
    w.write(&buf).await?;
    w.w.flush().await?;
    Ok(total)
}

async fn receive_loop<R: AsyncRead + Unpin>(
    host: &Host,
    peer: &str,
    r: &mut FrameReader<R>,
    pulling: &Pulling,
    wants: &mpsc::UnboundedSender<Scope>,
) -> Result<(), LinkError> {
    let received = host
        .metrics
        .peer_updates
        .with_label_values(&[peer, "received"]);
    let dropped = |reason: &str| {
        host.metrics
            .peer_updates_dropped
            .with_label_values(&[peer, reason])
    };
    let mut merger = Merger {
        host,
        peer,
        unknown_cluster: dropped("unknown_cluster"),
        unknown_node: dropped("unknown_node"),
        warned_cluster: false,
        warned_node: false,
    };
    let mut syncing: Option<u64> = None;
    loop {
        let f = match tokio::time::timeout(DEAD_AFTER, r.next()).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                let reason = match &e {
                    LinkError::Integrity => Some("mac"),
                    LinkError::Frame(_) => Some("malformed"),
                    _ => None,
                };
                if let Some(reason) = reason {
                    host.metrics
                        .peer_frames_rejected
                        .with_label_values(&[peer, reason])
                        .inc();
                }
                return Err(e);
            }
            Err(_) => return Err(LinkError::Timeout(DEAD_AFTER)),
        };
        match f {
            None => return Err(LinkError::Closed),
            Some(Frame::Batch(b)) => {
                received.inc_by(b.len() as u64);
                if let Some(n) = syncing.as_mut() {
                    *n += b.len() as u64;
                }
                merger.merge(&b.cluster, b.len(), b.iter());
                // A flood of frames must not starve client connections on this worker.
                tokio::task::yield_now().await;
            }
            Some(Frame::Updates { cluster, updates }) => {
                // Not produced by `FrameReader` (it reads UPDATES as batches).
                received.inc_by(updates.len() as u64);
                merger.merge(&cluster, updates.len(), updates.iter().map(|u| u.view()));
                tokio::task::yield_now().await;
            }
            Some(Frame::SyncBegin) => {
                tracing::debug!(peer, "receiving the peer's full table");
                syncing = Some(0);
            }
            Some(Frame::SyncEnd { entries }) => {
                // Version 2's end of a full table sent unasked (a peer of version 3
                // ends tables with SYNC_DONE, but a full table is a full table).
                let got = syncing.take().unwrap_or(0);
                tracing::info!(
                    peer,
                    entries,
                    received = got,
                    "full sticky table received from peer"
                );
                pulling.pull.full_received(pulling.id);
                host.refresh_sticky_gauges();
            }
            Some(Frame::SyncDone { scope, entries }) if pulling.on_request => {
                let got = syncing.take().unwrap_or(0);
                let scope = Scope::from_code(scope).unwrap_or(Scope::Own);
                tracing::info!(
                    peer,
                    entries,
                    received = got,
                    scope = scope.name(),
                    "sticky table received from peer"
                );
                if scope == Scope::Full {
                    pulling.pull.full_received(pulling.id);
                }
                host.refresh_sticky_gauges();
            }
            Some(Frame::SyncRequest { scope }) if pulling.on_request => {
                let scope = Scope::from_code(scope).unwrap_or(Scope::Full);
                tracing::debug!(peer, scope = scope.name(), "peer asks for the sticky table");
                let _ = wants.send(scope);
            }
            Some(Frame::Subs { cluster, clients }) => {
                // Applied only where this gateway restores subscriptions too.
                if let Some(c) = host
                    .cluster(&cluster)
                    .filter(|c| c.config().sessions.restore_subscriptions)
                {
                    for (key, stamp, subs) in &clients {
                        c.subs.apply_remote(key, *stamp, subs);
                    }
                }
                tokio::task::yield_now().await;
            }
            Some(Frame::Live { cluster, ids }) => {
                // Applied only where this gateway keeps one live session per id too.
                if let Some(c) = host.cluster(&cluster) {
                    let cfg = c.config().sessions.single_live;
                    if cfg.enabled {
                        for (id, stamp, addr) in &ids {
                            c.live.remote(id, *stamp, addr, peer, cfg);
                        }
                    }
                }
                tokio::task::yield_now().await;
            }
            Some(Frame::Heartbeat) => {}
            Some(Frame::Error { reason }) => return Err(LinkError::Refused(reason)),
            Some(
                f @ (Frame::Hello { .. }
                | Frame::Auth { .. }
                | Frame::SyncDone { .. }
                | Frame::SyncRequest { .. }),
            ) => return Err(LinkError::unexpected(&f)),
        }
    }
}
