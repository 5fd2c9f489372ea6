//! What the services beside the data path (peers, the admin API, the refusal
//! summary) get from the gateway, and nothing more: the current view (clusters, their
//! sticky tables and admin states, the configuration) through the data path's handle,
//! the metrics, this instance's name, the background task set and the DNS resolver. The gateway keeps
//! its own wiring (`crate::state::Shared`) to itself.

use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::runtime::{DataPath, Runtime};
use crate::sticky::Change;
use crate::sync::lock;
use hickory_resolver::TokioResolver;
use prometheus::{IntCounter, IntGauge};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Host {
    data: Arc<DataPath>,
    pub metrics: Arc<Metrics>,
    /// This gateway's name (the `[peers] name` at start-up).
    pub instance: String,
    /// Stops the service's tasks (shutdown).
    pub background: CancellationToken,
    /// Where the service's tasks run.
    pub bg_tracker: TaskTracker,
    /// The peer links as the peers service keeps them, for the status page and API.
    pub peer_board: PeerBoard,
    /// The gateway's DNS resolver (peer discovery).
    pub resolver: Arc<TokioResolver>,
    /// The change feed of every sticky table (what peer links send).
    pub changes: broadcast::Sender<Change>,
}

impl Host {
    pub fn new(
        data: Arc<DataPath>,
        instance: String,
        background: CancellationToken,
        bg_tracker: TaskTracker,
        resolver: Arc<TokioResolver>,
        changes: broadcast::Sender<Change>,
    ) -> Self {
        Host {
            metrics: data.metrics.clone(),
            data,
            instance,
            background,
            bg_tracker,
            peer_board: PeerBoard::default(),
            resolver,
            changes,
        }
    }

    /// Shutdown has begun (no new connections are accepted).
    pub fn stopping(&self) -> bool {
        self.data.stopping.is_cancelled()
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.data.runtime()
    }

    pub fn cluster(&self, name: &str) -> Option<Arc<Cluster>> {
        self.runtime().clusters.get(name).cloned()
    }

    pub fn clusters_sorted(&self) -> Vec<Arc<Cluster>> {
        self.runtime().clusters_sorted()
    }

    /// Set `mqgate_sticky_entries` (scrapes, and after bulk changes to the sticky
    /// tables: a full sync, a snapshot).
    pub fn refresh_sticky_gauges(&self) {
        self.data.refresh_sticky_gauges();
    }
}

/// The peer links the peers service knows, by peer name: its address and the very
/// counters it reports to Prometheus, so that the status page reads typed state, not
/// the metrics text.
#[derive(Default)]
pub struct PeerBoard {
    links: Mutex<BTreeMap<String, PeerStats>>,
}

#[derive(Clone)]
pub struct PeerStats {
    pub address: String,
    /// `mqgate_peer_up` of this peer.
    pub up: IntGauge,
    /// `mqgate_peer_updates_total` of this peer, direction `sent` and `received`.
    pub sent: IntCounter,
    pub received: IntCounter,
}

impl PeerStats {
    /// The series of peer `name` (linked at `address`) in `metrics`.
    pub fn new(metrics: &Metrics, name: &str, address: String) -> PeerStats {
        let updates = |dir: &str| metrics.peer_updates.with_label_values(&[name, dir]);
        PeerStats {
            address,
            up: metrics.peer_up.with_label_values(&[name]),
            sent: updates("sent"),
            received: updates("received"),
        }
    }
}

impl PeerBoard {
    /// Add or update a peer.
    pub fn set(&self, name: &str, stats: PeerStats) {
        lock(&self.links).insert(name.to_string(), stats);
    }

    /// Add a peer unless it is listed already (a discovered peer at link-up).
    pub fn add_if_absent(&self, name: &str, stats: impl FnOnce() -> PeerStats) {
        lock(&self.links)
            .entry(name.to_string())
            .or_insert_with(stats);
    }

    /// Remove one peer (a discovered peer whose link ended).
    pub fn remove(&self, name: &str) {
        lock(&self.links).remove(name);
    }

    /// Keep only the peers `keep` accepts.
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        lock(&self.links).retain(|name, _| keep(name));
    }

    /// The peers in name order.
    pub fn list(&self) -> Vec<(String, PeerStats)> {
        lock(&self.links)
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }
}

/// This gateway's name: `[peers] name`, else the host name.
pub fn instance_name(cfg: &crate::config::Config) -> String {
    if let Some(p) = &cfg.peers {
        return p.name.clone();
    }
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "mqgate".to_string())
}
