//! Peers: keep the sticky tables of several mqgate instances equal (SPEC section 5), and
//! keep a single instance's table across restarts (the snapshot).
//!
//! Every instance listens on `[peers] bind`. Between two instances there is exactly one
//! link, opened by the one whose name sorts first (`gate-a` dials `gate-b`; `gate-b`
//! refuses a dial from `gate-c`, which must wait for `gate-b` to dial it). So two
//! instances never race to open duplicate links; if a peer reconnects while its old link
//! still looks alive, the newer link replaces the older. A link is authenticated
//! ([`auth`]), then each side sends its full table and every change after it
//! ([`link`]). Only changes made locally are sent on: the peers form a full mesh, and
//! every instance must list every other one.
//!
//! Changes reach the links in one hop: every sticky table of the gateway sends its
//! changes, tagged with the cluster name, into one bounded broadcast channel
//! (`crate::sticky::feed`, held by [`Host`]) that every link reads. No task sits in
//! between, and a gateway without peer links pays only a receiver-count check per
//! change.
//!
//! Life cycle: [`start`] (after the first apply) loads the snapshot, then starts the
//! service; [`reconfigure`] (after every later apply) starts, stops or adjusts it;
//! [`save_snapshot`] (at shutdown) writes the tables.

mod accept;
pub mod admission;
pub mod auth;
#[cfg(test)]
mod auth_downgrade;
mod dial;
pub mod discover;
pub mod frame;
pub mod link;
mod merger;
pub mod pull;
pub mod seal;
pub mod snapshot;

use crate::config::{PeerConfig, PeerDiscovery, PeersConfig, Secret};
use crate::host::Host;
use arc_swap::ArcSwap;
use link::{Change, FrameReader, LinkError};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

/// Bound on the whole handshake (TCP connect, TLS, HELLO/AUTH); for an inbound
/// connection, counted from its first byte (see [`admission`]).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Configured peers' addresses are resolved again this often (and on every reload).
const PEER_ADDRESSES_REFRESH: Duration = Duration::from_secs(60);
/// Reconnect backoff: doubles from the first value up to the second, with jitter.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Stream = Box<dyn Io>;

/// What handshakes read; swapped on reload.
struct Settings {
    own: Arc<str>,
    secret: Secret,
    peers: Vec<PeerConfig>,
    tls: Option<auth::PeerTls>,
    /// `[peers] discover` (accept any proven name from an address in its answer).
    discover: bool,
    discovery: Option<PeerDiscovery>,
}

/// The running peer service of one gateway.
struct Service {
    settings: Arc<ArcSwap<Settings>>,
    stop: CancellationToken,
    bind: SocketAddr,
    local_addr: SocketAddr,
    acceptor_stop: CancellationToken,
    dialers: HashMap<String, (String, CancellationToken)>,
    links: Arc<Links>,
    /// Which link the full table comes from ([`pull`]).
    pull: Arc<pull::Pull>,
    hub: broadcast::Sender<Change>,
    /// The configured peers' addresses (resolved), for [`admission`].
    peer_addresses: Arc<ArcSwap<HashSet<IpAddr>>>,
    /// Wakes the task that resolves them (after a reload).
    peers_changed: Arc<Notify>,
    /// The addresses in the current discovery answer ([`discover`]).
    discovered: Arc<ArcSwap<HashSet<IpAddr>>>,
    /// Wakes the discovery loop (reload, a failed discovered link, an unknown dialer).
    rediscover: Arc<Notify>,
    /// The peers listener's address (after binding).
    bound: Arc<ArcSwap<SocketAddr>>,
}

/// Held by the gateway beside [`Host`]: the service, once started.
#[derive(Default)]
pub struct PeersHandle {
    service: Mutex<Option<Service>>,
    started: std::sync::atomic::AtomicBool,
}

impl PeersHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Service>> {
        crate::sync::lock(&self.service)
    }

    /// The address the peer listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.lock().as_ref().map(|s| s.local_addr)
    }

    /// Names of peers with an established link.
    pub fn connected(&self) -> Vec<String> {
        let links = match self.lock().as_ref() {
            Some(s) => s.links.clone(),
            None => return Vec::new(),
        };
        let mut v: Vec<String> = links.lock().keys().cloned().collect();
        v.sort();
        v
    }
}

/// One established link: its id, what closes it, the peer's address.
type LinkEntry = (u64, CancellationToken, Option<IpAddr>);

/// The established link per peer name (a newer link replaces an older one).
#[derive(Default)]
struct Links {
    map: Mutex<HashMap<String, LinkEntry>>,
    next: AtomicU64,
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LinkEntry>> {
        crate::sync::lock(&self.map)
    }

    /// Record a new link; `None` if `exclusive` and the peer is linked already (a
    /// discovered address of a gateway linked through another one).
    fn register(
        &self,
        peer: &str,
        token: CancellationToken,
        remote: Option<IpAddr>,
        exclusive: bool,
    ) -> Option<u64> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut m = self.lock();
        if exclusive && m.contains_key(peer) {
            return None;
        }
        if let Some((_, old, _)) = m.insert(peer.to_string(), (id, token, remote)) {
            tracing::info!(peer, "peer reconnected; closing its previous link");
            old.cancel();
        }
        Some(id)
    }

    /// Close the links of peers that are neither configured nor at an address of the
    /// discovery answer.
    fn close_unlisted(&self, statics: &[PeerConfig], answer: &HashSet<IpAddr>) {
        for (name, (_, token, remote)) in self.lock().iter() {
            let listed = statics.iter().any(|p| &p.name == name)
                || remote.is_some_and(|ip| answer.contains(&ip));
            if !listed && !token.is_cancelled() {
                tracing::info!(peer = %name, "peer no longer configured nor discovered; closing its link");
                token.cancel();
            }
        }
    }

    /// Forget the link if it is still the current one; true if it was.
    fn unregister(&self, peer: &str, id: u64) -> bool {
        let mut m = self.lock();
        if m.get(peer).map(|(i, _, _)| *i == id).unwrap_or(false) {
            m.remove(peer);
            true
        } else {
            false
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    #[error("cannot bind the peers listener on {bind}: {source}")]
    Bind {
        bind: SocketAddr,
        source: std::io::Error,
    },
    #[error("[peers.tls]: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

impl PeersError {
    pub fn into_io(self) -> std::io::Error {
        match self {
            PeersError::Bind { source, .. } => source,
            e => std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        }
    }
}

/// Start-up: load the snapshot (before any link, so peers get it in their full sync),
/// then start the service per the current config.
pub async fn start(host: &Arc<Host>, handle: &PeersHandle) -> Result<(), PeersError> {
    if let Some(path) = host
        .runtime()
        .config
        .peers
        .as_ref()
        .and_then(|p| p.snapshot.clone())
    {
        snapshot::load(host, &path).await;
    }
    handle.started.store(true, Ordering::Release);
    apply(host, handle)
}

/// After a reload: start, stop or adjust the service. Errors are logged (the rest of
/// the new config is already in force).
pub fn reconfigure(host: &Arc<Host>, handle: &PeersHandle) {
    if !handle.started.load(Ordering::Acquire) {
        return;
    }
    if let Err(e) = apply(host, handle) {
        tracing::error!("peers: {e}; peer links keep their previous settings");
    }
}

/// Shutdown: write the snapshot if one is configured.
pub async fn save_snapshot(host: &Arc<Host>, handle: &PeersHandle) {
    if let Some(s) = handle.lock().take() {
        s.stop.cancel();
    }
    let Some(path) = host
        .runtime()
        .config
        .peers
        .as_ref()
        .and_then(|p| p.snapshot.clone())
    else {
        return;
    };
    snapshot::save(host, &path).await;
}

fn apply(host: &Arc<Host>, handle: &PeersHandle) -> Result<(), PeersError> {
    let cfg = host.runtime().config.peers.clone();
    let mut guard = handle.lock();
    let Some(cfg) = cfg else {
        if let Some(s) = guard.take() {
            tracing::info!("peers section removed; closing peer links");
            s.stop.cancel();
        }
        return Ok(());
    };
    if cfg.name != host.instance {
        tracing::warn!(
            running = %host.instance,
            configured = %cfg.name,
            "peers.name changed; the new name takes effect after a restart"
        );
    }
    let tls = cfg.tls.as_ref().map(auth::tls).transpose()?;
    let settings = Settings {
        own: Arc::from(host.instance.as_str()),
        secret: cfg.secret.clone(),
        peers: cfg.peers.clone(),
        tls,
        discover: cfg.discover.is_some(),
        discovery: cfg.discover.clone(),
    };
    let fresh = guard.is_none();
    if fresh {
        let hub = host.changes.clone();
        *guard = Some(Service {
            settings: Arc::new(ArcSwap::from_pointee(settings)),
            stop: host.background.child_token(),
            bind: cfg.bind,
            local_addr: cfg.bind,
            acceptor_stop: CancellationToken::new(),
            dialers: HashMap::new(),
            links: Arc::default(),
            pull: Arc::default(),
            hub,
            peer_addresses: Arc::default(),
            peers_changed: Arc::new(Notify::new()),
            discovered: Arc::default(),
            rediscover: Arc::new(Notify::new()),
            bound: Arc::new(ArcSwap::from_pointee(cfg.bind)),
        });
        if let Some(s) = guard.as_ref() {
            host.bg_tracker.spawn(resolve_peer_addresses(
                s.settings.clone(),
                s.peer_addresses.clone(),
                s.peers_changed.clone(),
                s.stop.clone(),
            ));
        }
    } else if let Some(s) = guard.as_mut() {
        s.settings.store(Arc::new(settings));
        s.peers_changed.notify_one();
        s.rediscover.notify_one();
    }
    if let Some(s) = guard.as_mut() {
        if fresh || s.bind != cfg.bind {
            if let Err(e) = rebind(host, s, &cfg) {
                if fresh {
                    *guard = None;
                }
                return Err(e);
            }
        }
    }
    let Some(s) = guard.as_mut() else {
        return Ok(());
    };
    reconcile_dialers(host, s, &cfg);
    if fresh {
        // After binding: the loop excludes the bound address from the answer.
        host.bg_tracker
            .spawn(discover::run(Ctx::new(host, s), s.stop.clone()));
    }
    Ok(())
}

fn rebind(host: &Arc<Host>, s: &mut Service, cfg: &PeersConfig) -> Result<(), PeersError> {
    let sock = crate::listener::bind(cfg.bind).map_err(|source| PeersError::Bind {
        bind: cfg.bind,
        source,
    })?;
    let local = sock.local_addr().unwrap_or(cfg.bind);
    let listener = tokio::net::TcpListener::from_std(sock).map_err(|source| PeersError::Bind {
        bind: cfg.bind,
        source,
    })?;
    s.acceptor_stop.cancel();
    s.acceptor_stop = s.stop.child_token();
    s.bind = cfg.bind;
    s.local_addr = local;
    s.bound.store(Arc::new(local));
    tracing::info!(bind = %local, name = %host.instance, "peers listening");
    let ctx = Ctx::new(host, s);
    let stop = s.acceptor_stop.clone();
    host.bg_tracker
        .spawn(accept::accept_loop(ctx, listener, stop));
    Ok(())
}

fn reconcile_dialers(host: &Arc<Host>, s: &mut Service, cfg: &PeersConfig) {
    let own = host.instance.as_str();
    let want: HashMap<&str, &str> = cfg
        .peers
        .iter()
        .filter(|p| own < p.name.as_str())
        .map(|p| (p.name.as_str(), p.address.as_str()))
        .collect();
    s.dialers.retain(|name, (addr, stop)| {
        let keep = want.get(name.as_str()) == Some(&addr.as_str());
        if !keep {
            stop.cancel();
        }
        keep
    });
    // Links to peers that are no longer configured at all close too (with discovery,
    // the discovery loop decides, after its next lookup).
    let links = s.links.lock();
    for (name, (_, token, _)) in links.iter() {
        if cfg.discover.is_none() && !cfg.peers.iter().any(|p| &p.name == name) {
            tracing::info!(peer = %name, "peer removed from the config; closing its link");
            token.cancel();
        }
    }
    // Discovered peers stay listed while linked (added at link-up, `Ctx::serve`).
    let linked: HashSet<String> = links.keys().cloned().collect();
    drop(links);
    host.peer_board
        .retain(|name| cfg.peers.iter().any(|p| p.name == name) || linked.contains(name));
    for p in &cfg.peers {
        let stats = crate::host::PeerStats::new(&host.metrics, &p.name, p.address.clone());
        host.peer_board.set(&p.name, stats);
        for reason in ["unknown_cluster", "unknown_node"] {
            host.metrics
                .peer_updates_dropped
                .with_label_values(&[&p.name, reason]);
        }
        for reason in ["mac", "malformed"] {
            host.metrics
                .peer_frames_rejected
                .with_label_values(&[&p.name, reason]);
        }
    }
    for (name, addr) in want {
        if s.dialers.contains_key(name) {
            continue;
        }
        let stop = s.stop.child_token();
        s.dialers
            .insert(name.to_string(), (addr.to_string(), stop.clone()));
        let ctx = Ctx::new(host, s);
        host.bg_tracker.spawn(dial::dial_loop(
            ctx,
            Some(Arc::from(name)),
            addr.to_string(),
            stop,
        ));
    }
}

/// Keep `out` equal to the configured peers' addresses: at start, after each reload
/// (`changed`) and every [`PEER_ADDRESSES_REFRESH`] (DNS names may move).
async fn resolve_peer_addresses(
    settings: Arc<ArcSwap<Settings>>,
    out: Arc<ArcSwap<HashSet<IpAddr>>>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        let peers = settings.load().peers.clone();
        let resolved = tokio::select! {
            r = admission::peer_addresses(&peers) => r,
            _ = stop.cancelled() => return,
        };
        out.store(Arc::new(resolved));
        tokio::select! {
            _ = tokio::time::sleep(PEER_ADDRESSES_REFRESH) => {}
            _ = changed.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// An established link's place in [`Links`] and `mqgate_peer_up`, given up when the
/// link ends or its task is dropped.
struct Registered {
    links: Arc<Links>,
    pull: Arc<pull::Pull>,
    peer: Arc<str>,
    id: u64,
    up: prometheus::IntGauge,
    /// A discovered peer (not configured): listed on the status board while linked.
    listed: Option<Arc<Host>>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.pull.link_down(self.id);
        if self.links.unregister(&self.peer, self.id) {
            // Off the board first, so that whoever sees `mqgate_peer_up` 0 sees it gone.
            if let Some(host) = &self.listed {
                host.peer_board.remove(&self.peer);
            }
            self.up.set(0);
        }
    }
}

/// What a link task needs from the service.
#[derive(Clone)]
struct Ctx {
    host: Arc<Host>,
    settings: Arc<ArcSwap<Settings>>,
    links: Arc<Links>,
    pull: Arc<pull::Pull>,
    hub: broadcast::Sender<Change>,
    stop: CancellationToken,
    peer_addresses: Arc<ArcSwap<HashSet<IpAddr>>>,
    discovered: Arc<ArcSwap<HashSet<IpAddr>>>,
    rediscover: Arc<Notify>,
    bound: Arc<ArcSwap<SocketAddr>>,
    /// Where dials come from (the bind address, unless unspecified).
    local_ip: Option<IpAddr>,
}

impl Ctx {
    fn new(host: &Arc<Host>, s: &Service) -> Ctx {
        Ctx {
            host: host.clone(),
            settings: s.settings.clone(),
            links: s.links.clone(),
            pull: s.pull.clone(),
            hub: s.hub.clone(),
            stop: s.stop.clone(),
            peer_addresses: s.peer_addresses.clone(),
            discovered: s.discovered.clone(),
            rediscover: s.rediscover.clone(),
            bound: s.bound.clone(),
            local_ip: Some(s.bind.ip()).filter(|ip| !ip.is_unspecified()),
        }
    }

    fn bound(&self) -> SocketAddr {
        **self.bound.load()
    }

    /// Run an authenticated link until it ends; keeps `mqgate_peer_up` true.
    /// `sealing`: the frame keys of a link without TLS; `remote`: the peer's address;
    /// `exclusive`: fail with [`LinkError::Duplicate`] if the peer is linked already.
    #[allow(clippy::too_many_arguments)] // the halves and facts of one handshake
    async fn serve<R, W>(
        &self,
        peer: Arc<str>,
        remote: Option<IpAddr>,
        r: FrameReader<R>,
        w: W,
        sealing: Option<auth::FrameKeys>,
        version: u16,
        exclusive: bool,
    ) -> Result<(), LinkError>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let token = self.stop.child_token();
        let remote = remote.map(|ip| ip.to_canonical());
        let Some(id) = self.links.register(&peer, token.clone(), remote, exclusive) else {
            return Err(LinkError::Duplicate);
        };
        let up = self.host.metrics.peer_up.with_label_values(&[&peer]);
        up.set(1);
        tracing::info!(peer = %peer, "peer link established");
        // A discovered peer is not on the status board yet (it lists configured ones):
        // listed while this link lives, by the address it linked from.
        let configured = self.settings.load().peers.iter().any(|p| *p.name == *peer);
        let listed = (!configured).then(|| {
            self.host.peer_board.add_if_absent(&peer, || {
                let address = remote.map_or_else(|| "discovered".to_string(), |ip| ip.to_string());
                crate::host::PeerStats::new(&self.host.metrics, &peer, address)
            });
            self.host.clone()
        });
        // Also when this future is dropped (its dialer stopped: peer removed).
        let _registered = Registered {
            links: self.links.clone(),
            pull: self.pull.clone(),
            peer: peer.clone(),
            id,
            up,
            listed,
        };
        let pulling = link::Pulling {
            pull: self.pull.clone(),
            id,
            on_request: version >= 3,
        };
        link::run(
            self.host.clone(),
            self.hub.clone(),
            peer.clone(),
            r,
            w,
            sealing,
            pulling,
            token,
        )
        .await
    }
}

fn log_link_end(peer: &str, e: &LinkError) {
    match e {
        LinkError::Closed | LinkError::Io(_) => {
            tracing::info!(peer, "peer link closed: {e}")
        }
        _ => tracing::warn!(peer, "peer link closed: {e}"),
    }
}
