//! What the services beside the data path (peers, the admin API, the refusal
//! summary) get from the gateway, and nothing more: the current view (clusters, their
//! sticky tables and admin states, the configuration) through the data path's handle,
//! the metrics, this instance's name, the background task set and the DNS resolver. The gateway keeps
//! its own wiring (`crate::state::Shared`) to itself.

use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::runtime::{DataPath, Runtime};
use crate::sticky::Change;
use hickory_resolver::TokioResolver;
use std::sync::Arc;
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
