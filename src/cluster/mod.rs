//! Cluster state and node selection (SPEC section 4).
//!
//! A [`Cluster`] holds its nodes' live state: health (written by the `health` tasks),
//! admin state (written by the admin API), resolved addresses (written by DNS refresh),
//! connection counts and the cancellation handle that closes every session through a
//! node at once. [`Cluster::pick`] answers "which nodes, in which order" from that
//! in-memory state only; the data path never waits on anything else.
//!
//! Cluster and node objects outlive config reloads: a reload updates them in place,
//! keyed by name, so health, sticky entries and live sessions carry over.

pub(crate) mod balance;
mod node;
pub mod orphans;
pub mod pacing;
pub mod rebalance;
pub mod slots;
#[cfg(test)]
mod tests;

use crate::config::{Balance, ClusterConfig, Mode, OnNodeDown, StickyKey, StickySessions};
use crate::metrics::Metrics;
use crate::mqtt::Connect;
use crate::sessions::CloseCause;
use crate::sticky::subs::{Bounds, SubStore};
use crate::sticky::{Lookup, StickyTable};
use arc_swap::{ArcSwap, ArcSwapOption};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

pub use node::{ActiveGuard, AdminState, Health, Node};

/// Where to send a client: nodes in order of preference (the first, then retries), and
/// the sticky key to record once a node has accepted.
pub struct Pick {
    pub nodes: Vec<Arc<Node>>,
    pub sticky: Option<StickyWrite>,
}

pub struct StickyWrite {
    pub key: String,
    /// The node the table already points to (no write needed if the client lands there).
    pub current: Option<Arc<str>>,
}

pub struct Cluster {
    pub name: String,
    config: ArcSwap<ClusterConfig>,
    nodes: ArcSwap<Vec<Arc<Node>>>,
    leader: ArcSwapOption<Node>,
    leader_lock: Mutex<()>,
    rr: AtomicUsize,
    pub sticky: StickyTable,
    /// Persistent clients' subscriptions (`[sessions] restore_subscriptions`).
    pub subs: SubStore,
    /// Live client ids (`[sessions] single_live`, `crate::live`).
    pub live: Arc<crate::live::LiveIds>,
    /// `mqgate_relay_connections_total{cluster, mode="byte"|"packet"}`, resolved once.
    pub relayed_byte: prometheus::IntCounter,
    pub relayed_packet: prometheus::IntCounter,
    /// Sessions left on nodes clients no longer use (`[sessions] clean_orphans`).
    orphans: orphans::Orphans,
    metrics: Arc<Metrics>,
    /// Woken on every change that can make a node usable (health, admin state, leader,
    /// reload): clients held while no node can take them wait on it.
    changed: Notify,
    /// Clients held right now (bounded by `queue_max`).
    queued: AtomicUsize,
    /// TLS to the brokers (`[tls]`), loaded by the gateway at start-up and on every
    /// reload; empty: plain TCP.
    tls: ArcSwapOption<crate::broker_tls::BrokerTls>,
    /// `connect_rate` admissions (`crate::shaping`).
    pub admission: crate::rate::ConnectBucket,
}

/// A client's place among those held while no node can take them; released on drop.
pub struct QueueGuard<'a> {
    cluster: &'a Cluster,
    gauge: prometheus::IntGauge,
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        self.cluster.queued.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

impl Cluster {
    pub fn new(cfg: &ClusterConfig, metrics: Arc<Metrics>, origin: &str) -> Self {
        Self::with_feed(cfg, metrics, origin, crate::sticky::feed())
    }

    /// A cluster whose sticky table sends its changes into the gateway's feed
    /// (`crate::sticky::feed`, read by the peer links).
    pub fn with_feed(
        cfg: &ClusterConfig,
        metrics: Arc<Metrics>,
        origin: &str,
        feed: tokio::sync::broadcast::Sender<crate::sticky::Change>,
    ) -> Self {
        let nodes: Vec<Arc<Node>> = cfg
            .nodes
            .iter()
            .map(|n| Arc::new(Node::new(&cfg.name, &n.name, n.address.clone(), &metrics)))
            .collect();
        let c = Cluster {
            name: cfg.name.clone(),
            config: ArcSwap::from_pointee(cfg.clone()),
            nodes: ArcSwap::from_pointee(nodes),
            leader: ArcSwapOption::empty(),
            leader_lock: Mutex::new(()),
            rr: AtomicUsize::new(0),
            sticky: StickyTable::with_feed(
                cfg.sticky.capacity,
                cfg.sticky.expire,
                origin,
                &cfg.name,
                feed,
            ),
            subs: SubStore::new(&cfg.name, sub_bounds(cfg)),
            live: Arc::new(crate::live::LiveIds::new(&cfg.name, &metrics)),
            relayed_byte: metrics
                .relay_connections
                .with_label_values(&[&cfg.name, "byte"]),
            relayed_packet: metrics
                .relay_connections
                .with_label_values(&[&cfg.name, "packet"]),
            orphans: orphans::Orphans::default(),
            metrics,
            changed: Notify::new(),
            queued: AtomicUsize::new(0),
            tls: ArcSwapOption::empty(),
            admission: Default::default(),
        };
        for n in c.nodes().iter() {
            c.publish_node_metrics(n);
        }
        c.metrics.leader_changes.with_label_values(&[&c.name]);
        c.metrics
            .sticky_entries
            .with_label_values(&[&c.name])
            .set(0);
        for r in ["hit", "miss", "stale"] {
            c.metrics.sticky_lookups.with_label_values(&[&c.name, r]);
        }
        c.metrics.queued.with_label_values(&[&c.name]).set(0);
        if cfg.mode == Mode::Dynsec {
            c.metrics
                .session_subscriptions
                .with_label_values(&[&c.name])
                .set(0);
            for r in crate::sticky::subs::REFUSED_REASONS {
                c.metrics
                    .session_subscriptions_dropped
                    .with_label_values(&[&c.name, r]);
            }
            for r in ["done", "failed"] {
                c.metrics.session_replays.with_label_values(&[&c.name, r]);
            }
            for r in ["done", "retried", "dropped"] {
                c.metrics.session_orphans.with_label_values(&[&c.name, r]);
            }
        }
        for r in crate::metrics::QUEUE_RESULTS {
            c.metrics.queue_results.with_label_values(&[&c.name, r]);
        }
        c
    }

    /// A future that completes at the next change that may make a node usable. Create
    /// it before looking at the state: it is woken by every change from its creation
    /// on, even before it is first polled (`Notify::notify_waiters`), so none is missed.
    pub fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }

    /// Take a place among the held clients, unless `queue_max` are already held.
    pub fn enter_queue(&self) -> Option<QueueGuard<'_>> {
        let max = self.config().queue_max;
        let mut n = self.queued.load(Ordering::Acquire);
        loop {
            if n >= max {
                return None;
            }
            match self
                .queued
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        let gauge = self.metrics.queued.with_label_values(&[&self.name]);
        gauge.inc();
        Some(QueueGuard {
            cluster: self,
            gauge,
        })
    }

    /// Count how a held client's wait ended (`mqgate_queue_total{result}`).
    pub fn queue_result(&self, result: &str) {
        self.metrics
            .queue_results
            .with_label_values(&[&self.name, result])
            .inc();
    }

    pub fn config(&self) -> Arc<ClusterConfig> {
        self.config.load_full()
    }

    /// TLS to the brokers, if the cluster has `[tls]`.
    pub fn tls(&self) -> Option<Arc<crate::broker_tls::BrokerTls>> {
        self.tls.load_full()
    }

    /// New TLS material for new connections to the brokers (start-up and reload).
    pub fn set_tls(&self, tls: Option<Arc<crate::broker_tls::BrokerTls>>) {
        self.tls.store(tls);
    }

    pub fn nodes(&self) -> Arc<Vec<Arc<Node>>> {
        self.nodes.load_full()
    }

    pub fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes().iter().find(|n| n.name == name).cloned()
    }

    pub fn leader(&self) -> Option<Arc<Node>> {
        self.leader.load_full()
    }

    /// Apply a new config for this cluster (reload). Returns the nodes that were added
    /// (their health checks must be started) and removed (their tasks stopped, their
    /// sessions closed per `on_node_down`).
    pub fn reconfigure(&self, cfg: &ClusterConfig) -> (Vec<Arc<Node>>, Vec<Arc<Node>>) {
        let old = self.nodes();
        let mut next = Vec::with_capacity(cfg.nodes.len());
        let mut added = Vec::new();
        for n in &cfg.nodes {
            match old.iter().find(|o| o.name == n.name) {
                Some(o) => {
                    if *o.address() != n.address {
                        o.set_address(n.address.clone());
                    }
                    next.push(o.clone());
                }
                None => {
                    let node = Arc::new(Node::new(
                        &cfg.name,
                        &n.name,
                        n.address.clone(),
                        &self.metrics,
                    ));
                    self.publish_node_metrics(&node);
                    added.push(node.clone());
                    next.push(node);
                }
            }
        }
        let removed: Vec<Arc<Node>> = old
            .iter()
            .filter(|o| !cfg.nodes.iter().any(|n| n.name == o.name))
            .cloned()
            .collect();
        self.config.store(Arc::new(cfg.clone()));
        self.sticky
            .set_limits(cfg.sticky.capacity, cfg.sticky.expire);
        self.subs.set_bounds(sub_bounds(cfg));
        self.nodes.store(Arc::new(next));
        for r in &removed {
            r.removed.store(true, Ordering::Release);
            r.tasks.cancel();
            if cfg.on_node_down == OnNodeDown::Disconnect {
                r.close_sessions(CloseCause::Removed);
            }
            self.forget_node_metrics(r);
        }
        self.update_leader();
        self.changed.notify_waiters();
        (added, removed)
    }

    /// Everything of this cluster stops: its nodes' tasks and sessions.
    pub fn retire(&self) {
        for n in self.nodes().iter() {
            n.removed.store(true, Ordering::Release);
            n.tasks.cancel();
            n.close_sessions(CloseCause::Removed);
            self.forget_node_metrics(n);
        }
    }

    /// A health check decided that `node` is up or down.
    pub fn set_health(&self, node: &Arc<Node>, h: Health) {
        let prev = node.health.swap(h as u8, Ordering::AcqRel);
        if prev == h as u8 {
            return;
        }
        self.metrics
            .node_up
            .with_label_values(&[&self.name, &node.name])
            .set((h == Health::Up) as i64);
        self.metrics
            .node_state_changes
            .with_label_values(&[&self.name, &node.name, h.as_str()])
            .inc();
        if h == Health::Down && self.config().on_node_down == OnNodeDown::Disconnect {
            node.close_sessions(CloseCause::NodeDown);
        }
        self.update_leader();
        self.changed.notify_waiters();
    }

    pub fn set_admin_state(&self, node: &Arc<Node>, s: AdminState) {
        let prev = node.admin.swap(s as u8, Ordering::AcqRel);
        if prev != s as u8 {
            tracing::info!(cluster = %self.name, node = %node.name, state = s.as_str(), "node admin state changed");
        }
        for st in AdminState::ALL {
            self.metrics
                .node_admin_state
                .with_label_values(&[&self.name, &node.name, st.as_str()])
                .set((st == s) as i64);
        }
        if s == AdminState::Maint {
            crate::cluster::pacing::close_node(
                &self.metrics,
                node,
                self.config().shaping.close_rate,
                CloseCause::Maint,
            );
        } else if prev == AdminState::Maint as u8
            && node.close_cause() == Some(CloseCause::Maint)
            && node.pacing.cancel()
        {
            // Out of maintenance while its paced close still runs (an evacuation, or
            // `maint` with `close_rate`; not a leader change's): stop it, as cancelling
            // the evacuation does. Otherwise it would go on closing lanes, and at its
            // end every session of the node, including those that came since.
            tracing::info!(cluster = %self.name, node = %node.name, "paced close stopped: the node left maintenance");
        }
        self.update_leader();
        self.changed.notify_waiters();
    }

    fn publish_node_metrics(&self, n: &Node) {
        let m = &self.metrics;
        m.node_up
            .with_label_values(&[&self.name, &n.name])
            .set((n.health() == Health::Up) as i64);
        m.node_leader
            .with_label_values(&[&self.name, &n.name])
            .set(0);
        for st in AdminState::ALL {
            m.node_admin_state
                .with_label_values(&[&self.name, &n.name, st.as_str()])
                .set((st == n.admin_state()) as i64);
        }
        for r in ["ok", "fail"] {
            m.health_checks.with_label_values(&[&self.name, &n.name, r]);
        }
        for h in [Health::Up, Health::Down] {
            m.node_state_changes
                .with_label_values(&[&self.name, &n.name, h.as_str()]);
        }
    }

    fn forget_node_metrics(&self, n: &Node) {
        let m = &self.metrics;
        let _ = m.node_up.remove_label_values(&[&self.name, &n.name]);
        let _ = m.node_leader.remove_label_values(&[&self.name, &n.name]);
        for h in [Health::Up, Health::Down] {
            let _ = m
                .node_state_changes
                .remove_label_values(&[&self.name, &n.name, h.as_str()]);
        }
        for st in AdminState::ALL {
            let _ = m
                .node_admin_state
                .remove_label_values(&[&self.name, &n.name, st.as_str()]);
        }
    }

    /// full-sync: keep the current leader while it is up (and not in maintenance);
    /// otherwise the first up node in config order. Closes the old leader's sessions
    /// when leadership moves (per `on_node_down`).
    fn update_leader(&self) {
        let cfg = self.config();
        let _g = crate::sync::lock(&self.leader_lock);
        let current = self.leader.load_full();
        if cfg.mode != Mode::FullSync {
            if current.is_some() {
                self.leader.store(None);
            }
            return;
        }
        let eligible = |n: &Node| {
            !n.is_removed() && n.health() == Health::Up && n.admin_state() != AdminState::Maint
        };
        let keep = current.as_ref().filter(|c| eligible(c)).cloned();
        let next = keep.or_else(|| first_leader_candidate(&self.nodes()));
        let changed = match (&current, &next) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            (None, None) => false,
            _ => true,
        };
        if !changed {
            return;
        }
        self.leader.store(next.clone());
        if let Some(old) = &current {
            self.metrics
                .node_leader
                .with_label_values(&[&self.name, &old.name])
                .set(0);
            if cfg.on_node_down == OnNodeDown::Disconnect {
                crate::cluster::pacing::close_node(
                    &self.metrics,
                    old,
                    cfg.shaping.close_rate,
                    CloseCause::LeaderChange,
                );
            }
        }
        if let Some(new) = &next {
            self.metrics
                .node_leader
                .with_label_values(&[&self.name, &new.name])
                .set(1);
        }
        self.metrics
            .leader_changes
            .with_label_values(&[&self.name])
            .inc();
        let from = current.as_ref().map(|n| n.name.as_str()).unwrap_or("-");
        match &next {
            Some(to) => {
                tracing::info!(cluster = %self.name, from, to = to.name.as_str(), "leader changed")
            }
            // No node to send clients to: an error (logs), not just a change.
            None => tracing::error!(cluster = %self.name, from, to = "-", "leader changed"),
        }
    }

    /// Choose nodes for a client (SPEC section 4). The first node is the choice; the
    /// next `retries` nodes are tried if it refuses or times out.
    pub fn pick(&self, connect: &Connect<'_>) -> Pick {
        let cfg = self.config();
        let nodes = self.nodes();
        let limit = 1 + cfg.retries as usize;
        match cfg.mode {
            Mode::FullSync => {
                let list = match self.leader() {
                    // A drained leader stays leader (leadership is the brokers' fact)
                    // but takes no new clients.
                    Some(l) if l.admin_state() == AdminState::Ready => vec![l],
                    Some(_) => Vec::new(),
                    // No leader elected yet (start-up: an earlier node has not answered
                    // its first check): ready nodes not known to be down, in order.
                    None => nodes
                        .iter()
                        .filter(|n| n.alive() && n.admin_state() == AdminState::Ready)
                        .take(limit)
                        .cloned()
                        .collect(),
                };
                Pick {
                    nodes: list,
                    sticky: None,
                }
            }
            Mode::Dynsec => self.pick_dynsec(&cfg, &nodes, connect, limit),
        }
    }

    fn pick_dynsec(
        &self,
        cfg: &ClusterConfig,
        nodes: &[Arc<Node>],
        connect: &Connect<'_>,
        limit: usize,
    ) -> Pick {
        let key = sticky_key(cfg.sticky.key, connect);
        let mut out: Vec<Arc<Node>> = Vec::with_capacity(limit);
        let mut current = None;
        if let Some(k) = key {
            let result = self.sticky.lookup(k);
            let label = match &result {
                Lookup::Hit(_) => "hit",
                Lookup::Miss => "miss",
                Lookup::Stale => "stale",
            };
            self.metrics
                .sticky_lookups
                .with_label_values(&[&self.name, label])
                .inc();
            if let Lookup::Hit(node) = result {
                if let Some(n) = nodes.iter().find(|n| *n.name == *node) {
                    if n.alive() && n.admin_state() != AdminState::Maint {
                        out.push(n.clone());
                    }
                }
                current = Some(node);
            }
        }
        let candidates: Vec<&Arc<Node>> = nodes
            .iter()
            .filter(|n| {
                n.alive()
                    && n.admin_state() == AdminState::Ready
                    && !out.iter().any(|o| Arc::ptr_eq(o, n))
            })
            .collect();
        let ordered = match (cfg.balance, key) {
            (Balance::Hash, Some(k)) => balance::rendezvous(k, candidates),
            // Nothing to hash on (no client id, no username): spread them instead of
            // sending every anonymous client to the node that "" hashes to.
            (Balance::Hash, None) | (Balance::RoundRobin, _) => {
                balance::round_robin(self.rr.fetch_add(1, Ordering::Relaxed), candidates)
            }
            (Balance::LeastConn, _) => {
                balance::least_conn(self.rr.fetch_add(1, Ordering::Relaxed), candidates)
            }
        };
        out.extend(ordered.into_iter().cloned());
        out.truncate(limit);
        let record = key.is_some()
            && match cfg.sticky.sessions {
                StickySessions::All => true,
                StickySessions::Persistent => connect.keeps_session(),
            };
        Pick {
            nodes: out,
            sticky: if record {
                key.map(|k| StickyWrite {
                    key: k.to_string(),
                    current,
                })
            } else {
                None
            },
        }
    }

    /// The broker answered a forwarded CONNECT (any CONNACK): its run of misses ends.
    pub fn connack_seen(&self, node: &Node) {
        // Read first: no shared cache-line write on every connection.
        if node.connack_misses.load(Ordering::Relaxed) != 0 {
            node.connack_misses.store(0, Ordering::Relaxed);
        }
    }

    /// A forwarded CONNECT got no CONNACK within `connack_timeout`. `health.fall` such
    /// misses in a row mark the node down (HAProxy's `observe layer7` with
    /// `on-error mark-down`); its health checks bring it back up after `rise` passes.
    pub fn connack_missed(&self, node: &Arc<Node>) {
        node.count_connack_failure();
        let cfg = self.config();
        let misses = node.connack_misses.fetch_add(1, Ordering::Relaxed) + 1;
        if misses >= cfg.health.fall && node.health() == Health::Up {
            node.connack_misses.store(0, Ordering::Relaxed);
            tracing::warn!(
                cluster = %self.name,
                node = %node.name,
                misses,
                connack_timeout = ?cfg.connack_timeout,
                "node is down: clients got no CONNACK in time"
            );
            self.set_health(node, Health::Down);
            node.recheck.notify_one();
        }
    }

    /// A client landed on `node`: write the sticky entry if it changed.
    pub fn landed(&self, sticky: Option<StickyWrite>, node: &Node) {
        if let Some(w) = sticky {
            // `mqgate_sticky_entries` is refreshed on every scrape (admin) and by the
            // sweeper, not here: counting locks every shard.
            if w.current.as_deref() != Some(node.name.as_str()) {
                self.sticky.record(&w.key, &node.name);
            }
        }
    }

    /// Can this cluster take a client right now? (`/readyz`)
    pub fn ready(&self) -> bool {
        match self.config().mode {
            Mode::FullSync => self
                .leader()
                .is_some_and(|l| l.admin_state() == AdminState::Ready),
            Mode::Dynsec => self
                .nodes()
                .iter()
                .any(|n| n.health() == Health::Up && n.admin_state() == AdminState::Ready),
        }
    }
}

/// full-sync election without a current leader: the first node in config order that
/// is up and not in maintenance — but none while a node before it has not had its first
/// check (start-up), so that the choice does not depend on which probe answered first
/// and independent gateways elect the same node.
fn first_leader_candidate(nodes: &[Arc<Node>]) -> Option<Arc<Node>> {
    nodes
        .iter()
        .filter(|n| !n.is_removed() && n.admin_state() != AdminState::Maint)
        .find(|n| n.health() != Health::Down)
        .filter(|n| n.health() == Health::Up)
        .cloned()
}

/// The subscription store's bounds from a cluster's configuration.
fn sub_bounds(cfg: &ClusterConfig) -> Bounds {
    Bounds {
        per_client: cfg.sessions.max_per_client,
        bytes_per_client: cfg.sessions.max_bytes_per_client,
        total: cfg.sessions.max_total,
        expire: cfg.sticky.expire,
    }
}

/// The sticky key of a client: the client id or the username per config; an empty
/// client id falls back to the username; with neither there is no stickiness.
pub fn sticky_key<'a>(key: StickyKey, c: &Connect<'a>) -> Option<&'a str> {
    let username = c.username.filter(|u| !u.is_empty());
    match key {
        StickyKey::ClientId if !c.client_id.is_empty() => Some(c.client_id),
        StickyKey::ClientId | StickyKey::Username => username,
    }
}
