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
//! Changes reach the links through one hub per gateway: a forwarder task per cluster
//! copies the table's change feed (tagged with the cluster name) into a bounded broadcast
//! channel that every link reads.
//!
//! Life cycle: [`start`] (after the first apply) loads the snapshot, then starts the
//! service; [`reconfigure`] (after every later apply) starts, stops or adjusts it;
//! [`save_snapshot`] (at shutdown) writes the tables.

pub mod admission;
pub mod auth;
pub mod frame;
pub mod link;
pub mod seal;
pub mod snapshot;

use crate::cluster::Cluster;
use crate::config::{PeerConfig, PeersConfig, Secret};
use crate::host::Host;
use arc_swap::ArcSwap;
use link::{Change, FrameReader, LinkError};
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
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
/// Changes buffered in the hub; a link further behind resyncs.
const HUB_CAPACITY: usize = 16 * 1024;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Stream = Box<dyn Io>;

/// What handshakes read; swapped on reload.
struct Settings {
    own: Arc<str>,
    secret: Secret,
    peers: Vec<PeerConfig>,
    tls: Option<auth::PeerTls>,
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
    hub: broadcast::Sender<Change>,
    forwarders: HashMap<String, Weak<Cluster>>,
    /// The configured peers' addresses (resolved), for [`admission`].
    peer_addresses: Arc<ArcSwap<HashSet<IpAddr>>>,
    /// Wakes the task that resolves them (after a reload).
    peers_changed: Arc<Notify>,
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

/// The established link per peer name (a newer link replaces an older one).
#[derive(Default)]
struct Links {
    map: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next: AtomicU64,
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, CancellationToken)>> {
        crate::sync::lock(&self.map)
    }

    fn register(&self, peer: &str, token: CancellationToken) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some((_, old)) = self.lock().insert(peer.to_string(), (id, token)) {
            tracing::info!(peer, "peer reconnected; closing its previous link");
            old.cancel();
        }
        id
    }

    /// Forget the link if it is still the current one; true if it was.
    fn unregister(&self, peer: &str, id: u64) -> bool {
        let mut m = self.lock();
        if m.get(peer).map(|(i, _)| *i == id).unwrap_or(false) {
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
    };
    let fresh = guard.is_none();
    if fresh {
        let (hub, _) = broadcast::channel(HUB_CAPACITY);
        *guard = Some(Service {
            settings: Arc::new(ArcSwap::from_pointee(settings)),
            stop: host.background.child_token(),
            bind: cfg.bind,
            local_addr: cfg.bind,
            acceptor_stop: CancellationToken::new(),
            dialers: HashMap::new(),
            links: Arc::default(),
            hub,
            forwarders: HashMap::new(),
            peer_addresses: Arc::default(),
            peers_changed: Arc::new(Notify::new()),
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
    ensure_forwarders(host, s);
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
    tracing::info!(bind = %local, name = %host.instance, "peers listening");
    let ctx = Ctx::new(host, s);
    let stop = s.acceptor_stop.clone();
    host.bg_tracker.spawn(accept_loop(ctx, listener, stop));
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
    // Links to peers that are no longer configured at all close too.
    let links = s.links.lock();
    for (name, (_, token)) in links.iter() {
        if !cfg.peers.iter().any(|p| &p.name == name) {
            tracing::info!(peer = %name, "peer removed from the config; closing its link");
            token.cancel();
        }
    }
    drop(links);
    host.peer_board
        .retain(|name| cfg.peers.iter().any(|p| p.name == name));
    for p in &cfg.peers {
        let updates = |dir: &str| host.metrics.peer_updates.with_label_values(&[&p.name, dir]);
        let stats = crate::host::PeerStats {
            address: p.address.clone(),
            up: host.metrics.peer_up.with_label_values(&[&p.name]),
            sent: updates("sent"),
            received: updates("received"),
        };
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
        host.bg_tracker
            .spawn(dial_loop(ctx, Arc::from(name), addr.to_string(), stop));
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

/// Copy each cluster's change feed into the hub, tagged with the cluster name.
fn ensure_forwarders(host: &Arc<Host>, s: &mut Service) {
    let clusters = host.runtime().clusters.clone();
    s.forwarders
        .retain(|name, w| clusters.contains_key(name) && w.strong_count() > 0);
    for (name, c) in clusters {
        let same = s
            .forwarders
            .get(&name)
            .map(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&c)))
            .unwrap_or(false);
        if same {
            continue;
        }
        s.forwarders.insert(name.clone(), Arc::downgrade(&c));
        let mut rx = c.sticky.subscribe();
        let hub = s.hub.clone();
        let stop = s.stop.clone();
        let name: Arc<str> = Arc::from(name.as_str());
        host.bg_tracker.spawn(async move {
            loop {
                let r = tokio::select! {
                    r = rx.recv() => r,
                    _ = stop.cancelled() => return,
                };
                match r {
                    Ok(u) => {
                        let _ = hub.send((name.clone(), u));
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // Cannot happen in practice (this task only copies); links
                        // that miss changes catch up at their next full sync.
                        tracing::warn!(cluster = %name, missed = n, "peer change feed overflowed");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
}

/// What a link task needs from the service.
#[derive(Clone)]
struct Ctx {
    host: Arc<Host>,
    settings: Arc<ArcSwap<Settings>>,
    links: Arc<Links>,
    hub: broadcast::Sender<Change>,
    stop: CancellationToken,
    peer_addresses: Arc<ArcSwap<HashSet<IpAddr>>>,
}

impl Ctx {
    fn new(host: &Arc<Host>, s: &Service) -> Ctx {
        Ctx {
            host: host.clone(),
            settings: s.settings.clone(),
            links: s.links.clone(),
            hub: s.hub.clone(),
            stop: s.stop.clone(),
            peer_addresses: s.peer_addresses.clone(),
        }
    }

    /// Run an authenticated link until it ends; keeps `mqgate_peer_up` true.
    /// `sealing`: the frame keys of a link without TLS.
    async fn serve<R, W>(
        &self,
        peer: Arc<str>,
        r: FrameReader<R>,
        w: W,
        sealing: Option<auth::FrameKeys>,
    ) -> Result<(), LinkError>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let token = self.stop.child_token();
        let id = self.links.register(&peer, token.clone());
        let up = self.host.metrics.peer_up.with_label_values(&[&peer]);
        up.set(1);
        tracing::info!(peer = %peer, "peer link established");
        let result = link::run(
            self.host.clone(),
            self.hub.clone(),
            peer.clone(),
            r,
            w,
            sealing,
            token,
        )
        .await;
        if self.links.unregister(&peer, id) {
            up.set(0);
        }
        result
    }
}

async fn accept_loop(ctx: Ctx, listener: tokio::net::TcpListener, stop: CancellationToken) {
    let admission = admission::Admission::new(admission::Limits::DEFAULT);
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("peers accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let waiting = admission.arrive();
        let admission = admission.clone();
        let ctx = ctx.clone();
        let tracker = ctx.host.bg_tracker.clone();
        tracker.spawn(async move {
            // The first byte, without holding a handshake slot.
            let mut first = [0u8; 1];
            let got = tokio::select! {
                r = tokio::time::timeout(admission::FIRST_BYTE_TIMEOUT, tcp.peek(&mut first)) => r,
                _ = waiting.evicted() => {
                    tracing::debug!(%addr, "peers port: closed a connection that had sent nothing, to make room");
                    return;
                }
            };
            drop(waiting);
            match got {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return, // closed, or failed, before sending anything
                Err(_) => {
                    tracing::debug!(%addr, "peers port: nothing received within {:?}; closed", admission::FIRST_BYTE_TIMEOUT);
                    return;
                }
            }
            let source = addr.ip().to_canonical();
            let peer_address = ctx.peer_addresses.load().contains(&source);
            let Some(slot) = admission.handshake(source, peer_address) else {
                tracing::debug!(%addr, "too many peer handshakes in progress; connection dropped");
                return;
            };
            let settings = ctx.settings.load_full();
            let hs = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_one(&settings, tcp)).await;
            drop(slot);
            let (peer, (r, w, sealing)) = match hs {
                Ok(Ok(x)) => x,
                Ok(Err(e @ LinkError::Auth(_))) => {
                    tracing::warn!(%addr, "peer refused: {e}");
                    return;
                }
                Ok(Err(e @ LinkError::Frame(_))) => {
                    tracing::warn!(%addr, "peer connection refused: {e}");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(%addr, "peer handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "peer handshake timed out");
                    return;
                }
            };
            let peer: Arc<str> = Arc::from(peer.as_str());
            if let Err(e) = ctx.serve(peer.clone(), r, w, sealing).await {
                log_link_end(&peer, &e);
            }
        });
    }
}

type Halves = (
    FrameReader<tokio::io::ReadHalf<Stream>>,
    tokio::io::WriteHalf<Stream>,
    Option<auth::FrameKeys>,
);

/// The end-entity certificate the other side presented, as DER.
fn peer_certificate(c: &rustls::CommonState) -> Option<&[u8]> {
    c.peer_certificates()
        .and_then(|certs| certs.first())
        .map(|c| c.as_ref())
}

async fn accept_one(
    settings: &Settings,
    tcp: tokio::net::TcpStream,
) -> Result<(String, Halves), LinkError> {
    let (stream, cert, binding): (Stream, Option<Vec<u8>>, Option<[u8; 32]>) = match &settings.tls {
        Some(t) => {
            let s = t
                .acceptor
                .accept(tcp)
                .await
                .map_err(|e| LinkError::Auth(format!("TLS handshake failed: {e}")))?;
            let conn = s.get_ref().1;
            let cert = peer_certificate(conn).map(<[u8]>::to_vec);
            let binding = auth::tls_binding(conn.export_keying_material(
                [0u8; 32],
                auth::TLS_EXPORTER_LABEL,
                None,
            ))?;
            (Box::new(s), cert, Some(binding))
        }
        None => (Box::new(tcp), None, None),
    };
    let keys = auth::Keys::new(&settings.secret, binding)?;
    let tls = settings.tls.is_some();
    let (r, mut w) = tokio::io::split(stream);
    let mut r = FrameReader::new(r);
    let own = settings.own.clone();
    // Decided before AUTH, told after it (uniformly, unless the dialer proved itself).
    let judge = |name: &str| -> auth::Claim {
        if !settings.peers.iter().any(|p| p.name == name) {
            return auth::Claim::Denied(format!("`{name}` is not a configured peer of `{own}`"));
        }
        if tls
            && !cert
                .as_deref()
                .is_some_and(|c| auth::certificate_names(c, name))
        {
            return auth::Claim::Denied(format!(
                "the certificate presented for `{name}` does not name it (a subjectAltName \
                 DNS entry `{name}` is required)"
            ));
        }
        if name > &*own {
            return auth::Claim::WrongWay(format!(
                "`{own}` dials `{name}`, not the other way round (the name that sorts first dials)"
            ));
        }
        auth::Claim::Ok
    };
    let (name, sealing) = auth::accept(&mut r, &mut w, &settings.own, judge, &keys, !tls).await?;
    Ok((name, (r, w, sealing)))
}

async fn dial_one(settings: &Settings, peer: &str, addr: &str) -> Result<Halves, LinkError> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let (stream, binding): (Stream, Option<[u8; 32]>) = match &settings.tls {
        Some(t) => {
            // The acceptor's certificate must name the peer dialed, as ours must name us.
            let name = rustls::pki_types::ServerName::try_from(peer.to_string()).map_err(|e| {
                LinkError::Auth(format!(
                    "peer name `{peer}` cannot be named by a certificate: {e}"
                ))
            })?;
            let s = t
                .connector
                .connect(name, tcp)
                .await
                .map_err(|e| LinkError::Auth(format!("TLS handshake failed: {e}")))?;
            let conn = s.get_ref().1;
            if !peer_certificate(conn).is_some_and(|c| auth::certificate_names(c, peer)) {
                return Err(LinkError::Auth(format!(
                    "the certificate of `{addr}` does not name `{peer}` (a subjectAltName DNS \
                     entry `{peer}` is required)"
                )));
            }
            let binding = auth::tls_binding(conn.export_keying_material(
                [0u8; 32],
                auth::TLS_EXPORTER_LABEL,
                None,
            ))?;
            (Box::new(s), Some(binding))
        }
        None => (Box::new(tcp), None),
    };
    let keys = auth::Keys::new(&settings.secret, binding)?;
    let (r, mut w) = tokio::io::split(stream);
    let mut r = FrameReader::new(r);
    let sealing = auth::dial(
        &mut r,
        &mut w,
        &settings.own,
        peer,
        &keys,
        settings.tls.is_none(),
    )
    .await?;
    Ok((r, w, sealing))
}

async fn dial_loop(ctx: Ctx, peer: Arc<str>, addr: String, stop: CancellationToken) {
    let mut attempt: u32 = 0;
    let mut failing_logged = false;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let started = Instant::now();
        let settings = ctx.settings.load_full();
        let dialed = tokio::select! {
            r = tokio::time::timeout(HANDSHAKE_TIMEOUT, dial_one(&settings, &peer, &addr)) => r,
            _ = stop.cancelled() => return,
        };
        match dialed {
            Ok(Ok((r, w, sealing))) => {
                failing_logged = false;
                let served = tokio::select! {
                    r = ctx.serve(peer.clone(), r, w, sealing) => r,
                    _ = stop.cancelled() => Ok(()),
                };
                if let Err(e) = served {
                    log_link_end(&peer, &e);
                }
            }
            Ok(Err(e)) => {
                let loud = matches!(
                    e,
                    LinkError::Auth(_) | LinkError::Refused(_) | LinkError::Frame(_)
                );
                if loud {
                    tracing::warn!(peer = %peer, %addr, "cannot link to peer: {e}");
                } else if !failing_logged {
                    tracing::info!(peer = %peer, %addr, "cannot reach peer (retrying): {e}");
                } else {
                    tracing::debug!(peer = %peer, %addr, "cannot reach peer: {e}");
                }
                failing_logged = true;
            }
            Err(_) => {
                tracing::debug!(peer = %peer, %addr, "peer handshake timed out");
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            attempt = 0;
        }
        let backoff = BACKOFF_MIN
            .saturating_mul(1u32 << attempt.min(16))
            .min(BACKOFF_MAX);
        attempt = attempt.saturating_add(1);
        let jittered = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
        tokio::select! {
            _ = tokio::time::sleep(jittered) => {}
            _ = stop.cancelled() => return,
        }
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
