//! A broker node's live state: health, admin state, resolved address, connection
//! counts and the scope that closes its sessions.

use crate::config::NodeAddress;
use crate::metrics::{Metrics, NodeMetrics};
use crate::sessions::{CloseCause, SessionScope};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Health as seen by checks. Nodes start `Unknown` until their first probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Up,
    Down,
}

/// Operator-set state (SPEC section 4, admin states). Resets to `Ready` on restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    Ready,
    Drain,
    Maint,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ready" => Some(AdminState::Ready),
            "drain" => Some(AdminState::Drain),
            "maint" => Some(AdminState::Maint),
            _ => None,
        }
    }
    pub const ALL: [AdminState; 3] = [AdminState::Ready, AdminState::Drain, AdminState::Maint];
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// One broker node's live state.
pub struct Node {
    pub name: String,
    pub cluster: String,
    pub(super) address: ArcSwap<NodeAddress>,
    pub(super) resolved: ArcSwap<Vec<SocketAddr>>,
    pub(super) health: AtomicU8,
    pub(super) admin: AtomicU8,
    pub(super) active: AtomicUsize,
    /// Connections relayed to this node since it was configured (all listeners).
    pub(super) relayed: AtomicU64,
    /// Broker answers to relayed CONNECTs that were not "accepted" (a refusing code,
    /// an unreadable first packet, or none within `connack_timeout`).
    pub(super) connack_failures: AtomicU64,
    /// One token per listener relaying to this node, each a child of that listener's
    /// `closed` token: a relayed session waits on this single token for node down,
    /// maintenance, listener removal and shutdown alike.
    pub(super) sessions: Mutex<HashMap<String, SessionScope>>,
    /// Why its sessions were last closed (`CloseCause`), for the access log.
    pub(super) close_cause: AtomicU8,
    pub(super) removed: AtomicBool,
    /// Forwarded CONNECTs in a row that got no CONNACK within `connack_timeout`.
    pub(super) connack_misses: AtomicU32,
    /// Wakes the node's health checks early (it was marked down from outside them).
    pub recheck: Notify,
    pub metrics: NodeMetrics,
    /// Stops this node's background tasks (health checks) when it is removed.
    pub tasks: CancellationToken,
    /// `node_connect_rate` admissions (`crate::shaping`).
    pub admission: crate::rate::ConnectBucket,
    /// Lanes of sessions for paced closes (`crate::pacing`).
    pub pacing: crate::cluster::pacing::Pacing,
    /// Live sessions per hash slot (`balance = "hash"`, `crate::cluster::slots`).
    pub slots: crate::cluster::slots::SlotCounts,
}

impl Node {
    pub(super) fn new(cluster: &str, name: &str, address: NodeAddress, metrics: &Metrics) -> Self {
        let resolved = address.literal().into_iter().collect::<Vec<_>>();
        Node {
            name: name.to_string(),
            cluster: cluster.to_string(),
            address: ArcSwap::from_pointee(address),
            resolved: ArcSwap::from_pointee(resolved),
            health: AtomicU8::new(Health::Unknown as u8),
            admin: AtomicU8::new(AdminState::Ready as u8),
            active: AtomicUsize::new(0),
            relayed: AtomicU64::new(0),
            connack_failures: AtomicU64::new(0),
            sessions: Mutex::new(HashMap::new()),
            close_cause: AtomicU8::new(0),
            removed: AtomicBool::new(false),
            connack_misses: AtomicU32::new(0),
            recheck: Notify::new(),
            metrics: metrics.node(cluster, name),
            tasks: CancellationToken::new(),
            admission: Default::default(),
            pacing: Default::default(),
            slots: Default::default(),
        }
    }

    pub fn address(&self) -> Arc<NodeAddress> {
        self.address.load_full()
    }

    pub fn set_address(&self, a: NodeAddress) {
        let lit: Vec<SocketAddr> = a.literal().into_iter().collect();
        if !lit.is_empty() {
            self.resolved.store(Arc::new(lit));
        }
        self.address.store(Arc::new(a));
    }

    /// Addresses to connect to (the literal, or the last DNS answer).
    pub fn resolved(&self) -> Arc<Vec<SocketAddr>> {
        self.resolved.load_full()
    }

    pub fn set_resolved(&self, addrs: Vec<SocketAddr>) {
        self.resolved.store(Arc::new(addrs));
    }

    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Acquire) {
            x if x == Health::Up as u8 => Health::Up,
            x if x == Health::Down as u8 => Health::Down,
            _ => Health::Unknown,
        }
    }

    pub fn admin_state(&self) -> AdminState {
        match self.admin.load(Ordering::Acquire) {
            x if x == AdminState::Drain as u8 => AdminState::Drain,
            x if x == AdminState::Maint as u8 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections relayed to this node (for the status page and API).
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }

    /// Relayed CONNECTs the broker did not accept (for the status page and API).
    pub fn connack_failures(&self) -> u64 {
        self.connack_failures.load(Ordering::Relaxed)
    }

    /// Count a broker answer that was not "accepted".
    pub fn count_connack_failure(&self) {
        self.connack_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Usable for a client at all (not down, not removed).
    pub(super) fn alive(&self) -> bool {
        !self.is_removed() && self.health() != Health::Down
    }

    /// A handle that is cancelled when this node's sessions through `listener` must
    /// close: when the node's sessions are closed, or when `listener_closed` (the
    /// listener's `closed` token, of which it is a child) is.
    pub fn session_token(&self, listener: &str, listener_closed: &SessionScope) -> SessionScope {
        let mut g = crate::sync::lock(&self.sessions);
        if let Some(t) = g.get(listener) {
            if !t.is_closed() {
                return t.clone();
            }
        }
        let t = listener_closed.child();
        g.insert(listener.to_string(), t.clone());
        t
    }

    /// Why this node's sessions were last closed.
    pub fn close_cause(&self) -> Option<CloseCause> {
        CloseCause::from_u8(self.close_cause.load(Ordering::Acquire))
    }

    /// Record why this node's sessions are about to be closed, before a close that
    /// takes them lane by lane (paced, or a rebalance's part of them): each session
    /// reads the cause when its lane closes.
    pub fn set_close_cause(&self, cause: CloseCause) {
        self.close_cause.store(cause as u8, Ordering::Release);
    }

    /// Close every session currently relayed through this node.
    pub fn close_sessions(&self, cause: CloseCause) {
        let old = {
            let mut g = crate::sync::lock(&self.sessions);
            // The first cause wins: a leader marked down is then no longer leader,
            // and its sessions were closed for the first reason.
            if !g.is_empty() {
                self.close_cause.store(cause as u8, Ordering::Release);
            }
            std::mem::take(&mut *g)
        };
        for t in old.values() {
            t.close();
        }
    }

    /// Count a connection for `least-conn`, `/status` and the active gauge (and under
    /// its hash `slot`, if placed by hash); undone on drop.
    pub fn connection_guard(self: &Arc<Self>, slot: Option<u16>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.relayed.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = slot {
            self.slots.add(s);
        }
        ActiveGuard {
            node: self.clone(),
            slot,
        }
    }
}

pub struct ActiveGuard {
    node: Arc<Node>,
    /// The session's hash slot (`balance = "hash"`), counted in `Node::slots`.
    slot: Option<u16>,
}

impl ActiveGuard {
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The session's lane closed: the scope to wait on from now on when a hash
    /// rebalance closed it and the session's slot stays on this node
    /// (`crate::cluster::pacing::Pacing::survive`); `None`: the session ends.
    pub fn survive(&self, listener: &str) -> Option<crate::sessions::SessionScope> {
        self.node.pacing.survive(listener, self.slot?)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.node.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(s) = self.slot {
            self.node.slots.remove(s);
        }
    }
}
