//! The gateway's long-lived state, across reloads: the data path's handle
//! ([`DataPath`]), clusters by name, listener sockets, the background task set, the
//! resolver. The side services (admin, peers, the refusal summary) read it; the
//! gateway (`crate::gateway`) changes it.

use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::runtime::{DataPath, Runtime};
use crate::sessions::SessionScope;
use hickory_resolver::TokioResolver;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A bound listener socket and its accept loop.
pub(crate) struct ListenerSlot {
    pub(crate) bind: SocketAddr,
    pub(crate) local_addr: SocketAddr,
    /// A second handle on the listening socket, handed to a successor process
    /// (`crate::handover`). Dropped with the slot and at the start of shutdown, so
    /// that the accept loop's close stays the socket's last: a socket kept open here
    /// would go on queueing connections that nobody accepts.
    pub(crate) sock: Option<std::net::TcpListener>,
    pub(crate) stop_accept: CancellationToken,
    pub(crate) closed: SessionScope,
    /// Connections of this listener now (its own `max_connections`).
    pub(crate) active: Arc<AtomicUsize>,
}

/// State that lives as long as the process, across reloads.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// What the connection path gets (the current view, limits, threads).
    pub data: Arc<DataPath>,
    pub(crate) clusters: Mutex<HashMap<String, Arc<Cluster>>>,
    pub(crate) slots: Mutex<HashMap<String, ListenerSlot>>,
    /// Listening sockets taken over from a previous process, by bind address; used
    /// instead of binding anew (`crate::handover`).
    pub(crate) inherited: Mutex<HashMap<SocketAddr, std::net::TcpListener>>,
    /// Serialises reloads.
    pub(crate) apply_lock: tokio::sync::Mutex<()>,
    /// Close every remaining session (end of the shutdown grace).
    pub hard_stop: SessionScope,
    /// Stops background tasks (health checks, peers, admin).
    pub background: CancellationToken,
    /// Background tasks.
    pub bg_tracker: TaskTracker,
    pub(crate) conn_limit_size: AtomicUsize,
    pub resolver: Arc<TokioResolver>,
    /// This gateway's name (the `[peers] name`, else the host name).
    pub instance: String,
    /// The change feed of every sticky table (`crate::sticky::feed`), read by peer links.
    pub changes: tokio::sync::broadcast::Sender<crate::sticky::Change>,
    /// Changes the log filter on reload (set by the binary).
    pub log_level: Mutex<Option<crate::logging::LevelSetter>>,
}

impl Shared {
    /// The current configuration view (one atomic load).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.data.runtime()
    }

    /// A second handle on every listening socket, for a successor process.
    pub fn listening_sockets(&self) -> Vec<(String, SocketAddr, std::net::TcpListener)> {
        lock(&self.slots)
            .iter()
            .filter_map(|(name, s)| match s.sock.as_ref()?.try_clone() {
                Ok(d) => Some((name.clone(), s.bind, d)),
                Err(e) => {
                    tracing::warn!(listener = %name, "handover: cannot duplicate the socket: {e}");
                    None
                }
            })
            .collect()
    }

    /// The address a listener is bound to (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.runtime().listeners.get(name).map(|l| l.local_addr)
    }
}

pub(crate) use crate::sync::lock;
