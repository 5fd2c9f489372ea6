//! What the connection path reads: the current configuration view ([`Runtime`],
//! swapped whole on reload and loaded once per connection) and [`DataPath`], the
//! narrow handle the accept loops and connection tasks get instead of the whole
//! gateway: the view, the per-process connection limits, the rate table, the
//! connection threads and the metrics they count into.

use crate::cluster::Cluster;
use crate::config::{Config, ListenerConfig};
use crate::metrics::Metrics;
use crate::pipes::PipePool;
use crate::rate::RateLimiter;
use crate::sessions::SessionScope;
use crate::workers::Workers;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The configuration view a connection loads once when it starts.
pub struct Runtime {
    pub config: Arc<Config>,
    pub clusters: HashMap<String, Arc<Cluster>>,
    pub listeners: HashMap<String, Arc<ListenerRt>>,
}

impl Runtime {
    /// Clusters sorted by name (stable order for syncs, snapshots and pages).
    pub fn clusters_sorted(&self) -> Vec<Arc<Cluster>> {
        let mut v: Vec<_> = self.clusters.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// One listener as the connection path sees it.
pub struct ListenerRt {
    pub config: ListenerConfig,
    pub tls: Option<ArcSwap<crate::tls::ServerTls>>,
    pub cluster: Arc<Cluster>,
    /// Closed when the listener is removed (and at the end of the shutdown grace):
    /// its sessions close.
    pub closed: SessionScope,
    pub local_addr: SocketAddr,
    /// Connections of this listener now (kept across reloads, for its own
    /// `max_connections`).
    pub active: Arc<std::sync::atomic::AtomicUsize>,
    /// The pipes large flows may take (`limits.splice = "auto"`, plain-TCP listeners
    /// only; `crate::relay::splice`).
    pub pipes: Option<Arc<PipePool>>,
}

/// How many over-limit clients may be in the middle of being refused at once.
pub const MAX_REJECTING: usize = 1024;

/// The data path's handle (see the module comment).
pub struct DataPath {
    runtime: ArcSwap<Runtime>,
    pub metrics: Arc<Metrics>,
    /// `max_connections` places (resized on reload by the gateway).
    pub conn_limit: Arc<Semaphore>,
    /// Clients over `max_connections` being answered "server busy", at most
    /// [`MAX_REJECTING`].
    pub rejecting: Arc<Semaphore>,
    pub rate: RateLimiter,
    /// Connection tasks (accept loops, set-up and relay tasks).
    pub tracker: TaskTracker,
    /// The threads connections run on (`limits.threads`, fixed at start-up).
    pub workers: Workers,
    /// Stop accepting (start of graceful shutdown).
    pub stopping: CancellationToken,
    /// The access log (`[log] access`); off unless configured.
    pub access: crate::access::AccessLog,
    /// Pipes for splice(2) relaying (`limits.splice`, `max_pipes`; configured by the
    /// gateway at start-up and every reload).
    pub pipes: Arc<PipePool>,
}

impl DataPath {
    pub fn new(
        runtime: Runtime,
        metrics: Arc<Metrics>,
        conn_permits: usize,
        workers: Workers,
    ) -> Self {
        DataPath {
            runtime: ArcSwap::from_pointee(runtime),
            conn_limit: Arc::new(Semaphore::new(conn_permits)),
            rejecting: Arc::new(Semaphore::new(MAX_REJECTING)),
            rate: RateLimiter::default(),
            tracker: TaskTracker::new(),
            access: crate::access::AccessLog::new(metrics.access_log_dropped.clone()),
            pipes: Arc::new(PipePool::new(metrics.splice.clone())),
            metrics,
            workers,
            stopping: CancellationToken::new(),
        }
    }

    /// The last step of a stop, once the sessions have ended: end the connection
    /// threads, then write the access log's last lines (queued by now) before the
    /// process exits.
    pub fn stop(&self) {
        self.workers.stop();
        self.access.close(std::time::Duration::from_secs(5));
    }

    /// The current configuration view (one atomic load).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Set `mqgate_sticky_entries` from the tables' sizes (counting locks every
    /// shard, so this runs on scrapes, sweeps and bulk changes, not per connection).
    pub fn refresh_sticky_gauges(&self) {
        for c in self.runtime().clusters.values() {
            self.metrics
                .sticky_entries
                .with_label_values(&[&c.name])
                .set(c.sticky.len() as i64);
            if c.config().mode == crate::config::Mode::Dynsec {
                self.metrics
                    .session_subscriptions
                    .with_label_values(&[&c.name])
                    .set(c.subs.total() as i64);
            }
        }
    }

    /// Swap in a new view (the gateway, at the end of a reload).
    pub fn set_runtime(&self, rt: Runtime) {
        self.runtime.store(Arc::new(rt));
    }
}
