//! One live session per client id across the gateways of a cluster
//! (`[clusters.X.sessions] single_live`).
//!
//! A connection becomes *live* when its broker accepts it (CONNACK 0): the gateway
//! stamps it (wall clock, microseconds), remembers it here and announces it to its
//! peers (`LIVE` frames, `crate::peers::frame`). An id has one newest stamp in the
//! mesh; a gateway that holds an older live connection with that id, on any node
//! (on the same node the broker's takeover closes it too), closes it: MQTT 5 clients
//! first get DISCONNECT 0x8E "session taken over" at a packet boundary
//! (`crate::relay::polite`), 3.x clients a plain close.
//!
//! Damping: every time an id goes live from another source address than the one it
//! was last live from (as this gateway saw it, locally or from a peer) is a takeover;
//! more than `takeover_limit` of them within `takeover_window` put the id in hold-down
//! for `takeover_holddown`: new connections with it are refused (CONNACK 0x85 / 0x02,
//! reject reason `id_fight`). The connection live at that moment stays.
//!
//! Fan-out sessions (`crate::fanout`) take part too, and on one gateway always: with
//! `single_live` off their handles are *local* — going live closes an older fan-out
//! session with the id on this gateway, nothing is announced, no takeover is damped.
//! A fan-out session also *claims* its id while it connects to the nodes (before it
//! goes live): the nodes' takeovers then close the older session's node connections,
//! and the older session, seeing the claim, waits for the newer one instead of
//! reconnecting them ([`LiveHandle::contended`]).
//!
//! Memory: one entry per live connection of this gateway, plus the last live address
//! of ids seen within the window and the ids fighting; both pruned as they age.

use crate::config::SingleLiveConfig;
use crate::sessions::SessionScope;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// A connection that went live on this gateway, for peer links.
#[derive(Debug, Clone)]
pub struct LiveChange {
    pub cluster: Arc<str>,
    pub id: Arc<str>,
    pub stamp: u64,
    pub addr: Arc<str>,
}

/// The process's live announcements, for peer links.
pub fn changes() -> &'static broadcast::Sender<LiveChange> {
    static CHANGES: std::sync::OnceLock<broadcast::Sender<LiveChange>> = std::sync::OnceLock::new();
    CHANGES.get_or_init(|| broadcast::channel(4096).0)
}

/// Log a connection refused because its id is in hold-down.
pub fn log_held(cluster: &str, id: &str, last: &str, addr: IpAddr) {
    tracing::debug!(
        cluster,
        client_id = id,
        addresses = format!("{last} and {addr}"),
        reason = "id_fight",
        "refused: client id in hold-down after an id fight"
    );
}

/// Wall-clock microseconds since the epoch.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

struct Local {
    token: u64,
    stamp: u64,
    addr: Arc<str>,
    scope: SessionScope,
    taken: Arc<AtomicBool>,
}

struct Last {
    stamp: u64,
    addr: Arc<str>,
    seen: Instant,
}

#[derive(Default)]
struct Fight {
    times: VecDeque<Instant>,
    held_until: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    local: HashMap<Arc<str>, Local>,
    last: HashMap<Arc<str>, Last>,
    fights: HashMap<Arc<str>, Fight>,
    /// Fan-out sessions setting up, per id ([`LiveHandle::claim`]).
    claims: HashMap<Arc<str>, usize>,
    next_token: u64,
    last_stamp: u64,
    swept: Option<Instant>,
}

/// The live ids of one cluster.
pub struct LiveIds {
    cluster: Arc<str>,
    inner: Mutex<Inner>,
    /// `mqgate_session_takeovers_total{cluster}`.
    takeovers: prometheus::IntCounter,
    /// `mqgate_session_id_holddowns_total{cluster}`.
    holddowns: prometheus::IntCounter,
}

/// What a connection needs to go live and to be closed when taken over.
pub struct LiveHandle {
    ids: Arc<LiveIds>,
    id: Arc<str>,
    addr: Arc<str>,
    scope: SessionScope,
    taken: Arc<AtomicBool>,
    token: Option<u64>,
    /// Holds a claim on the id ([`LiveHandle::claim`]).
    claimed: bool,
    cfg: SingleLiveConfig,
}

impl LiveHandle {
    /// The broker accepted the connection: it is the id's live one now.
    pub fn activate(&mut self) {
        if self.token.is_none() {
            self.token = Some(self.ids.activate(self));
        }
        // After the older connection was closed: it sees the claim or the close.
        self.unclaim();
    }

    /// The connection is being set up and will take the id over if it succeeds
    /// (fan-out sessions, while they connect to the nodes); see the module comment.
    pub fn claim(&mut self) {
        if !self.claimed {
            self.claimed = true;
            *self.ids.lock().claims.entry(self.id.clone()).or_default() += 1;
        }
    }

    /// The set-up ended (went live, or failed): the claim is dropped.
    pub fn unclaim(&mut self) {
        if std::mem::take(&mut self.claimed) {
            let mut g = self.ids.lock();
            if let Some(n) = g.claims.get_mut(&self.id) {
                *n -= 1;
                if *n == 0 {
                    g.claims.remove(&self.id);
                }
            }
        }
    }

    /// Is another connection with this id being set up on this gateway (a claim
    /// other than this handle's own)?
    pub fn contended(&self) -> bool {
        let own = usize::from(self.claimed);
        self.ids
            .lock()
            .claims
            .get(&self.id)
            .is_some_and(|n| *n > own)
    }

    /// Closed because a newer connection with its id went live.
    pub fn taken_over(&self) -> bool {
        self.taken.load(Ordering::Relaxed)
    }

    /// The connection waits on `scope` from now on (its lane was closed by a hash
    /// rebalance and it stays): a takeover closes that one.
    pub fn rescope(&mut self, scope: SessionScope) {
        self.scope = scope;
        if let Some(token) = self.token {
            let mut g = self.ids.lock();
            if let Some(l) = g.local.get_mut(&self.id).filter(|l| l.token == token) {
                l.scope = self.scope.clone();
            }
        }
    }
}

impl Drop for LiveHandle {
    fn drop(&mut self) {
        self.unclaim();
        if let Some(token) = self.token {
            self.ids.release(&self.id, token);
        }
    }
}

impl LiveIds {
    pub fn new(cluster: &str, metrics: &crate::metrics::Metrics) -> Self {
        Self {
            cluster: cluster.into(),
            inner: Mutex::default(),
            takeovers: metrics.session_takeovers.with_label_values(&[cluster]),
            holddowns: metrics.session_id_holddowns.with_label_values(&[cluster]),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Is `id` in hold-down? Returns the two addresses of its fight (last live, new).
    pub fn held(&self, id: &str) -> Option<Arc<str>> {
        let now = Instant::now();
        let g = self.lock();
        let f = g.fights.get(id)?;
        f.held_until.filter(|u| *u > now)?;
        Some(
            g.last
                .get(id)
                .map(|l| l.addr.clone())
                .unwrap_or_else(|| "".into()),
        )
    }

    /// A handle for a connection with `id` from `addr`, closed through `scope`;
    /// `cfg.enabled` false: a local handle (see the module comment).
    pub fn handle(
        self: &Arc<Self>,
        id: &str,
        addr: IpAddr,
        scope: SessionScope,
        cfg: SingleLiveConfig,
    ) -> LiveHandle {
        LiveHandle {
            ids: self.clone(),
            id: id.into(),
            addr: addr.to_string().into(),
            scope,
            taken: Arc::new(AtomicBool::new(false)),
            token: None,
            claimed: false,
            cfg,
        }
    }

    fn activate(&self, h: &LiveHandle) -> u64 {
        let mut g = self.lock();
        // Newer than anything seen for this id, even from a peer whose clock is ahead:
        // this connection is the id's newest as far as this gateway knows.
        let seen = g.last.get(&h.id).map_or(0, |l| l.stamp);
        let stamp = now_us().max(g.last_stamp + 1).max(seen.saturating_add(1));
        g.last_stamp = stamp;
        g.next_token += 1;
        let token = g.next_token;
        if h.cfg.enabled {
            self.seen(&mut g, &h.id, stamp, &h.addr, h.cfg);
        }
        let old = g.local.insert(
            h.id.clone(),
            Local {
                token,
                stamp,
                addr: h.addr.clone(),
                scope: h.scope.clone(),
                taken: h.taken.clone(),
            },
        );
        if let Some(old) = old {
            self.close(&h.id, &old, &h.addr, "this gateway");
        }
        drop(g);
        if !h.cfg.enabled {
            return token;
        }
        let _ = changes().send(LiveChange {
            cluster: self.cluster.clone(),
            id: h.id.clone(),
            stamp,
            addr: h.addr.clone(),
        });
        token
    }

    /// A peer announced that `id` went live there at `stamp`, from `addr`.
    pub fn remote(&self, id: &str, stamp: u64, addr: &str, peer: &str, cfg: SingleLiveConfig) {
        let mut g = self.lock();
        let id: Arc<str> = id.into();
        let addr: Arc<str> = addr.into();
        self.seen(&mut g, &id, stamp, &addr, cfg);
        let older = g
            .local
            .get(&id)
            .is_some_and(|l| (l.stamp, &*l.addr) < (stamp, &*addr));
        if older {
            if let Some(old) = g.local.remove(&id) {
                self.close(&id, &old, &addr, peer);
            }
        }
    }

    /// Close an older live connection of `id`.
    fn close(&self, id: &str, old: &Local, new_addr: &str, where_: &str) {
        tracing::info!(
            cluster = &*self.cluster,
            client_id = id,
            old = &*old.addr,
            new = new_addr,
            live_at = where_,
            "client id taken over by a newer connection; closing the older one"
        );
        self.takeovers.inc();
        old.taken.store(true, Ordering::Relaxed);
        old.scope.close();
    }

    /// Record that `id` went live at `stamp` from `addr`; count a takeover from
    /// another address and start a hold-down past the limit.
    fn seen(
        &self,
        g: &mut Inner,
        id: &Arc<str>,
        stamp: u64,
        addr: &Arc<str>,
        cfg: SingleLiveConfig,
    ) {
        let now = Instant::now();
        self.sweep(g, now, cfg);
        let prev = g.last.get(id).map(|l| (l.stamp, l.addr.clone()));
        if prev.as_ref().is_some_and(|(s, _)| *s > stamp) {
            return; // an older announcement arriving late
        }
        g.last.insert(
            id.clone(),
            Last {
                stamp,
                addr: addr.clone(),
                seen: now,
            },
        );
        let Some((_, prev_addr)) = prev.filter(|(_, a)| a != addr) else {
            return;
        };
        let f = g.fights.entry(id.clone()).or_default();
        f.times.push_back(now);
        while f
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) > cfg.window)
        {
            f.times.pop_front();
        }
        if f.times.len() > cfg.limit as usize && f.held_until.is_none_or(|u| u <= now) {
            f.held_until = Some(now + cfg.holddown);
            self.holddowns.inc();
            tracing::warn!(
                cluster = &*self.cluster,
                client_id = &**id,
                addresses = format!("{prev_addr} and {addr}"),
                takeovers = f.times.len(),
                window = ?cfg.window,
                holddown = ?cfg.holddown,
                "client id fight: taken over too often from different addresses; new connections with it are refused for the hold-down"
            );
        }
    }

    /// Forget what aged out (at most once per window).
    fn sweep(&self, g: &mut Inner, now: Instant, cfg: SingleLiveConfig) {
        if g.swept.is_some_and(|s| now.duration_since(s) < cfg.window) {
            return;
        }
        g.swept = Some(now);
        let keep = cfg.window.max(Duration::from_secs(1));
        let Inner {
            local,
            last,
            fights,
            ..
        } = g;
        last.retain(|id, l| local.contains_key(id) || now.duration_since(l.seen) <= keep);
        fights.retain(|_, f| {
            f.held_until.is_some_and(|u| u > now)
                || f.times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) <= keep)
        });
    }

    fn release(&self, id: &str, token: u64) {
        let mut g = self.lock();
        if g.local.get(id).is_some_and(|l| l.token == token) {
            g.local.remove(id);
        }
    }

    /// This gateway's live connections, for a peer link that just came up.
    pub fn export(&self) -> Vec<(Arc<str>, u64, Arc<str>)> {
        let g = self.lock();
        g.local
            .iter()
            .map(|(id, l)| (id.clone(), l.stamp, l.addr.clone()))
            .collect()
    }

    /// Live connections of this gateway.
    pub fn len(&self) -> usize {
        self.lock().local.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Arc<LiveIds> {
        let m = crate::metrics::Metrics::new();
        Arc::new(LiveIds::new("b", &m))
    }

    fn cfg(limit: u32) -> SingleLiveConfig {
        SingleLiveConfig {
            enabled: true,
            limit,
            window: Duration::from_secs(60),
            holddown: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_newer_connection_closes_the_older_one_here_and_from_a_peer() {
        let ids = ids();
        let (s1, s2) = (SessionScope::root(), SessionScope::root());
        let mut a = ids.handle("c", "127.0.0.1".parse().unwrap(), s1.clone(), cfg(5));
        a.activate();
        let mut b = ids.handle("c", "127.0.0.1".parse().unwrap(), s2.clone(), cfg(5));
        b.activate();
        assert!(s1.is_closed() && a.taken_over());
        assert!(!s2.is_closed() && !b.taken_over());
        drop(a); // the older one's release leaves the newer one registered
        assert_eq!(ids.len(), 1);
        // A peer's announcement older than ours changes nothing; a newer one closes ours.
        ids.remote("c", 1, "127.0.0.1", "peer", cfg(5));
        assert!(!s2.is_closed());
        ids.remote("c", u64::MAX - 10, "127.0.0.1", "peer", cfg(5));
        assert!(s2.is_closed() && b.taken_over());
        assert!(ids.is_empty());
        // A connection made here after that is stamped above the peer's stamp (whose
        // clock may be ahead), so the peer closes its own on our announcement.
        let mut c = ids.handle(
            "c",
            "127.0.0.1".parse().unwrap(),
            SessionScope::root(),
            cfg(5),
        );
        c.activate();
        assert!(ids.export()[0].1 > u64::MAX - 10);
    }

    #[test]
    fn local_handles_take_over_on_this_gateway_only_and_claims_are_seen_by_others() {
        let ids = ids();
        let off = SingleLiveConfig {
            enabled: false,
            ..cfg(0)
        };
        let mut rx = changes().subscribe();
        let (s1, s2) = (SessionScope::root(), SessionScope::root());
        let mut a = ids.handle("f", "127.0.0.1".parse().unwrap(), s1.clone(), off);
        a.activate();
        let mut b = ids.handle("f", "127.0.0.2".parse().unwrap(), s2.clone(), off);
        b.claim();
        assert!(
            a.contended() && !b.contended(),
            "b's own claim is not b's contender"
        );
        b.activate();
        assert!(!a.contended(), "going live drops the claim");
        assert!(s1.is_closed() && a.taken_over() && !s2.is_closed());
        // Nothing announced, no takeover damped (limit 0 would hold it down).
        assert!(ids.held("f").is_none());
        while let Ok(ch) = rx.try_recv() {
            assert_ne!(&*ch.id, "f", "a local handle is not announced");
        }
        // A claim dropped with its handle.
        let mut c = ids.handle("f", "127.0.0.1".parse().unwrap(), SessionScope::root(), off);
        c.claim();
        assert!(b.contended());
        drop(c);
        assert!(!b.contended());
    }

    #[test]
    fn takeovers_from_other_addresses_past_the_limit_hold_the_id_down() {
        let ids = ids();
        let c = cfg(2);
        let mut keep = Vec::new();
        for (n, addr) in ["127.0.0.1", "127.0.0.2", "127.0.0.1"].iter().enumerate() {
            let mut h = ids.handle("c", addr.parse().unwrap(), SessionScope::root(), c);
            h.activate();
            keep.push(h);
            // Two takeovers (n = 1, 2) are within the limit.
            assert!(ids.held("c").is_none(), "after {n}");
        }
        // The same address again is no takeover from another address.
        let mut h = ids.handle("c", "127.0.0.1".parse().unwrap(), SessionScope::root(), c);
        h.activate();
        assert!(ids.held("c").is_none());
        ids.remote("c", u64::MAX, "127.0.0.2", "peer", c);
        assert_eq!(ids.held("c").as_deref(), Some("127.0.0.2"));
        assert!(ids.held("other").is_none());
    }
}
