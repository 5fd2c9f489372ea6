//! The packet-aware relay: for persistent clients of a dynsec cluster with
//! `[sessions] restore_subscriptions`, chosen in `crate::session` after routing.
//! Every other client keeps the byte relay ([`super::task`]).
//!
//! Bytes are still forwarded unchanged, as they arrive; a [`Scanner`] on each
//! direction follows packet boundaries and hands over the few packets this relay
//! learns from. Lifecycle of one connection:
//!
//! 1. **CONNACK.** Only the CONNECT has been forwarded; what the client sent after it
//!    is held (up to `max_connect_size`; beyond that the client is not read until
//!    the replay ends). The broker's CONNACK goes to the client unchanged.
//! 2. **Replay.** If the broker accepted with session-present 0 and the cluster stores
//!    subscriptions for this client id, the relay sends one SUBSCRIBE per stored
//!    subscription to the broker and consumes the SUBACKs (what else the broker sends
//!    meanwhile, e.g. retained messages, goes on to the client). The replay's packet
//!    identifiers cannot collide with the client's: no client packet has reached the
//!    broker yet, and none will before the last SUBACK is in. No SUBACK within
//!    `replay_timeout`: the replay failed, both connections close (the client
//!    reconnects and the replay runs again).
//! 3. **Relay.** The held bytes go to the broker, then both directions run. A
//!    SUBSCRIBE/UNSUBSCRIBE from the client is remembered by packet identifier; the
//!    broker's SUBACK (granted codes) stores the subscriptions, its UNSUBACK removes
//!    them. A packet that does not parse is forwarded all the same (the broker decides
//!    what it means), counted and logged at debug level.
//!
//! Memory: two 16 KiB buffers per connection, the scanners' collected packets (each
//! at most the per-client byte bound plus 512 bytes), and at most [`MAX_PENDING`]
//! unanswered (UN)SUBSCRIBEs.

use super::task::BrokerStream;
use super::task::{connack_timeout_reply, Keep};
use super::ConnackSink;
use crate::access::{Close, ConnackSeen};
use crate::config::ClusterConfig;
use crate::mqtt::scanner::{Scanned, Scanner};
use crate::mqtt::subscribe::{self as sp, CONNACK, SUBACK, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE};
use crate::mqtt::{observe_connack, ConnackInfo, Parse};
use crate::sessions::SessionScope;
use crate::sticky::subs::Sub;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const CHUNK: usize = 16 * 1024;

/// (UN)SUBSCRIBEs remembered while their acknowledgement is awaited; beyond this the
/// oldest is forgotten (its acknowledgement then teaches nothing).
pub const MAX_PENDING: usize = 64;

/// The first packet identifier of a replay; the next ones count down.
const REPLAY_FIRST_ID: u16 = u16::MAX;

/// One packet-aware connection, from the forwarded CONNECT to the close.
pub struct PacketRelay<S, B = TcpStream> {
    pub client: S,
    pub broker: B,
    /// What the client sent after its CONNECT, not forwarded yet.
    pub held: Vec<u8>,
    /// How much the client may send before the replay ends (`max_connect_size`).
    pub hold_cap: usize,
    pub client_id: String,
    /// The CONNECT asked for a clean start: stored subscriptions are dropped once the
    /// broker accepts.
    pub clean_start: bool,
    /// The client keeps a session (else it is here only to have its stored
    /// subscriptions dropped: nothing is replayed or learnt).
    pub persistent: bool,
    pub started: Instant,
    pub scope: SessionScope,
    pub cfg: Arc<ClusterConfig>,
    pub keep: Keep,
}

/// Unacknowledged (UN)SUBSCRIBEs of the client, by packet identifier.
#[derive(Default)]
struct Pending {
    subs: Vec<(u16, Vec<Sub>)>,
    unsubs: Vec<(u16, Vec<Box<str>>)>,
}

fn push_bounded<T>(v: &mut Vec<(u16, T)>, id: u16, x: T) {
    v.retain(|(i, _)| *i != id);
    if v.len() >= MAX_PENDING {
        v.remove(0);
    }
    v.push((id, x));
}

fn take(v: &[(u16, impl Sized)], id: u16) -> Option<usize> {
    v.iter().position(|(i, _)| *i == id)
}

impl<S: AsyncRead + AsyncWrite + Unpin, B: BrokerStream> PacketRelay<S, B> {
    pub async fn run(mut self) {
        let cap = (self.cfg.sessions.max_bytes_per_client + 512).max(4096);
        match self.connack_and_replay(cap).await {
            Ok(down) => self.relay(cap, down).await,
            Err(close) => self.keep.finish_access(close, 0, 0),
        }
    }

    /// Steps 1 and 2; `Err` when the connection is over (with why, for the access log,
    /// unless recorded already).
    ///
    /// Closed by the gateway meanwhile: before the CONNACK the close is plain; after it
    /// the client has been sent whole packets only, so an MQTT 5 client is told why at
    /// once, as on the other relays (`super::polite`).
    async fn connack_and_replay(&mut self, cap: usize) -> Result<Scanner, Option<Close>> {
        let mut scope = self.scope.clone();
        let mut down = Scanner::new(&[CONNACK, SUBACK], cap);
        let mut buf = vec![0u8; CHUNK];
        let mut cbuf = vec![0u8; CHUNK];
        let connack_timeout = self.cfg.connack_timeout;
        let mut deadline = (!connack_timeout.is_zero()).then(|| self.started + connack_timeout);
        let mut connack: Option<Option<ConnackInfo>> = None;
        // Replay identifiers still awaiting their SUBACK, and whether one was refused.
        let mut replay: Vec<u16> = Vec::new();
        let mut refused = 0usize;
        let v5 = self.keep.v5;
        loop {
            if connack.is_some() && replay.is_empty() {
                return Ok(down);
            }
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let room = self.held.len() < self.hold_cap;
            tokio::select! {
                _ = sleep => {
                    if connack.is_none() {
                        let reply = connack_timeout_reply(&self.keep);
                        let _ = self.client.write_all(&reply).await;
                        let _ = self.client.shutdown().await;
                        if let Some(e) = self.keep.access.as_mut() {
                            e.connack(ConnackSeen::Timeout);
                        }
                        return Err(Some(Close::ConnackTimeout));
                    }
                    self.replay_result(false, replay.len(), "no SUBACK in time");
                    return Err(Some(Close::BrokerError));
                }
                r = self.broker.read(&mut buf) => {
                    let n = match r {
                        Ok(0) | Err(_) => {
                            tracing::debug!("broker closed before the session was restored");
                            let _ = self.client.shutdown().await;
                            return Err(Some(Close::Broker));
                        }
                        Ok(n) => n,
                    };
                    self.keep.node.node().metrics.to_client.inc_by(n as u64);
                    let mut out = Vec::with_capacity(n);
                    let mut to_broker = Vec::new();
                    let mut finished = false;
                    down.feed(&buf[..n], |ev| match ev {
                        Scanned::Pass(b) => {
                            if connack.is_none() {
                                self.observe(None);
                                connack = Some(None);
                            }
                            out.extend_from_slice(b);
                        }
                        Scanned::Whole(p) if connack.is_none() => {
                            let info = match observe_connack(p) {
                                Ok(Parse::Complete(i)) => Some(i),
                                _ => None,
                            };
                            // The node the client left, read before `observe` takes the
                            // sticky write; queued only after the entry points to the
                            // new node, or the cleaner would take it for a client that
                            // came back there and drop it.
                            let left = info
                                .is_some_and(|i| i.code == 0)
                                .then(|| self.left_behind())
                                .flatten();
                            self.observe(info);
                            if let Some(old) = left {
                                self.keep.lst.cluster.orphan(old, &self.client_id);
                            }
                            connack = Some(info);
                            out.extend_from_slice(p);
                            if let Some(i) = info.filter(|i| i.code == 0) {
                                if self.clean_start || !self.persistent {
                                    self.keep.lst.cluster.subs.forget(&self.client_id);
                                }
                                if !i.session_present {
                                    to_broker = self.replay_packets(v5, &mut replay);
                                }
                            }
                        }
                        Scanned::Whole(p) if p[0] >> 4 == SUBACK && !replay.is_empty() => {
                            match sp::parse_suback(p, v5) {
                                Ok(a) if replay.contains(&a.id) => {
                                    replay.retain(|i| *i != a.id);
                                    refused += a.codes.iter().filter(|c| !sp::granted(**c)).count();
                                    finished = replay.is_empty();
                                }
                                _ => out.extend_from_slice(p),
                            }
                        }
                        Scanned::Whole(p) => out.extend_from_slice(p),
                        Scanned::Oversized { .. } | Scanned::Lost => {}
                    });
                    if connack.is_some() && replay.is_empty() {
                        // Leaving the scan of whole packets: what the scanner holds of
                        // the next one is still owed to the client.
                        out.extend_from_slice(down.held());
                    }
                    if self.client.write_all(&out).await.is_err() {
                        return Err(Some(Close::ClientError));
                    }
                    if let Some(e) = self.keep.access.as_mut() {
                        e.relayed_to_client(out.len() as u64);
                    }
                    if !to_broker.is_empty() {
                        if self.broker.write_all(&to_broker).await.is_err() {
                            return Err(Some(Close::BrokerError));
                        }
                        self.keep.node.node().metrics.to_broker.inc_by(to_broker.len() as u64);
                        deadline = Some(Instant::now() + self.cfg.sessions.replay_timeout);
                    }
                    if finished {
                        self.replay_result(refused == 0, refused, "refused by the broker");
                    }
                }
                r = self.client.read(&mut cbuf), if room => {
                    match r {
                        Ok(0) | Err(_) => {
                            // The client left: pass on what it sent and its close.
                            let _ = self.broker.write_all(&self.held).await;
                            let _ = self.broker.shutdown().await;
                            return Err(Some(Close::Client));
                        }
                        Ok(n) => self.held.extend_from_slice(&cbuf[..n]),
                    }
                }
                _ = scope.closed() => {
                    if let Some(next) = self.keep.survive() {
                        self.scope = next.clone();
                        scope = next;
                        continue;
                    }
                    tracing::debug!("session closed by the gateway (node down, maintenance, evacuation, rebalance, takeover, removal or shutdown)");
                    self.keep.record_gateway_close();
                    // After the CONNACK the client has been sent only what the scanner
                    // passed: unless it is in the middle of passing a packet on, the
                    // client's stream is at a packet boundary.
                    if connack.is_some() && !down.passing() {
                        if let Some(reason) = super::polite::close_reason(&self.keep) {
                            super::polite::say_disconnect(&mut self.client, &self.keep, reason).await;
                        }
                    }
                    return Err(None);
                }
            }
        }
    }

    /// `clean_orphans`: the client was accepted on another node than the one its
    /// sticky entry named; that node (whose session for it is to be removed, paced and
    /// retried).
    fn left_behind(&self) -> Option<std::sync::Arc<str>> {
        if !self.cfg.sessions.clean_orphans || !self.persistent {
            return None;
        }
        let node = self.keep.node.node();
        self.keep
            .sticky
            .as_ref()
            .and_then(|w| w.current.clone())
            .filter(|old| **old != *node.name)
    }

    fn observe(&mut self, info: Option<ConnackInfo>) {
        let mut sink = self.keep.observed();
        sink.connack(info, self.started.elapsed());
    }

    /// The SUBSCRIBEs restoring this client's stored subscriptions (empty if none).
    fn replay_packets(&self, v5: bool, ids: &mut Vec<u16>) -> Vec<u8> {
        if !self.cfg.sessions.restore_subscriptions || !self.persistent {
            return Vec::new();
        }
        let subs = self.keep.lst.cluster.subs.get(&self.client_id);
        let mut out = Vec::new();
        let mut id = REPLAY_FIRST_ID;
        for s in &subs {
            let options = if v5 { s.options } else { s.options & 0x03 };
            let props: &[u8] = if v5 { &s.properties } else { &[] };
            out.extend_from_slice(&sp::encode_subscribe(id, v5, props, &s.topic, options));
            ids.push(id);
            id = id.saturating_sub(1).max(1);
        }
        if !subs.is_empty() {
            tracing::debug!(
                subscriptions = subs.len(),
                "node has no session for this client: replaying its subscriptions"
            );
        }
        out
    }

    fn replay_result(&self, ok: bool, n: usize, why: &str) {
        let cluster = &self.keep.lst.cluster;
        let result = if ok { "done" } else { "failed" };
        if !ok {
            tracing::debug!(subscriptions = n, "subscription replay failed: {why}");
        } else {
            tracing::debug!("subscriptions restored");
        }
        self.keep
            .metrics
            .session_replays
            .with_label_values(&[&cluster.name, result])
            .inc();
    }

    /// Step 3: both directions ([`super::polite::duplex`], which also closes the
    /// session as the other relays do), learning from (UN)SUBSCRIBE and their
    /// acknowledgements.
    async fn relay(self, cap: usize, mut down: Scanner) {
        let PacketRelay {
            client,
            mut broker,
            held,
            client_id,
            scope,
            mut keep,
            cfg,
            persistent,
            ..
        } = self;
        let cluster = keep.lst.cluster.clone();
        let metrics = keep.metrics.clone();
        let learn = Learner {
            on: cfg.sessions.restore_subscriptions && persistent,
            pending: Mutex::new(Pending::default()),
            client_id: &client_id,
            v5: keep.v5,
            cluster: &cluster,
            metrics: &metrics,
        };
        down.set_types(&[SUBACK, UNSUBACK]);
        let mut up = Scanner::new(&[SUBSCRIBE, UNSUBSCRIBE], cap);
        super::polite::duplex(
            client,
            &mut broker,
            held,
            &scope,
            &mut keep,
            None,
            down,
            |data| {
                up.feed(data, |ev| {
                    if let Scanned::Whole(p) = ev {
                        learn.client_packet(p);
                    }
                })
            },
            |data, down, _| {
                down.feed(data, |ev| {
                    if let Scanned::Whole(p) = ev {
                        learn.broker_packet(p);
                    }
                });
                true
            },
        )
        .await;
        drop(keep);
    }
}

/// What the relay learns from, shared by its two directions (one task: the lock is
/// never contended).
struct Learner<'a> {
    /// `restore_subscriptions` (a `clean_orphans`-only cluster learns nothing).
    on: bool,
    pending: Mutex<Pending>,
    client_id: &'a str,
    v5: bool,
    cluster: &'a crate::cluster::Cluster,
    metrics: &'a crate::metrics::Metrics,
}

impl Learner<'_> {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn malformed(&self, packet: &str, e: sp::PacketError) {
        tracing::debug!(packet, error = %e, "passed on without learning from it");
        self.metrics
            .session_packets_malformed
            .with_label_values(&[&self.cluster.name, packet])
            .inc();
    }

    fn client_packet(&self, p: &[u8]) {
        if !self.on {
            return;
        }
        match p[0] >> 4 {
            SUBSCRIBE => match sp::parse_subscribe(p, self.v5) {
                Ok(s) => {
                    let subs = s
                        .filters()
                        .map(|f| Sub {
                            topic: f.topic.into(),
                            options: f.options,
                            properties: s.properties.into(),
                        })
                        .collect();
                    push_bounded(&mut self.pending().subs, s.id, subs);
                }
                Err(e) => self.malformed("subscribe", e),
            },
            UNSUBSCRIBE => match sp::parse_unsubscribe(p, self.v5) {
                Ok(u) => {
                    let topics = u.filters().map(Box::from).collect();
                    push_bounded(&mut self.pending().unsubs, u.id, topics);
                }
                Err(e) => self.malformed("unsubscribe", e),
            },
            _ => {}
        }
    }

    fn broker_packet(&self, p: &[u8]) {
        if !self.on {
            return;
        }
        match p[0] >> 4 {
            SUBACK => match sp::parse_suback(p, self.v5) {
                Ok(a) => {
                    let subs = {
                        let mut pd = self.pending();
                        take(&pd.subs, a.id).map(|i| pd.subs.remove(i).1)
                    };
                    for (s, code) in subs.into_iter().flatten().zip(a.codes) {
                        if !sp::granted(*code) {
                            continue;
                        }
                        if let Err(why) = self.cluster.subs.add(self.client_id, s) {
                            tracing::debug!(
                                bound = why.as_str(),
                                "subscription not stored: bound reached"
                            );
                            self.metrics
                                .session_subscriptions_dropped
                                .with_label_values(&[&self.cluster.name, why.as_str()])
                                .inc();
                        }
                    }
                    self.gauge();
                }
                Err(e) => self.malformed("suback", e),
            },
            UNSUBACK => match sp::parse_unsuback(p, self.v5) {
                Ok(a) => {
                    let topics = {
                        let mut pd = self.pending();
                        take(&pd.unsubs, a.id).map(|i| pd.unsubs.remove(i).1)
                    };
                    for (i, t) in topics.into_iter().flatten().enumerate() {
                        // MQTT 3: no codes, every filter is gone. v5: success or
                        // "no subscription existed".
                        let gone = a.codes.get(i).is_none_or(|c| *c == 0x00 || *c == 0x11);
                        if gone {
                            self.cluster.subs.remove(self.client_id, &t);
                        }
                    }
                    self.gauge();
                }
                Err(e) => self.malformed("unsuback", e),
            },
            _ => {}
        }
    }

    fn gauge(&self) {
        self.metrics
            .session_subscriptions
            .with_label_values(&[&self.cluster.name])
            .set(self.cluster.subs.total() as i64);
    }
}
