//! The subscriptions of persistent clients, stored beside the sticky table of a
//! dynsec cluster (`[clusters.X.sessions] restore_subscriptions`).
//!
//! The packet-aware relay (`crate::relay::packets`) adds a subscription once the
//! broker granted it (SUBACK) and removes it once the broker confirmed an
//! UNSUBSCRIBE (UNSUBACK); when a client lands on a node that has no session for it
//! (CONNACK session-present 0), the relay replays what is stored here.
//!
//! Bounds (see docs/cluster-modes.md): per client, `max_per_client` subscriptions and
//! `max_bytes_per_client` bytes (topic filters and v5 property blocks); per cluster,
//! `max_total` subscriptions. A subscription over a bound is still forwarded (the
//! broker has it) but not stored, counted in
//! `mqgate_session_subscriptions_dropped_total{reason}`: after a node's death that
//! client gets back only what was stored. A client that starts a clean session
//! (3.x clean session 1, v5 clean start 1) has its stored subscriptions dropped, as
//! the broker drops them. A client unused for the sticky table's `expire` is forgotten.
//!
//! Keys are client ids in the sticky table's stored form (`super::stored_key`).
//!
//! Replication: every local change publishes the client's whole set on [`changes`]
//! (empty: none left); peer links send it on (`crate::peers`) and peers apply it with
//! [`SubStore::apply_remote`], which publishes nothing. Each set carries a stamp (µs
//! since the epoch, above the one it replaces: a change made here after a peer's set
//! arrived always wins over that set), and a set received replaces the stored one
//! only if it is newer (equal stamps: the greater set, so that every gateway picks the
//! same). So the same client changing its subscriptions through two gateways, in turn
//! or at once, ends with the same set on both, and a full sync or a snapshot from a
//! gateway that missed changes cannot bring back an older set. A client whose last
//! subscription went keeps an empty set (with its stamp) until it expires, for the same
//! reason: its removal must win over a peer's older non-empty set.

use super::stored_key;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// A client's whole set of subscriptions after a local change (empty: none left).
#[derive(Debug, Clone)]
pub struct SubsChange {
    pub cluster: Arc<str>,
    pub key: Arc<str>,
    /// When the set was made (µs since the epoch; see the module comment).
    pub stamp: u64,
    pub subs: Arc<[Sub]>,
}

/// A client's set as replicated and exported: key, stamp, subscriptions.
pub type StampedSet = (Arc<str>, u64, Vec<Sub>);

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Is the set (`stamp`, `subs`) newer than the stored (`old_stamp`, `old`)? The same
/// answer on every gateway.
fn newer(stamp: u64, subs: &[Sub], old_stamp: u64, old: &[Sub]) -> bool {
    (stamp, subs) > (old_stamp, old)
}

/// Changes buffered for replication; a peer link that falls further behind resyncs.
const CHANGES_CAPACITY: usize = 4096;

/// The process's subscription changes, for peer links.
pub fn changes() -> &'static broadcast::Sender<SubsChange> {
    static CHANGES: std::sync::OnceLock<broadcast::Sender<SubsChange>> = std::sync::OnceLock::new();
    CHANGES.get_or_init(|| broadcast::channel(CHANGES_CAPACITY).0)
}

/// One stored subscription: what the replay sends back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sub {
    pub topic: Box<str>,
    /// Subscription Options as the client sent them (QoS; v5 flags).
    pub options: u8,
    /// v5: the SUBSCRIBE's property block content (Subscription Identifier, User
    /// Properties); empty for MQTT 3.
    pub properties: Box<[u8]>,
}

impl Sub {
    /// What this subscription counts against `max_bytes_per_client`.
    pub fn cost(&self) -> usize {
        self.topic.len() + self.properties.len() + 1
    }
}

/// The bounds of a store (from `SessionsConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub per_client: usize,
    pub bytes_per_client: usize,
    pub total: usize,
    pub expire: Duration,
}

/// Why a subscription was not stored (`reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    ClientCount,
    ClientBytes,
    Total,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::ClientCount => "client_count",
            Refused::ClientBytes => "client_bytes",
            Refused::Total => "total",
        }
    }
}

pub const REFUSED_REASONS: [&str; 3] = ["client_count", "client_bytes", "total"];

#[derive(Debug)]
struct Client {
    subs: Vec<Sub>,
    bytes: usize,
    used: Instant,
    /// When this set was made, here or on a peer (µs since the epoch).
    stamp: u64,
}

impl Client {
    /// A local change: a stamp above both the clock and the set it replaces.
    fn bump(&mut self) {
        self.stamp = now_us().max(self.stamp.saturating_add(1));
    }
}

pub struct SubStore {
    cluster: Arc<str>,
    clients: Mutex<HashMap<Arc<str>, Client>>,
    total: AtomicUsize,
    bounds: Mutex<Bounds>,
}

impl SubStore {
    pub fn new(cluster: &str, bounds: Bounds) -> Self {
        SubStore {
            cluster: Arc::from(cluster),
            clients: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
            bounds: Mutex::new(bounds),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Client>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn bounds(&self) -> Bounds {
        *self.bounds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New bounds (reload). Stored subscriptions over a lowered bound stay until
    /// their client unsubscribes or is forgotten.
    pub fn set_bounds(&self, b: Bounds) {
        *self.bounds.lock().unwrap_or_else(|p| p.into_inner()) = b;
    }

    /// Subscriptions stored, all clients together.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Store (or update, same topic filter) a subscription the broker granted.
    pub fn add(&self, client: &str, sub: Sub) -> Result<(), Refused> {
        let b = self.bounds();
        let key = stored_key(client);
        let mut map = self.lock();
        let now = Instant::now();
        let entry = map.get_mut(key.as_ref());
        if let Some(c) = entry {
            c.used = now;
            if let Some(old) = c.subs.iter_mut().find(|s| s.topic == sub.topic) {
                let bytes = c.bytes - old.cost() + sub.cost();
                if bytes > b.bytes_per_client {
                    return Err(Refused::ClientBytes);
                }
                c.bytes = bytes;
                *old = sub;
                c.bump();
                self.publish(key.as_ref(), c);
                return Ok(());
            }
            if c.subs.len() >= b.per_client {
                return Err(Refused::ClientCount);
            }
            if c.bytes + sub.cost() > b.bytes_per_client {
                return Err(Refused::ClientBytes);
            }
        } else if sub.cost() > b.bytes_per_client {
            return Err(Refused::ClientBytes);
        }
        if self.total() >= b.total {
            self.sweep(&mut map, b.expire);
            if self.total() >= b.total {
                return Err(Refused::Total);
            }
        }
        let c = map
            .entry(Arc::from(key.as_ref()))
            .or_insert_with(|| Client {
                subs: Vec::new(),
                bytes: 0,
                used: now,
                stamp: 0,
            });
        c.bytes += sub.cost();
        c.subs.push(sub);
        c.bump();
        self.total.fetch_add(1, Ordering::Relaxed);
        self.publish(key.as_ref(), c);
        Ok(())
    }

    /// Remove a client's subscription to `topic`; true if there was one.
    pub fn remove(&self, client: &str, topic: &str) -> bool {
        let key = stored_key(client);
        let mut map = self.lock();
        let Some(c) = map.get_mut(key.as_ref()) else {
            return false;
        };
        let Some(i) = c.subs.iter().position(|s| &*s.topic == topic) else {
            return false;
        };
        let s = c.subs.remove(i);
        c.bytes -= s.cost();
        c.bump();
        self.total.fetch_sub(1, Ordering::Relaxed);
        self.publish(key.as_ref(), c);
        if c.subs.is_empty() {
            self.keep_empty(&mut map, key.as_ref());
        }
        true
    }

    /// Drop everything stored for a client (it started a clean session).
    pub fn forget(&self, client: &str) {
        let key = stored_key(client);
        let mut map = self.lock();
        let Some(c) = map.get_mut(key.as_ref()).filter(|c| !c.subs.is_empty()) else {
            return;
        };
        self.total.fetch_sub(c.subs.len(), Ordering::Relaxed);
        c.subs.clear();
        c.bytes = 0;
        c.bump();
        self.publish(key.as_ref(), c);
        self.keep_empty(&mut map, key.as_ref());
    }

    /// A client's set just became empty: it stays (with its stamp, so that its
    /// removal wins over a peer's older set) unless the store holds more clients than
    /// `max_subscriptions_total` even after dropping those unused for `expire`.
    fn keep_empty(&self, map: &mut HashMap<Arc<str>, Client>, key: &str) {
        let b = self.bounds();
        if map.len() > b.total {
            self.sweep(map, b.expire);
            if map.len() > b.total {
                map.remove(key);
            }
        }
    }

    fn publish(&self, key: &str, c: &Client) {
        let tx = changes();
        if tx.receiver_count() > 0 {
            let _ = tx.send(SubsChange {
                cluster: self.cluster.clone(),
                key: Arc::from(key),
                stamp: c.stamp,
                subs: Arc::from(c.subs.as_slice()),
            });
        }
    }

    /// A client's whole set from a peer (or a snapshot), made at `stamp`: replaces
    /// what is stored if it is newer (see the module comment), within this gateway's
    /// bounds (what does not fit is left out); an older one is ignored. Publishes
    /// nothing. True if applied.
    pub fn apply_remote(&self, key: &str, stamp: u64, subs: &[Sub]) -> bool {
        let b = self.bounds();
        let key = stored_key(key);
        let mut map = self.lock();
        if let Some(old) = map.get(key.as_ref()) {
            if !newer(stamp, subs, old.stamp, &old.subs) {
                return false;
            }
        }
        if let Some(old) = map.remove(key.as_ref()) {
            self.total.fetch_sub(old.subs.len(), Ordering::Relaxed);
        }
        let mut c = Client {
            subs: Vec::new(),
            bytes: 0,
            used: Instant::now(),
            stamp,
        };
        for s in subs {
            if c.subs.len() >= b.per_client
                || c.bytes + s.cost() > b.bytes_per_client
                || self.total() + c.subs.len() >= b.total
            {
                break;
            }
            c.bytes += s.cost();
            c.subs.push(s.clone());
        }
        self.total.fetch_add(c.subs.len(), Ordering::Relaxed);
        let empty = c.subs.is_empty();
        map.insert(Arc::from(key.as_ref()), c);
        if empty {
            self.keep_empty(&mut map, key.as_ref());
        }
        true
    }

    /// Every client's set with its stamp, empty ones included (full sync to a peer,
    /// snapshot).
    pub fn export(&self) -> Vec<StampedSet> {
        self.lock()
            .iter()
            .map(|(k, c)| (k.clone(), c.stamp, c.subs.clone()))
            .collect()
    }

    /// A client's stored subscriptions (a copy, to replay or show), marking it used.
    pub fn get(&self, client: &str) -> Vec<Sub> {
        let expire = self.bounds().expire;
        let key = stored_key(client);
        let mut map = self.lock();
        let Some(c) = map.get_mut(key.as_ref()) else {
            return Vec::new();
        };
        if c.used.elapsed() > expire {
            let n = c.subs.len();
            map.remove(key.as_ref());
            self.total.fetch_sub(n, Ordering::Relaxed);
            return Vec::new();
        }
        c.used = Instant::now();
        c.subs.clone()
    }

    /// Does the store hold subscriptions for this client?
    pub fn contains(&self, client: &str) -> bool {
        self.lock()
            .get(stored_key(client).as_ref())
            .is_some_and(|c| !c.subs.is_empty())
    }

    /// A client's stored subscriptions without marking it used (admin API).
    pub fn peek(&self, client: &str) -> Vec<Sub> {
        let key = stored_key(client);
        self.lock()
            .get(key.as_ref())
            .map(|c| c.subs.clone())
            .unwrap_or_default()
    }

    /// Forget clients unused for `expire`.
    fn sweep(&self, map: &mut HashMap<Arc<str>, Client>, expire: Duration) {
        let mut dropped = 0;
        map.retain(|_, c| {
            let keep = c.used.elapsed() <= expire;
            if !keep {
                dropped += c.subs.len();
            }
            keep
        });
        self.total.fetch_sub(dropped, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(t: &str) -> Sub {
        Sub {
            topic: t.into(),
            options: 1,
            properties: Box::new([]),
        }
    }

    fn store(per_client: usize, bytes: usize, total: usize) -> SubStore {
        SubStore::new(
            "c",
            Bounds {
                per_client,
                bytes_per_client: bytes,
                total,
                expire: Duration::from_secs(60),
            },
        )
    }

    #[test]
    fn add_replace_remove_forget() {
        let s = store(10, 1000, 100);
        s.add("c", sub("a")).unwrap();
        s.add("c", sub("b")).unwrap();
        let mut q2 = sub("a");
        q2.options = 2;
        s.add("c", q2.clone()).unwrap();
        assert_eq!(s.total(), 2);
        assert!(s.get("c").contains(&q2));
        assert!(s.remove("c", "a"));
        assert!(!s.remove("c", "a"));
        assert_eq!(s.get("c"), vec![sub("b")]);
        s.forget("c");
        assert_eq!(s.total(), 0);
        assert!(s.get("c").is_empty());
    }

    #[test]
    fn bounds_refuse_and_count_nothing() {
        let s = store(2, 5, 3);
        s.add("c", sub("a")).unwrap();
        s.add("c", sub("b")).unwrap();
        assert_eq!(s.add("c", sub("c")), Err(Refused::ClientCount));
        assert_eq!(s.add("d", sub("long")), Ok(()));
        assert_eq!(s.add("d", sub("xy")), Err(Refused::ClientBytes));
        assert_eq!(s.add("e", sub("z")), Err(Refused::Total));
        assert_eq!(s.total(), 3);
        assert_eq!(s.add("f", sub("toolong")), Err(Refused::ClientBytes));
    }

    #[test]
    fn the_newer_set_wins_on_every_side_and_a_removal_is_not_undone() {
        let (a, b) = (store(10, 1000, 100), store(10, 1000, 100));
        let mut rx = changes().subscribe();
        let mut last = || loop {
            if let Ok(ch) = rx.try_recv() {
                if &*ch.cluster == "c" && &*ch.key == "id" {
                    break ch;
                }
            }
        };
        a.add("id", sub("x")).unwrap();
        let old = last();
        assert!(b.apply_remote("id", old.stamp, &old.subs));
        // A change made on b after a's set arrived is newer than it.
        b.add("id", sub("y")).unwrap();
        let new = last();
        assert!(new.stamp > old.stamp);
        assert!(a.apply_remote("id", new.stamp, &new.subs));
        assert!(
            !b.apply_remote("id", old.stamp, &old.subs),
            "an older set is ignored"
        );
        assert_eq!(a.peek("id"), b.peek("id"));
        // Every subscription removed on a: the empty set stays, and wins over b's
        // older full set (a resync, a snapshot).
        assert!(a.remove("id", "x") && a.remove("id", "y"));
        let _ = last();
        let gone = last();
        assert!(gone.subs.is_empty());
        let (_, stamp, subs) = b.export().into_iter().find(|e| &*e.0 == "id").unwrap();
        assert!(!a.apply_remote("id", stamp, &subs));
        assert!(a.peek("id").is_empty() && !a.contains("id"));
        assert!(b.apply_remote("id", gone.stamp, &gone.subs));
        assert!(b.peek("id").is_empty() && b.total() == 0);
        // Equal stamps: both sides keep the same (greater) set.
        let (p, q) = (vec![sub("p")], vec![sub("q")]);
        for s in [&a, &b] {
            s.apply_remote("tie", 7, &p);
            s.apply_remote("tie", 7, &q);
        }
        assert_eq!(a.peek("tie"), q);
        assert_eq!(b.peek("tie"), q);
        // Legacy sets (stamp 0) never replace a stamped one.
        assert!(!a.apply_remote("tie", 0, &p));
    }

    #[test]
    fn long_client_ids_share_the_sticky_tables_stored_form() {
        let s = store(2, 100, 10);
        let id = "x".repeat(1000);
        s.add(&id, sub("a")).unwrap();
        assert_eq!(s.peek(&id), vec![sub("a")]);
    }
}
