//! The gateway's operations on its state ([`Shared`], `crate::state`): start-up,
//! reload and shutdown.
//!
//! Start-up is a reload from nothing. [`Gateway::apply`] parses nothing itself: it
//! takes a validated [`Config`], plans the change as a pure diff of the running state
//! and the new file (`crate::plan`), prepares everything that can fail (TLS material,
//! new sockets) before changing anything, then applies the plan (clusters, nodes and
//! listeners reconciled by name) and swaps in the new [`Runtime`]. State that must
//! outlive reloads (node health, sticky tables, listener sockets and their sessions)
//! is kept and reused.

use crate::cluster::Cluster;
use crate::config::{self, Config};
use crate::listener;
use crate::metrics::Metrics;
use crate::runtime::DataPath;
use crate::sessions::SessionScope;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::reload::ApplyError;
pub use crate::runtime::{ListenerRt, Runtime};
pub use crate::state::Shared;
use crate::state::{lock, ListenerSlot};

#[derive(Clone)]
pub struct Gateway {
    pub shared: Arc<Shared>,
    /// Peer links and the sticky snapshot (`crate::peers`).
    pub peers: Arc<crate::peers::PeersHandle>,
    /// What the side services (peers, admin, the refusal summary) see of the gateway.
    pub host: Arc<crate::host::Host>,
}

impl Gateway {
    /// Bind everything and start serving. Errors if a listener cannot bind or its TLS
    /// material cannot be loaded.
    pub async fn start(config: Config) -> Result<Gateway, ApplyError> {
        Self::start_with(config, HashMap::new()).await
    }

    /// [`Gateway::start`] on listening sockets taken over from a previous process
    /// (by bind address; see `crate::handover`). Those not used are closed.
    pub async fn start_with(
        config: Config,
        inherited: HashMap<SocketAddr, std::net::TcpListener>,
    ) -> Result<Gateway, ApplyError> {
        let metrics = Arc::new(Metrics::new());
        let count = crate::workers::thread_count(&config);
        tracing::info!(
            threads = count.threads,
            cpus = count.cpus,
            broker_nodes_on_this_host = count.local_nodes,
            from = if config.limits.threads.is_some() {
                "limits.threads"
            } else {
                "one per CPU, less one per broker node on this host"
            },
            "connection threads"
        );
        let workers = match count.threads {
            0 => crate::workers::Workers::none(),
            n => {
                crate::workers::Workers::start(n).map_err(|error| ApplyError::Threads { error })?
            }
        };
        let empty = Runtime {
            config: Arc::new(config.clone()),
            clusters: HashMap::new(),
            listeners: HashMap::new(),
        };
        let permits = conn_permits(config.limits.max_connections);
        let shared = Arc::new(Shared {
            data: Arc::new(DataPath::new(empty, metrics.clone(), permits, workers)),
            metrics,
            clusters: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            inherited: Mutex::new(inherited),
            apply_lock: tokio::sync::Mutex::new(()),
            hard_stop: SessionScope::root(),
            background: CancellationToken::new(),
            bg_tracker: TaskTracker::new(),
            conn_limit_size: AtomicUsize::new(permits),
            resolver: crate::health::resolver().map_err(|e| ApplyError::Resolver {
                error: e.to_string(),
            })?,
            instance: crate::host::instance_name(&config),
            changes: crate::sticky::feed(),
            log_level: Mutex::new(None),
        });
        let host = Arc::new(crate::host::Host::new(
            shared.data.clone(),
            shared.instance.clone(),
            shared.background.clone(),
            shared.bg_tracker.clone(),
            shared.resolver.clone(),
            shared.changes.clone(),
        ));
        let gw = Gateway {
            shared,
            peers: Arc::default(),
            host,
        };
        gw.apply(config).await?;
        for (bind, _) in lock(&gw.shared.inherited).drain() {
            tracing::info!(bind = %bind, "handover: socket not in this config; closed");
        }
        if let Err(e) = crate::peers::start(&gw.host, &gw.peers).await {
            let bind = gw.shared.runtime().config.peers.as_ref().map(|p| p.bind);
            return Err(ApplyError::Bind {
                listener: "peers".into(),
                bind: bind.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                error: e.into_io(),
            });
        }
        gw.spawn_sweeper();
        Ok(gw)
    }

    fn spawn_sweeper(&self) {
        let shared = self.shared.clone();
        self.shared.bg_tracker.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shared.background.cancelled() => return,
                }
                for c in shared.runtime().clusters.values() {
                    c.sticky.sweep();
                }
                shared.data.refresh_sticky_gauges();
            }
        });
    }

    /// Re-read the config file this gateway was started from, and apply it. Every
    /// trigger (file watcher, SIGHUP, `POST /api/v1/reload`) comes here. A panic in
    /// the reload (a bug: validation bounds every value, see `config::bounds`) is
    /// caught here, logged and counted as a failed reload, so that the caller, the
    /// watcher task among them, lives on and later reloads are applied.
    pub async fn reload(&self) -> Result<(), ApplyError> {
        let path = self.shared.runtime().config.source.clone();
        let result = match CatchUnwind(Box::pin(self.load_and_apply(&path))).await {
            Ok(r) => r,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_string());
                Err(ApplyError::Panic(what))
            }
        };
        let m = &self.shared.metrics;
        match &result {
            Ok(()) => {
                m.config_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(file = %path.display(), "configuration reloaded");
            }
            Err(e @ ApplyError::Panic(_)) => {
                m.config_reloads.with_label_values(&["error"]).inc();
                tracing::error!(
                    file = %path.display(),
                    "configuration reload failed: {e}; please report this bug. Reloads go on; \
                     the running configuration may be partly changed: reload a good file again"
                );
            }
            Err(e) => {
                m.config_reloads.with_label_values(&["error"]).inc();
                tracing::error!(
                    "configuration reload failed; the running configuration stays: {e}"
                );
            }
        }
        result
    }

    /// [`Gateway::reload`] without the panic guard, the counting and the log line.
    async fn load_and_apply(&self, path: &std::path::Path) -> Result<(), ApplyError> {
        #[cfg(test)]
        tests::maybe_panic(path);
        // `config::load` also loads and matches every certificate, key and CA file
        // (as `check` does), so bad TLS material is refused before anything changes.
        match config::load(path) {
            Ok(cfg) => {
                for w in cfg.warning_lines() {
                    tracing::warn!("{w}");
                }
                for w in crate::fdlimit::warnings(&cfg, crate::fdlimit::current().soft) {
                    tracing::warn!("{w}");
                }
                self.apply(cfg).await
            }
            Err(e) => Err(ApplyError::Config(e)),
        }
    }

    /// What is running now, for [`crate::plan::diff`].
    fn running(&self) -> crate::plan::Running {
        let shared = &self.shared;
        let old = shared.runtime();
        crate::plan::Running {
            clusters: lock(&shared.clusters).keys().cloned().collect(),
            listeners: lock(&shared.slots)
                .iter()
                .map(|(n, s)| (n.clone(), s.bind))
                .collect(),
            // At start-up the "old" view holds the new config itself: nothing changes.
            max_connections: Some(old.config.limits.max_connections),
            threads: Some(old.config.limits.threads),
            log_level: Some(old.config.log.level.clone()),
            splice: Some((old.config.limits.splice, old.config.limits.max_pipes)),
        }
    }

    /// Apply a validated configuration (start-up and reload): plan (a pure diff of
    /// the running state and `cfg`), prepare everything that can fail (TLS material,
    /// sockets for the listeners the plan binds) before anything changes, then apply
    /// the plan and swap in the new view.
    pub async fn apply(&self, cfg: Config) -> Result<(), ApplyError> {
        let _serial = self.shared.apply_lock.lock().await;
        let plan = crate::plan::diff(&self.running(), &cfg);
        let prepared = self.prepare(&cfg, &plan)?;
        self.commit(cfg, plan, prepared);
        Ok(())
    }

    /// The steps of a reload that can fail: nothing has changed when one does.
    fn prepare(&self, cfg: &Config, plan: &crate::plan::Plan) -> Result<Prepared, ApplyError> {
        let shared = &self.shared;
        // New certificates apply to new handshakes: every TLS listener gets its
        // material loaded afresh.
        let mut acceptors = HashMap::new();
        for l in &cfg.listeners {
            if let Some(t) = &l.tls {
                let sc =
                    crate::tls::server_config(t, &l.name).map_err(|error| ApplyError::Tls {
                        listener: l.name.clone(),
                        error,
                    })?;
                acceptors.insert(l.name.clone(), sc);
            }
        }
        // TLS to the brokers: every cluster's material is loaded afresh too.
        let mut broker_tls = HashMap::new();
        for c in &cfg.clusters {
            let t = match &c.tls {
                Some(t) => Some(Arc::new(crate::broker_tls::client_config(t).map_err(
                    |error| ApplyError::BrokerTls {
                        cluster: c.name.clone(),
                        error,
                    },
                )?)),
                None => None,
            };
            broker_tls.insert(c.name.clone(), t);
        }
        let mut sockets = HashMap::new();
        for (name, bind) in &plan.listeners_bind {
            let bind_error = |error| ApplyError::Bind {
                listener: name.clone(),
                bind: *bind,
                error,
            };
            let inherited = lock(&shared.inherited).remove(bind);
            let sock = match inherited {
                Some(s) => s,
                None => listener::bind(*bind).map_err(bind_error)?,
            };
            let dup = sock.try_clone().map_err(bind_error)?;
            sockets.insert(name.clone(), (sock, dup));
        }
        Ok(Prepared {
            acceptors,
            broker_tls,
            sockets,
        })
    }

    /// Apply a plan whose fallible steps are done (`prepared`); cannot fail.
    fn commit(&self, cfg: Config, plan: crate::plan::Plan, mut prepared: Prepared) {
        let shared = &self.shared;
        // Clusters and nodes, reconciled by name.
        let mut clusters_now = HashMap::new();
        {
            let mut clusters = lock(&shared.clusters);
            for c in &cfg.clusters {
                let tls = prepared.broker_tls.remove(&c.name).flatten();
                let cluster = match clusters.get(&c.name) {
                    Some(existing) => {
                        existing.set_tls(tls);
                        let (added, _removed) = existing.reconfigure(c);
                        for n in added {
                            self.start_checks(existing, n);
                        }
                        existing.clone()
                    }
                    None => {
                        let cl = Arc::new(Cluster::with_feed(
                            c,
                            shared.metrics.clone(),
                            &shared.instance,
                            shared.changes.clone(),
                        ));
                        cl.set_tls(tls);
                        crate::orphans::spawn(
                            &self.shared.bg_tracker,
                            &cl,
                            self.shared.background.clone(),
                        );
                        for n in cl.nodes().iter() {
                            self.start_checks(&cl, n.clone());
                        }
                        clusters.insert(c.name.clone(), cl.clone());
                        cl
                    }
                };
                clusters_now.insert(c.name.clone(), cluster);
            }
            for name in &plan.clusters_removed {
                if let Some(c) = clusters.remove(name) {
                    tracing::info!(cluster = %name, "cluster removed");
                    c.retire();
                }
            }
        }

        let changed = plan.splice.is_some() || plan.max_connections.is_some();
        let splice_on = crate::fdlimit::configure_pipes(&shared.data.pipes, &cfg, changed);

        // Listeners: new sockets for those the plan binds, the others keep theirs.
        let mut listeners_now = HashMap::new();
        let mut to_start = Vec::new();
        {
            let mut slots = lock(&shared.slots);
            for l in &cfg.listeners {
                let Some(cluster) = clusters_now.get(&l.cluster).cloned() else {
                    continue; // validation guarantees the cluster exists
                };
                if let Some((sock, dup)) = prepared.sockets.remove(&l.name) {
                    let local_addr = sock.local_addr().unwrap_or(l.bind);
                    let mut old_active = None;
                    let closed = match slots.remove(&l.name) {
                        Some(old_slot) => {
                            tracing::info!(listener = %l.name, from = %old_slot.bind, to = %l.bind, "listener re-bound");
                            old_slot.stop_accept.cancel();
                            old_active = Some(old_slot.active);
                            old_slot.closed
                        }
                        None => {
                            tracing::info!(listener = %l.name, bind = %local_addr, tls = l.tls.is_some(), "listening");
                            // Relayed sessions wait on one scope (their node's, a child
                            // of this one) for listener removal and shutdown alike.
                            shared.hard_stop.child()
                        }
                    };
                    let stop_accept = CancellationToken::new();
                    let active = match &old_active {
                        Some(a) => a.clone(),
                        None => Arc::default(),
                    };
                    slots.insert(
                        l.name.clone(),
                        ListenerSlot {
                            bind: l.bind,
                            local_addr,
                            sock: Some(dup),
                            stop_accept: stop_accept.clone(),
                            closed,
                            active,
                        },
                    );
                    to_start.push((l.name.clone(), sock, stop_accept));
                }
                let Some(slot) = slots.get(&l.name) else {
                    continue;
                };
                shared.metrics.init_listener(&l.name, l.transport());
                // Large flows may be spliced between plain-TCP sockets only.
                let plain = l.tls.is_none() && l.websocket.is_none();
                let pipes = (splice_on && plain).then(|| shared.data.pipes.clone());
                listeners_now.insert(
                    l.name.clone(),
                    Arc::new(ListenerRt {
                        config: l.clone(),
                        tls: prepared
                            .acceptors
                            .remove(&l.name)
                            .map(ArcSwap::from_pointee),
                        cluster,
                        closed: slot.closed.clone(),
                        local_addr: slot.local_addr,
                        active: slot.active.clone(),
                        pipes,
                    }),
                );
            }
            for name in &plan.listeners_removed {
                if let Some(s) = slots.remove(name) {
                    tracing::info!(listener = %name, "listener removed; closing its sessions");
                    s.stop_accept.cancel();
                    s.closed.close();
                    shared.metrics.forget_listener(name, "");
                }
            }
        }

        // Limits and log level.
        if let Some(max) = plan.max_connections {
            self.resize_conn_limit(max);
        }
        if plan.threads_changed {
            tracing::warn!(
                running = shared.data.workers.len(),
                "limits.threads changed: it takes effect at the next start; the connection threads stay as they are"
            );
        }
        if let Some(level) = &plan.log_level {
            if let Some(f) = lock(&shared.log_level).as_ref() {
                f(level);
            }
        }
        // The access log's target and format, reopened at every reload (logrotate).
        shared
            .data
            .access
            .configure(&cfg.log.access, cfg.log.access_format);

        // Swap the view, then start accepting on new sockets.
        shared.data.set_runtime(Runtime {
            config: Arc::new(cfg),
            clusters: clusters_now,
            listeners: listeners_now,
        });
        shared
            .metrics
            .config_last_reload_success
            .set(crate::sticky::now_ms() as i64 / 1000);
        crate::peers::reconfigure(&self.host, &self.peers);
        for (i, (name, sock, stop)) in to_start.into_iter().enumerate() {
            // On a connection thread (the listeners spread over them), which then keeps
            // the connections of its turns without a hand-off; and on the connection
            // tracker, so that shutdown's wait cannot finish while an accept loop may
            // still hand over its last connections (they would be dropped when the
            // process exits: failed connects during a restart). The loop ends by itself
            // on `stop` or shutdown, after serving what the kernel had queued.
            let accept = listener::accept_loop(shared.data.clone(), name, sock, stop.clone());
            shared
                .data
                .workers
                .spawn_on(i, &shared.data.tracker, accept);
        }
    }

    fn start_checks(&self, cluster: &Arc<Cluster>, node: Arc<crate::cluster::Node>) {
        crate::health::spawn(
            &self.shared.bg_tracker,
            cluster.clone(),
            node,
            self.shared.metrics.clone(),
            self.shared.resolver.clone(),
            self.shared.background.clone(),
        );
    }

    /// Give `conn_limit` `want` permits in all: more at once, fewer as connections end.
    /// Exact for any `want` (clamped to what a semaphore holds), and never panics.
    fn resize_conn_limit(&self, want: usize) {
        let want = conn_permits(want);
        let have = self.shared.conn_limit_size.swap(want, Ordering::AcqRel);
        if want > have {
            self.shared.data.conn_limit.add_permits(want - have);
        } else if want < have {
            // Free permits go at once, those that connections hold as they end.
            let surplus = have - want;
            let mut left = surplus - self.shared.data.conn_limit.forget_permits(surplus);
            if left > 0 {
                let sem = self.shared.data.conn_limit.clone();
                tokio::spawn(async move {
                    // `acquire_many` counts in u32: take the rest in pieces.
                    while left > 0 {
                        let n = u32::try_from(left).unwrap_or(u32::MAX);
                        match sem.acquire_many(n).await {
                            Ok(p) => p.forget(),
                            Err(_) => return, // closed: nothing left to limit
                        }
                        left -= n as usize;
                    }
                });
            }
        }
    }

    /// Graceful shutdown (SPEC section 6): stop accepting, let sessions run for up to
    /// `shutdown_grace`, then close what is left.
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        let grace = shared.runtime().config.limits.shutdown_grace;
        for s in lock(&shared.slots).values_mut() {
            s.sock = None;
        }
        let data = &shared.data;
        data.stopping.cancel();
        data.tracker.close();
        let open = data.tracker.len();
        tracing::info!(open_connections = open, grace = ?grace, "shutting down: no new connections");
        crate::cluster::pacing::shutdown_paced(self.host.clusters_sorted(), &data.metrics, grace);
        if tokio::time::timeout(grace, data.tracker.wait())
            .await
            .is_err()
        {
            tracing::info!(
                open_connections = data.tracker.len(),
                "shutdown grace over; closing remaining sessions"
            );
            // MQTT 5 clients on the boundary-tracking relay are told 0x8B first.
            crate::cluster::pacing::set_shutting_down();
            shared.hard_stop.close();
            let _ = tokio::time::timeout(Duration::from_secs(5), data.tracker.wait()).await;
        }
        shared.background.cancel();
        shared.bg_tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.bg_tracker.wait()).await;
        crate::peers::save_snapshot(&self.host, &self.peers).await;
        data.stop();
        tracing::info!("stopped");
    }
}

/// What [`Gateway::prepare`] made: TLS configurations by listener and cluster, and the sockets
/// (and their second handles, for a successor process) of the listeners to bind.
struct Prepared {
    acceptors: HashMap<String, crate::tls::ServerTls>,
    /// Cluster name → its TLS to the brokers (`None`: plain TCP).
    broker_tls: HashMap<String, Option<Arc<crate::broker_tls::BrokerTls>>>,
    sockets: HashMap<String, (std::net::TcpListener, std::net::TcpListener)>,
}

impl Gateway {
    /// The handle the reload triggers get (file watch, SIGHUP, admin API).
    pub fn triggers(&self) -> crate::reload::Triggers {
        crate::reload::Triggers {
            reload: Arc::new(self.clone()),
            stop: self.shared.background.clone(),
            tracker: self.shared.bg_tracker.clone(),
        }
    }
}

impl crate::reload::Reload for Gateway {
    fn reload(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApplyError>> + Send + '_>>
    {
        Box::pin(Gateway::reload(self))
    }

    fn config_file(&self) -> std::path::PathBuf {
        self.shared.runtime().config.source.clone()
    }

    fn watched_files(&self) -> Vec<std::path::PathBuf> {
        let rt = self.shared.runtime();
        rt.config
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|t| t.crl.iter().cloned())
            .collect()
    }
}

/// `max_connections` as a permit count a tokio semaphore can hold (validation keeps it
/// far below the limit; a `Config` built in code may not).
fn conn_permits(max_connections: usize) -> usize {
    max_connections.min(Semaphore::MAX_PERMITS)
}

/// A future that turns a panic while it is polled into `Err` (the payload), like
/// `futures::FutureExt::catch_unwind`.
struct CatchUnwind<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    /// Config files whose next reload panics: `load_and_apply`'s test hook, keyed by
    /// file so that tests running side by side do not see each other's panics.
    static PANIC_ON: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    pub(super) fn maybe_panic(path: &Path) {
        let mut armed = lock(&PANIC_ON);
        if let Some(i) = armed.iter().position(|p| p == path) {
            armed.remove(i);
            drop(armed);
            panic!("injected reload panic (test)");
        }
    }

    fn config_text(max_connections: usize) -> String {
        format!(
            "[limits]\nmax_connections = {max_connections}\nshutdown_grace = \"0s\"\n\n\
             [[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\ncluster = \"brokers\"\n\n\
             [clusters.brokers]\nnodes = [ {{ name = \"n1\", address = \"127.0.0.1:1\" }} ]\n\
             [clusters.brokers.health]\ncheck = \"tcp\"\n"
        )
    }

    /// Save `text` the way an editor does (a temp file renamed over the config).
    fn save(path: &Path, text: &str) {
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).expect("write the temp config");
        std::fs::rename(&tmp, path).expect("rename it over the config");
    }

    async fn wait_for(what: &str, f: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < end, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Issue 23 item 8: a reload that panics is caught at the reload boundary, counted
    /// as a failed reload and changes nothing; the file watcher goes on, and the next
    /// good edit is applied (the connection limit resized exactly).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_reload_is_counted_and_the_watcher_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mqgate.toml");
        std::fs::write(&path, config_text(10)).expect("write config");
        let cfg = config::load(&path).expect("a valid config");
        let gw = Gateway::start(cfg).await.expect("start");
        crate::reload::watch(&gw.triggers());
        let count = |result: &str| {
            gw.shared
                .metrics
                .config_reloads
                .with_label_values(&[result])
                .get()
        };
        let max = || gw.shared.runtime().config.limits.max_connections;

        // Called directly: an error, not a panic.
        lock(&PANIC_ON).push(path.clone());
        match gw.reload().await {
            Err(ApplyError::Panic(m)) => assert!(m.contains("injected"), "{m}"),
            other => panic!("want ApplyError::Panic, got {other:?}"),
        }
        assert_eq!(count("error"), 1);

        // Through the watcher: counted, nothing changed, and the watcher still runs.
        lock(&PANIC_ON).push(path.clone());
        save(&path, &config_text(20));
        wait_for("the panicking reload counted as an error", || {
            count("error") == 2
        })
        .await;
        assert_eq!(
            max(),
            10,
            "a reload that panicked changed the configuration"
        );
        save(&path, &config_text(30));
        wait_for("the next edit applied by the watcher", || count("ok") == 1).await;
        assert_eq!(max(), 30);
        wait_for("30 connection permits", || {
            gw.shared.data.conn_limit.available_permits() == 30
        })
        .await;
        gw.shutdown().await;
    }
}
