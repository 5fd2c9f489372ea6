//! The fan-out session task: one client connection, one connection per up node.
//!
//! Set-up: a node connection ([`super::link`]) to every usable node (up, not in
//! `maint`), each sent the client's CONNECT unchanged; one CONNACK to the client
//! once every node answered or the deadline passed. Then one loop:
//! - client packets ([`Session::on_client`], in `handle.rs`) and node packets
//!   ([`Session::on_node`]), whole, in order per connection;
//! - backpressure: the client is read only while every node's write queue is under
//!   [`QUEUE_MAX`]; the nodes are read only while the client's write queue is under
//!   it and a client-side packet identifier is free (`max_inflight`);
//! - the cluster's node states: a node that is no longer usable loses its
//!   connection; a usable node without one is connected (again), then the session's
//!   subscriptions are replayed there before anything else is sent to it;
//! - PINGREQ answered here; the client's keep-alive (× 1.5) enforced here.

use super::batch::{Batch, Held};
use super::ids::Ids;
use super::link::{self, LinkHandle, LinkStart, Up};
use super::merge::{AckMerge, PubMerge};
use super::outbox::{Outbox, OutboxTx};
use crate::cluster::{AdminState, Health, Node};
use crate::config::{ClusterConfig, FanoutRule};
use crate::mqtt::scanner::{Scanned, Scanner};
use crate::proxy::ClientCtx;
use crate::runtime::{DataPath, ListenerRt};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// Bytes queued for one connection (client or node) before the other side is no
/// longer read.
pub const QUEUE_MAX: usize = 1024 * 1024;
/// Subscriptions a session keeps for replay; more are forwarded but not kept.
pub const MAX_STORED: usize = 10_000;
/// First pause before a node that failed or refused is tried again (doubling to 30 s).
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Node events handled per turn of the session loop at most.
const DRAIN: usize = 256;

/// What the session needs from the set-up path.
pub struct Start {
    pub data: Arc<DataPath>,
    pub lst: Arc<ListenerRt>,
    pub cfg: Arc<ClusterConfig>,
    pub rule: FanoutRule,
    pub ctx: Arc<ClientCtx>,
    /// The client's CONNECT and what it sent after it.
    pub connect: Vec<u8>,
    pub rest: Vec<u8>,
    pub v5: bool,
    pub keep_alive: u16,
    pub client_id: String,
}

/// Why a session ended (`mqgate_fanout_closes_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Disconnect,
    ClientClosed,
    Malformed,
    Protocol,
    TooLarge,
    KeepAlive,
    NoNode,
    Refused,
    Shutdown,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Disconnect => "disconnect",
            End::ClientClosed => "client_closed",
            End::Malformed => "malformed",
            End::Protocol => "protocol",
            End::TooLarge => "too_large",
            End::KeepAlive => "keepalive",
            End::NoNode => "no_node",
            End::Refused => "refused",
            End::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LinkState {
    Idle { retry_at: Instant },
    Connecting,
    Up,
}

/// What a packet identifier on a node connection stands for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Out {
    Sub(u16),
    Unsub(u16),
    Pub(u16),
    Replay,
}

/// A QoS 1/2 PUBLISH from a node, under a client-side identifier.
#[derive(Debug, Clone, Copy)]
pub(super) struct In {
    pub idx: usize,
    pub gen: u32,
    pub nid: u16,
}

/// One node of the cluster, as this session sees it.
pub(super) struct Slot {
    pub node: Arc<Node>,
    pub gen: u32,
    pub state: LinkState,
    pub link: Option<LinkHandle>,
    pub out: Ids<Out>,
    /// QoS 2 from the node whose PUBREC went back: node identifier → client's.
    pub rel: HashMap<u16, u16>,
    pub backoff: Duration,
    pub to_client: prometheus::IntCounter,
    pub to_node: prometheus::IntCounter,
    pub upstreams: prometheus::IntGauge,
}

/// A subscription kept for replay.
pub(super) struct Stored {
    pub filter: String,
    pub options: u8,
    pub props: Vec<u8>,
}

pub(super) struct Session {
    pub start: Start,
    pub cluster: String,
    pub connect: Arc<Vec<u8>>,
    pub slots: Vec<Slot>,
    pub inbound: Ids<In>,
    pub subs: HashMap<u16, AckMerge>,
    pub pubs: HashMap<u16, PubMerge>,
    pub stored: Vec<Stored>,
    pub client: OutboxTx,
    pub drained: Arc<Notify>,
    pub up_tx: mpsc::Sender<Up>,
    /// Node packets taken from the channel and not handled yet.
    pub held: Held,
    /// Set when a handler decides the session ends.
    pub end: Option<End>,
}

impl Session {
    /// Queue bytes for the client.
    pub fn to_client(&self, bytes: impl AsRef<[u8]>) {
        self.client.push(bytes.as_ref());
    }

    pub fn up_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state == LinkState::Up)
            .count()
    }

    fn usable(n: &Node) -> bool {
        !n.is_removed() && n.health() == Health::Up && n.admin_state() != AdminState::Maint
    }

    fn slot_for(&self, node: Arc<Node>) -> Slot {
        let m = &self.start.data.metrics.fanout;
        let c = self.cluster.as_str();
        Slot {
            to_client: m.messages.with_label_values(&[c, &node.name, "to_client"]),
            to_node: m.messages.with_label_values(&[c, &node.name, "to_node"]),
            upstreams: m.upstreams.with_label_values(&[c, &node.name]),
            node,
            gen: 0,
            state: LinkState::Idle {
                retry_at: Instant::now(),
            },
            link: None,
            out: Ids::new(65_535),
            rel: HashMap::new(),
            backoff: RETRY_FIRST,
        }
    }

    fn connect_slot(&mut self, idx: usize) {
        let keep_alive = Duration::from_secs(u64::from(self.start.keep_alive));
        let cluster_tls = self.start.lst.cluster.tls();
        let s = &mut self.slots[idx];
        s.gen = s.gen.wrapping_add(1);
        s.state = LinkState::Connecting;
        s.link = Some(link::start(
            LinkStart {
                node: s.node.clone(),
                idx,
                gen: s.gen,
                cfg: self.start.cfg.clone(),
                tls: cluster_tls,
                ctx: self.start.ctx.clone(),
                connect: self.connect.clone(),
                keep_alive,
                max_packet: self.start.rule.max_packet_size,
                up: self.up_tx.clone(),
                drained: self.drained.clone(),
            },
            &self.start.data.tracker,
        ));
    }

    /// Follow the cluster: new nodes get a slot, unusable nodes lose their
    /// connection, usable idle nodes whose retry time came are connected.
    pub fn reconcile(&mut self) {
        let nodes = self.start.lst.cluster.nodes();
        for n in nodes.iter() {
            if !self.slots.iter().any(|s| Arc::ptr_eq(&s.node, n)) {
                let slot = self.slot_for(n.clone());
                self.slots.push(slot);
            }
        }
        let now = Instant::now();
        for idx in 0..self.slots.len() {
            let usable = Self::usable(&self.slots[idx].node);
            match self.slots[idx].state {
                LinkState::Up | LinkState::Connecting if !usable => {
                    tracing::debug!(node = %self.slots[idx].node.name, "fan-out: node not usable; its connection is dropped");
                    self.lost(idx, RETRY_FIRST);
                }
                LinkState::Idle { retry_at } if usable && retry_at <= now => self.connect_slot(idx),
                _ => {}
            }
        }
    }

    /// The node connection of slot `idx` ended (or is dropped): stop it, settle what
    /// waited for it, retry after `pause`.
    pub fn lost(&mut self, idx: usize, pause: Duration) {
        let was_up = self.slots[idx].state == LinkState::Up;
        let s = &mut self.slots[idx];
        if let Some(l) = s.link.take() {
            l.stop.cancel();
        }
        if was_up {
            s.upstreams.dec();
        }
        s.gen = s.gen.wrapping_add(1);
        s.state = LinkState::Idle {
            retry_at: Instant::now() + pause,
        };
        s.rel.clear();
        let outs = s.out.drain();
        for (_, o) in outs {
            match o {
                Out::Sub(cid) | Out::Unsub(cid) => {
                    if let Some(m) = self.subs.get_mut(&cid) {
                        m.gone(idx);
                    }
                    self.settle_sub(cid);
                }
                Out::Pub(cid) => {
                    if let Some(m) = self.pubs.get_mut(&cid) {
                        m.gone(idx);
                    }
                    self.settle_pub(cid);
                }
                Out::Replay => {}
            }
        }
        if was_up && self.up_count() == 0 && self.end.is_none() {
            tracing::debug!("fan-out: no node connection left; closing the client");
            self.end = Some(End::NoNode);
        }
    }

    fn next_retry(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| match s.state {
                LinkState::Idle { retry_at } if Self::usable(&s.node) => Some(retry_at),
                _ => None,
            })
            .min()
    }

    /// May node packets be taken now (client queue under its bound, an id free)?
    pub(super) fn nodes_readable(&self) -> bool {
        self.client.queued() < QUEUE_MAX && self.inbound.available()
    }

    fn queues_ok(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.link.as_ref().is_none_or(|l| l.queued() < QUEUE_MAX))
    }
}

/// Run a fan-out session to its end; returns why it ended.
pub async fn run<S>(start: Start, client: S) -> End
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(client);
    let (client_out, client_box) = OutboxTx::new();
    let drained = Arc::new(Notify::new());
    let (up_tx, mut up_rx) = mpsc::channel(64);
    let cluster = start.lst.cluster.name.clone();
    let connect = Arc::new(start.connect.clone());
    let mut s = Session {
        inbound: Ids::new(start.rule.max_inflight),
        start,
        cluster,
        connect,
        slots: Vec::new(),
        subs: HashMap::new(),
        pubs: HashMap::new(),
        stored: Vec::new(),
        client: client_out,
        drained: drained.clone(),
        up_tx,
        held: Held::default(),
        end: None,
    };
    let writer = client_writer(wr, client_box, drained.clone());
    tokio::pin!(writer);
    let mut written_out = false;
    let end = s
        .drive(&mut rd, &mut up_rx, writer.as_mut(), &mut written_out)
        .await;
    // Node connections still being set up are stopped (they must not log the client
    // in after it left); dropping the session's senders lets every other writer flush
    // and close its side.
    for slot in &s.slots {
        if slot.state == LinkState::Connecting {
            if let Some(l) = &slot.link {
                l.stop.cancel();
            }
        }
    }
    drop(s);
    if !written_out {
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    }
    end
}

impl Session {
    /// Set-up, then the loop; see the module comment.
    async fn drive<R: AsyncRead + Unpin, W: Future<Output = ()>>(
        &mut self,
        rd: &mut R,
        up_rx: &mut mpsc::Receiver<Up>,
        mut writer: Pin<&mut W>,
        writer_done: &mut bool,
    ) -> End {
        if let Err(end) = self.connect_all(up_rx).await {
            return end;
        }
        let mut scanner = Scanner::new(
            &(0u8..16).collect::<Vec<_>>(),
            self.start.rule.max_packet_size,
        );
        let rest = std::mem::take(&mut self.start.rest);
        if !rest.is_empty() {
            if let Some(e) = self.client_bytes(&mut scanner, &rest) {
                return e;
            }
        }
        let ka = Duration::from_millis(u64::from(self.start.keep_alive) * 1500);
        let mut last_read = Instant::now();
        let mut buf = Vec::with_capacity(16 * 1024);
        let closed = self.start.lst.closed.clone();
        let cluster = self.start.lst.cluster.clone();
        let drained = self.drained.clone();
        loop {
            if !self.held.is_empty() {
                self.handle_held();
            }
            if let Some(e) = self.end {
                return e;
            }
            let read_client = self.queues_ok();
            // The node channel is read once every packet taken from it is handled.
            let read_nodes = self.nodes_readable() && self.held.is_empty();
            let retry = self.next_retry();
            let changed = cluster.changed();
            // In this order, each turn: the client writer first (it writes what the
            // last turn queued, once, before more is taken), the client's packets
            // (acknowledgements free identifiers) before the nodes'.
            tokio::select! {
                biased;
                _ = closed.closed() => return End::Shutdown,
                _ = &mut writer => {
                    *writer_done = true;
                    return End::ClientClosed;
                }
                _ = changed => self.reconcile(),
                _ = sleep_opt(retry) => self.reconcile(),
                _ = tokio::time::sleep_until(last_read + ka), if !ka.is_zero() => {
                    tracing::debug!("fan-out client silent past 1.5 × its keep-alive: closed");
                    return End::KeepAlive;
                }
                _ = drained.notified(), if !(read_client && read_nodes) => {}
                r = rd.read_buf(&mut buf), if read_client => {
                    match r {
                        Ok(0) => return End::ClientClosed,
                        Err(e) => {
                            tracing::debug!(error = %e, "fan-out client read failed");
                            return End::ClientClosed;
                        }
                        Ok(_) => {}
                    }
                    last_read = Instant::now();
                    let data = std::mem::take(&mut buf);
                    let e = self.client_bytes(&mut scanner, &data);
                    buf = data;
                    buf.clear();
                    if buf.capacity() > 256 * 1024 {
                        buf = Vec::with_capacity(16 * 1024);
                    }
                    if let Some(e) = e {
                        return e;
                    }
                }
                ev = up_rx.recv(), if read_nodes => match ev {
                    Some(ev) => {
                        self.on_up(ev);
                        // Take what else is there now, within the same bounds: one
                        // turn of this loop (its timers) per batch, not per message.
                        for _ in 0..DRAIN {
                            if self.end.is_some()
                                || !self.nodes_readable()
                                || !self.held.is_empty()
                            {
                                break;
                            }
                            match up_rx.try_recv() {
                                Ok(ev) => self.on_up(ev),
                                Err(_) => break,
                            }
                        }
                    }
                    None => return End::NoNode,
                },
            }
        }
    }

    /// Feed client bytes to the scanner and handle each whole packet.
    fn client_bytes(&mut self, scanner: &mut Scanner, data: &[u8]) -> Option<End> {
        let mut packets = Vec::new();
        let mut bad = None;
        scanner.feed(data, |ev| match ev {
            Scanned::Whole(p) => packets.push(p.to_vec()),
            Scanned::Oversized { len, .. } => bad = Some((End::TooLarge, len)),
            Scanned::Lost => bad = Some((End::Malformed, 0)),
            Scanned::Pass(_) => {}
        });
        for p in packets {
            self.on_client(p);
            if let Some(e) = self.end {
                return Some(e);
            }
        }
        if let Some((e, len)) = bad {
            tracing::debug!(
                reason = e.as_str(),
                len,
                "fan-out client sent a packet over max_packet_size or a malformed length: closed"
            );
            return Some(e);
        }
        None
    }

    /// Connect to every usable node and answer the client's CONNECT.
    async fn connect_all(&mut self, up_rx: &mut mpsc::Receiver<Up>) -> Result<(), End> {
        self.reconcile();
        let cfg = self.start.cfg.clone();
        let wait = cfg.connect_timeout
            + if cfg.connack_timeout.is_zero() {
                Duration::from_secs(10)
            } else {
                cfg.connack_timeout
            };
        let deadline = Instant::now() + wait;
        let mut accepted: Option<Vec<u8>> = None;
        let mut present = true;
        let mut refusal: Option<Vec<u8>> = None;
        // Packets of nodes that accepted early wait for the client's CONNACK.
        let mut early = Vec::new();
        while self.slots.iter().any(|s| s.state == LinkState::Connecting) {
            let ev = tokio::select! {
                ev = up_rx.recv() => ev,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            let Some(ev) = ev else { break };
            match ev {
                Up::Connack { idx, gen, bytes } if self.slots[idx].gen == gen => {
                    match self.connack(idx, &bytes) {
                        Some(sp) => {
                            present &= sp;
                            if accepted.is_none() {
                                accepted = Some(bytes);
                            }
                        }
                        None => {
                            if refusal.is_none() {
                                refusal = Some(bytes);
                            }
                        }
                    }
                }
                ev @ Up::Packets { .. } => early.push(ev),
                ev => self.on_up(ev),
            }
        }
        // Nodes still connecting answer later, like nodes that come up.
        let Some(mut ack) = accepted else {
            for i in 0..self.slots.len() {
                if let Some(l) = self.slots[i].link.take() {
                    l.stop.cancel();
                }
            }
            return match refusal {
                Some(bytes) => {
                    tracing::debug!(
                        "fan-out: every node refused the CONNECT; the first refusal is passed on"
                    );
                    self.to_client(bytes);
                    Err(End::Refused)
                }
                None => {
                    let v5 = self.start.v5;
                    let why = "no node of the cluster accepted the fan-out session";
                    tracing::debug!(reason = "no_node", "refused: {why}");
                    let lname = self.start.lst.config.name.clone();
                    self.start
                        .data
                        .metrics
                        .reject(&lname, crate::metrics::Reject::NoNode);
                    if cfg.no_node_reply.connack_for(v5) {
                        self.to_client(crate::mqtt::unavailable_reply(
                            v5,
                            &format!("mqgate: {why}"),
                        ));
                    }
                    Err(End::NoNode)
                }
            };
        };
        if let Some(at) = super::packet::ack_id(&ack).map(|(_, at)| at) {
            if let Some(f) = ack.get_mut(at) {
                *f = (*f & !1) | u8::from(present);
            }
        }
        self.to_client(ack);
        for ev in early {
            self.on_up(ev);
        }
        Ok(())
    }

    /// A node's CONNACK: `Some(session_present)` if it accepted (its connection is
    /// then up and the stored subscriptions are replayed), else `None` (retried later).
    pub fn connack(&mut self, idx: usize, bytes: &[u8]) -> Option<bool> {
        let info = match crate::mqtt::observe_connack(bytes) {
            Ok(crate::mqtt::Parse::Complete(i)) => Some(i),
            _ => None,
        };
        let node = self.slots[idx].node.name.clone();
        let code = info.map(|i| i.code).unwrap_or(0xFF);
        self.start
            .data
            .metrics
            .connack
            .with_label_values(&[&self.cluster, &node, crate::metrics::code_label(code)])
            .inc();
        match info {
            Some(i) if i.code == 0 => {
                let s = &mut self.slots[idx];
                s.state = LinkState::Up;
                s.backoff = RETRY_FIRST;
                s.upstreams.inc();
                tracing::debug!(node = %node, session_present = i.session_present, "fan-out: node accepted");
                self.replay(idx);
                Some(i.session_present)
            }
            _ => {
                tracing::debug!(node = %node, code, "fan-out: node refused the CONNECT; retried later");
                let pause = self.slots[idx].backoff;
                self.slots[idx].backoff = (pause * 2).min(RETRY_MAX);
                self.lost(idx, pause);
                None
            }
        }
    }

    /// Send the stored subscriptions to a node that just accepted, before anything
    /// else; their SUBACKs are consumed here.
    fn replay(&mut self, idx: usize) {
        let v5 = self.start.v5;
        let s = &mut self.slots[idx];
        let mut out = Vec::new();
        for st in &self.stored {
            let Ok(nid) = s.out.alloc(Out::Replay) else {
                break;
            };
            out.extend(crate::mqtt::subscribe::encode_subscribe(
                nid, v5, &st.props, &st.filter, st.options,
            ));
        }
        if !out.is_empty() {
            tracing::debug!(node = %s.node.name, filters = self.stored.len(), "fan-out: subscriptions replayed");
            if let Some(l) = &s.link {
                l.send(out);
            }
        }
    }

    /// Handle one event of a node connection.
    fn on_up(&mut self, ev: Up) {
        match ev {
            Up::Connack { idx, gen, bytes } => {
                if self.slots.get(idx).is_some_and(|s| s.gen == gen) {
                    let _ = self.connack(idx, &bytes);
                }
            }
            Up::Packets { idx, gen, bytes } => self.on_batch(Batch {
                idx,
                gen,
                bytes,
                at: 0,
            }),
            Up::Lost { idx, gen, why } => {
                if self.slots.get(idx).is_some_and(|s| s.gen == gen) {
                    tracing::debug!(node = %self.slots[idx].node.name, %why, "fan-out: node connection ended");
                    let pause = self.slots[idx].backoff;
                    self.lost(idx, pause);
                }
            }
        }
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(t) => {
            tokio::time::sleep_until(t.max(Instant::now() + Duration::from_millis(10))).await
        }
        None => {
            // Nothing to retry: look at the cluster again now and then anyway.
            tokio::time::sleep(Duration::from_secs(1)).await
        }
    }
}

/// Write what the session queues for the client, all of it at once; ends on a write
/// error or when the session has dropped its end (then the write side is shut down).
async fn client_writer<W: AsyncWrite + Unpin>(mut wr: W, out: Arc<Outbox>, drained: Arc<Notify>) {
    let mut mine: Vec<u8> = Vec::new();
    loop {
        out.take(&mut mine);
        if !mine.is_empty() {
            if wr.write_all(&mine).await.is_err() {
                return;
            }
            mine.clear();
            if mine.capacity() > 2 * QUEUE_MAX {
                mine = Vec::new();
            }
            drained.notify_one();
            continue;
        }
        if out.is_closed() {
            break;
        }
        out.ready().await;
    }
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}
