//! The fan-out session task: one client connection, one connection per up node.
//!
//! Set-up: a node connection ([`super::link`]) to every usable node (up, not in
//! `maint`), each sent the client's CONNECT unchanged; one CONNACK to the client
//! once every node answered or the deadline passed. Then one loop, whose sockets —
//! the client's and every node's — are polled in one future ([`super::io`]):
//! - client packets ([`Session::on_client`], in `handle.rs`) and node packets
//!   ([`Session::on_node`]), whole, in order per connection;
//! - backpressure: the client is read only while every node's write queue is under
//!   [`QUEUE_MAX`]; the nodes are read only while the client's write queue is under
//!   it and a client-side packet identifier is free (`max_inflight`);
//! - the cluster's node states: a node that is no longer usable loses its
//!   connection; a usable node without one is connected (again), then the session's
//!   subscriptions are replayed there before anything else is sent to it;
//! - PINGREQ answered here; the client's keep-alive (× 1.5) enforced here;
//! - the client id: held by one session at a time (`crate::live`, docs/fanout.md
//!   "One session per client id"): the session goes live once its client has the
//!   CONNACK and ends as `taken_over` when a newer one does (or a node says so with
//!   DISCONNECT 0x8E); while a newer one is being set up it does not reconnect the
//!   node connections that newer one's CONNECTs took over.

pub(super) use super::backoff::LinkState;
use super::backoff::{step, Backoff, Step, RETRY_FIRST};
use super::batch::Held;
use super::closing::{close_client, close_nodes, READ_BUF};
use super::ids::Ids;
use super::link::{self, LinkStart, NodeIo, Up};
use super::merge::{AckMerge, PubMerge};
use super::outbox::Outbox;
use crate::cluster::{AdminState, Health, Node};
use crate::config::{ClusterConfig, FanoutRule};
use crate::mqtt::scanner::{Scanned, Scanner};
use crate::proxy::ClientCtx;
use crate::runtime::{DataPath, ListenerRt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bytes queued for one connection (client or node) before the other side is no
/// longer read.
pub const QUEUE_MAX: usize = 1024 * 1024;
/// Subscriptions a session keeps for replay; more are forwarded but not kept.
pub const MAX_STORED: usize = 10_000;

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
    /// Closed at shutdown, when the listener goes, and when the client id is taken
    /// over (`live`).
    pub scope: crate::sessions::SessionScope,
    /// The session's place among the client id's connections (`crate::live`).
    pub live: crate::live::LiveHandle,
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
    /// A newer connection took the client id over (`crate::live`), or a node said
    /// so (DISCONNECT 0x8E on a node connection).
    TakenOver,
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
            End::TakenOver => "taken_over",
        }
    }
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
    /// The set-up task while `Connecting` (cancelled to drop it).
    pub connecting: Option<CancellationToken>,
    /// The connection, once the node accepted (`Up`).
    pub io: Option<Box<NodeIo>>,
    pub out: Ids<Out>,
    /// QoS 2 from the node whose PUBREC went back: node identifier → client's.
    pub rel: HashMap<u16, u16>,
    pub backoff: Backoff,
    /// When the connection was last accepted.
    pub up_since: Instant,
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
    /// Bytes queued for the client.
    pub client: Outbox,
    /// A write to the client failed: nothing more is written to it.
    pub client_failed: bool,
    /// A read or write of the client failed (`close=client_error` in the access log).
    pub client_error: bool,
    /// Bytes read from the client after the first read (the CONNECT's).
    pub from_client: u64,
    /// The CONNACK code sent to the client, if one was.
    pub connack_sent: Option<u8>,
    /// The nodes that accepted the session at some point, in that order.
    pub joined: Vec<String>,
    pub up_tx: mpsc::Sender<Up>,
    /// Node packets read and not handled yet.
    pub held: Held,
    /// The read buffer every socket is read into, in turn (`READ_BUF` bytes).
    pub rbuf: Vec<u8>,
    /// The node read first in the next pass (turns, for fairness).
    pub next_node: usize,
    /// Set when a handler decides the session ends.
    pub end: Option<End>,
    /// Every node connection was lost while a newer session with the client id was
    /// being set up here: waiting for it to go live (then taken over) instead of
    /// closing the client as `no_node`.
    pub yielding: bool,
}

impl Session {
    /// Queue bytes for the client.
    pub fn queue_client(&mut self, bytes: impl AsRef<[u8]>) {
        self.client.push(bytes.as_ref());
    }

    pub fn up_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state == LinkState::Up)
            .count()
    }

    pub(super) fn usable(n: &Node) -> bool {
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
            connecting: None,
            io: None,
            out: Ids::new(65_535),
            rel: HashMap::new(),
            backoff: Backoff::new(),
            up_since: Instant::now(),
        }
    }

    fn connect_slot(&mut self, idx: usize) {
        let cluster_tls = self.start.lst.cluster.tls();
        let s = &mut self.slots[idx];
        s.gen = s.gen.wrapping_add(1);
        s.state = LinkState::Connecting;
        s.io = None;
        s.connecting = Some(link::start(
            LinkStart {
                node: s.node.clone(),
                idx,
                gen: s.gen,
                cfg: self.start.cfg.clone(),
                tls: cluster_tls,
                ctx: self.start.ctx.clone(),
                connect: self.connect.clone(),
                max_packet: self.start.rule.max_packet_size,
                up: self.up_tx.clone(),
            },
            &self.start.data.tracker,
        ));
    }

    /// The pause before slot `idx` is connected again ([`Backoff::after_end`]).
    pub(super) fn retry_pause(&mut self, idx: usize) -> Duration {
        let s = &mut self.slots[idx];
        let up_for = (s.state == LinkState::Up).then(|| s.up_since.elapsed());
        s.backoff.after_end(up_for)
    }

    /// Follow the cluster: new nodes get a slot, unusable nodes lose their
    /// connection, usable idle nodes whose retry time came are connected — except
    /// while a newer session with the client id is being set up on this gateway
    /// (`crate::live`): its CONNECTs take the id over on the nodes, and connecting
    /// again would take it back.
    pub fn reconcile(&mut self) {
        let contended = self.start.live.contended();
        if self.yielding && !contended {
            tracing::debug!("fan-out: the newer session with the client id did not go live; no node connection left: closing the client");
            self.end = Some(End::NoNode);
            return;
        }
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
            match step(self.slots[idx].state, usable, contended, now) {
                Step::Drop => {
                    tracing::debug!(node = %self.slots[idx].node.name, "fan-out: node not usable; its connection is dropped");
                    self.lost(idx, RETRY_FIRST);
                }
                Step::Connect => self.connect_slot(idx),
                Step::RetryWhenUp => {
                    let s = &mut self.slots[idx];
                    s.state = LinkState::Idle { retry_at: now };
                    s.backoff.reset();
                }
                Step::Keep => {}
            }
        }
    }

    /// The node connection of slot `idx` ended (or is dropped): stop it, settle what
    /// waited for it, retry after `pause`.
    pub fn lost(&mut self, idx: usize, pause: Duration) {
        let was_up = self.slots[idx].state == LinkState::Up;
        let s = &mut self.slots[idx];
        if let Some(stop) = s.connecting.take() {
            stop.cancel();
        }
        s.io = None;
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
        if was_up && self.up_count() == 0 && self.end.is_none() && !self.yielding {
            if self.start.live.contended() {
                tracing::debug!("fan-out: no node connection left while a newer session with the client id is being set up: waiting for it");
                self.yielding = true;
            } else {
                tracing::debug!("fan-out: no node connection left; closing the client");
                self.end = Some(End::NoNode);
            }
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

    pub(super) fn queues_ok(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.io.as_ref().is_none_or(|io| io.out.queued() < QUEUE_MAX))
    }
}

/// How a session went: why it ended and what the access log reports.
pub struct Outcome {
    pub end: End,
    pub client_error: bool,
    /// Bytes read from the client after its first read.
    pub from_client: u64,
    pub to_client: u64,
    pub connack: Option<u8>,
    /// The nodes it was connected to (at some point), in that order.
    pub nodes: Vec<String>,
}

/// Run a fan-out session to its end.
pub async fn run<S>(start: Start, mut client: S) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (up_tx, mut up_rx) = mpsc::channel(16);
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
        client: Outbox::default(),
        client_failed: false,
        client_error: false,
        from_client: 0,
        connack_sent: None,
        joined: Vec::new(),
        up_tx,
        held: Held::default(),
        rbuf: vec![0; READ_BUF],
        next_node: 0,
        end: None,
        yielding: false,
    };
    let end = match s.drive(&mut client, &mut up_rx).await {
        // Its last node connection went as a newer session took the id over.
        End::NoNode if s.start.live.taken_over() => End::TakenOver,
        end => end,
    };
    // Node connections still being set up are stopped (they must not log the client
    // in after it left); the others get what is queued for them, then close.
    let mut ios = Vec::new();
    for slot in &mut s.slots {
        if let Some(stop) = slot.connecting.take() {
            stop.cancel();
        }
        if slot.state == LinkState::Up {
            slot.upstreams.dec();
        }
        ios.extend(slot.io.take().map(|io| *io));
    }
    if end == End::TakenOver {
        s.taken_over(&mut ios);
    }
    close_nodes(ios, &s.start.data.tracker);
    let mut to_client = s.client.written;
    if !s.client_failed {
        to_client += close_client(&mut client, s.client.take_rest()).await;
    }
    Outcome {
        end,
        client_error: s.client_error,
        from_client: s.from_client,
        to_client,
        connack: s.connack_sent,
        nodes: std::mem::take(&mut s.joined),
    }
}

impl Session {
    /// Set-up, then the loop; see the module comment.
    async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        client: &mut S,
        up_rx: &mut mpsc::Receiver<Up>,
    ) -> End {
        if let Err(end) = self.hold(client).await {
            return end;
        }
        // From here the nodes take the id over from an older session with it: that
        // one waits for this one instead of taking it back (`crate::live`).
        self.start.live.claim();
        if let Err(end) = self.connect_all(up_rx).await {
            self.start.live.unclaim();
            return end;
        }
        // The client has its CONNACK: the session is the id's live one (an older
        // one with the id is closed; with `single_live`, announced to the peers).
        self.start.live.activate();
        let mut scanner = super::link::whole_packets(self.start.rule.max_packet_size);
        let rest = std::mem::take(&mut self.start.rest);
        if !rest.is_empty() {
            if let Some(e) = self.client_bytes(&mut scanner, &rest) {
                return e;
            }
        }
        let ka = Duration::from_millis(u64::from(self.start.keep_alive) * 1500);
        let mut last_read = Instant::now();
        // PINGREQ to every node each keep-alive period (their PINGRESPs are dropped).
        let ping_every = Duration::from_secs(u64::from(self.start.keep_alive));
        let mut ping = (!ping_every.is_zero()).then(|| {
            let mut i = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let closed = self.start.scope.clone();
        let cluster = self.start.lst.cluster.clone();
        // The timers and the change notification live across the loop's turns and are
        // reset only when their deadline moves: a turn of client or node traffic arms
        // no timer, and a busy session still retries and looks at the cluster in time.
        let changed = cluster.changed();
        tokio::pin!(changed);
        let silent = tokio::time::sleep_until(last_read + ka);
        tokio::pin!(silent);
        // The earliest retry the timer is armed for (`None`: the one-second look).
        let mut armed = self.next_retry();
        let retry = tokio::time::sleep_until(retry_deadline(armed));
        tokio::pin!(retry);
        loop {
            if let Some(e) = self.end {
                return e;
            }
            // A retry sooner than the armed one (a node connection just ended).
            let want = self.next_retry();
            if want.is_some_and(|t| armed.is_none_or(|a| t < a)) {
                armed = want;
                retry.as_mut().reset(retry_deadline(armed));
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
                biased;
                _ = closed.closed() => {
                    if self.start.live.taken_over() {
                        tracing::debug!("fan-out: the client id went live on a newer connection; closed");
                        return End::TakenOver;
                    }
                    return End::Shutdown;
                }
                _ = &mut changed => {
                    // Re-armed before the cluster is looked at: no change is missed.
                    changed.set(cluster.changed());
                    self.reconcile();
                }
                _ = &mut retry => {
                    self.reconcile();
                    armed = self.next_retry();
                    retry.as_mut().reset(retry_deadline(armed));
                }
                _ = &mut silent, if !ka.is_zero() => {
                    if last_read + ka > Instant::now() {
                        silent.as_mut().reset(last_read + ka);
                    } else {
                        tracing::debug!("fan-out client silent past 1.5 × its keep-alive: closed");
                        return End::KeepAlive;
                    }
                }
                _ = tick => self.ping_nodes(),
                ev = up_rx.recv() => match ev {
                    Some(ev) => self.on_up(ev),
                    // Not reached: the session holds a sender.
                    None => return End::NoNode,
                },
                turn = std::future::poll_fn(|cx| self.poll_io(cx, client, &mut scanner)) => {
                    if turn.client_read {
                        last_read = Instant::now();
                    }
                }
            }
        }
    }

    /// The session was taken over: its node connections still up get a DISCONNECT
    /// (the id lives on in the newer session: no will is published), an MQTT 5
    /// client DISCONNECT 0x8E "session taken over"; then they close.
    fn taken_over(&mut self, ios: &mut [NodeIo]) {
        for io in ios {
            io.out.push(&super::packet::DISCONNECT_BYTES);
        }
        if self.start.v5 && !self.client_failed {
            use crate::relay::polite::{disconnect_v5, SESSION_TAKEN_OVER};
            self.queue_client(disconnect_v5(SESSION_TAKEN_OVER));
            self.start
                .data
                .metrics
                .shaping
                .disconnects_sent
                .with_label_values(&[
                    &self.cluster,
                    crate::cluster::pacing::reason_label(SESSION_TAKEN_OVER),
                ])
                .inc();
        }
    }

    /// Queue a PINGREQ for every connected node.
    fn ping_nodes(&mut self) {
        for s in &mut self.slots {
            if let Some(io) = s.io.as_mut() {
                io.out.push(&super::packet::PINGREQ_BYTES);
            }
        }
    }

    /// Feed client bytes to the scanner and handle each whole packet.
    pub(super) fn client_bytes(&mut self, scanner: &mut Scanner, data: &[u8]) -> Option<End> {
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

    /// Is `gen` still the generation of slot `idx` (an event of its current
    /// connection, not of one dropped since)?
    pub(super) fn current(&self, idx: usize, gen: u32) -> bool {
        self.slots.get(idx).is_some_and(|s| s.gen == gen)
    }

    /// Handle one event of a node connection.
    pub(super) fn on_up(&mut self, ev: Up) {
        match ev {
            Up::Connack {
                idx,
                gen,
                bytes,
                io,
            } => {
                if self.current(idx, gen) {
                    let _ = self.connack(idx, &bytes, io);
                }
            }
            Up::Lost { idx, gen, why } => {
                if self.current(idx, gen) && self.slots[idx].state == LinkState::Connecting {
                    tracing::debug!(node = %self.slots[idx].node.name, %why, "fan-out: node connection ended");
                    let pause = self.retry_pause(idx);
                    self.lost(idx, pause);
                }
            }
        }
    }
}

/// When to look at the node connections again: at the earliest retry `at` (but not
/// within 10 ms of now: a retry that is due while a newer session holds the client id
/// waits), or in a second when nothing is to be retried (the cluster's changes are
/// notified; this is the safety net).
fn retry_deadline(at: Option<Instant>) -> Instant {
    let now = Instant::now();
    match at {
        Some(t) => t.max(now + Duration::from_millis(10)),
        None => now + Duration::from_secs(1),
    }
}
