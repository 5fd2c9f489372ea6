//! The sticky table of a dynsec cluster: sticky key (client id or username) → node name.
//!
//! It keeps a client on the node that holds its session. Entries carry the wall-clock
//! time they were written (`stamp`, unix milliseconds) and the gateway that wrote them
//! (`origin`), so that replicas converge by "last writer wins, instance name breaks
//! ties" (see `peers`). Expiry counts from the last local use; at capacity the least
//! recently used entries go first. The table is sharded to keep lock hold times short
//! on the connection path.

use lru::LruCache;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

const SHARDS: usize = 16;

/// One entry as stored.
#[derive(Debug, Clone)]
pub struct Entry {
    pub node: Arc<str>,
    pub stamp: u64,
    pub origin: Arc<str>,
    last_used: Instant,
}

/// A change to replicate: `node = None` is a deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub key: Arc<str>,
    pub node: Option<Arc<str>>,
    pub stamp: u64,
    pub origin: Arc<str>,
}

/// Result of a lookup on the connection path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Hit(Arc<str>),
    Miss,
    /// There was an entry but it had expired; it is gone now.
    Stale,
}

/// What the admin API shows for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryView {
    pub key: String,
    pub node: String,
    pub expires_in: Duration,
    pub stamp: u64,
    pub origin: String,
}

pub struct StickyTable {
    shards: Vec<Mutex<LruCache<Arc<str>, Entry>>>,
    hasher: std::collections::hash_map::RandomState,
    expire_ms: AtomicU64,
    capacity: AtomicUsize,
    origin: Arc<str>,
    changes: broadcast::Sender<Update>,
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl StickyTable {
    pub fn new(capacity: usize, expire: Duration, origin: &str) -> Self {
        let (changes, _) = broadcast::channel(4096);
        let per = capacity.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(LruCache::new(
                        std::num::NonZeroUsize::MIN.saturating_add(per - 1),
                    ))
                })
                .collect(),
            hasher: Default::default(),
            expire_ms: AtomicU64::new(expire.as_millis() as u64),
            capacity: AtomicUsize::new(capacity),
            origin: Arc::from(origin),
            changes,
        }
    }

    pub fn origin(&self) -> &Arc<str> {
        &self.origin
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, LruCache<Arc<str>, Entry>> {
        let mut h = self.hasher.build_hasher();
        key.hash(&mut h);
        let i = (h.finish() as usize) % SHARDS;
        match self.shards[i].lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn expire(&self) -> Duration {
        Duration::from_millis(self.expire_ms.load(Ordering::Relaxed))
    }

    /// Change capacity and expiry (reload). Shrinking drops least recently used entries.
    pub fn set_limits(&self, capacity: usize, expire: Duration) {
        self.expire_ms
            .store(expire.as_millis() as u64, Ordering::Relaxed);
        self.capacity.store(capacity, Ordering::Relaxed);
        let per = capacity.div_ceil(SHARDS).max(1);
        for s in &self.shards {
            let mut g = match s.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            g.resize(std::num::NonZeroUsize::MIN.saturating_add(per - 1));
        }
    }

    /// Look a key up for routing; a hit counts as a use (refreshes expiry and LRU order).
    pub fn lookup(&self, key: &str) -> Lookup {
        let expire = self.expire();
        let mut g = self.shard(key);
        match g.get_mut(key) {
            Some(e) if e.last_used.elapsed() <= expire => {
                e.last_used = Instant::now();
                Lookup::Hit(e.node.clone())
            }
            Some(_) => {
                g.pop(key);
                Lookup::Stale
            }
            None => Lookup::Miss,
        }
    }

    /// Record a local decision: `key` now lives on `node`. Replicated to peers.
    pub fn record(&self, key: &str, node: &str) {
        let stamp = now_ms();
        let key: Arc<str> = Arc::from(key);
        let node: Arc<str> = Arc::from(node);
        {
            let mut g = self.shard(&key);
            g.put(
                key.clone(),
                Entry {
                    node: node.clone(),
                    stamp,
                    origin: self.origin.clone(),
                    last_used: Instant::now(),
                },
            );
        }
        let _ = self.changes.send(Update {
            key,
            node: Some(node),
            stamp,
            origin: self.origin.clone(),
        });
    }

    /// Remove a key (admin API). Replicated to peers as a deletion.
    pub fn remove(&self, key: &str) -> bool {
        let removed = self.shard(key).pop(key).is_some();
        if removed {
            let _ = self.changes.send(Update {
                key: Arc::from(key),
                node: None,
                stamp: now_ms(),
                origin: self.origin.clone(),
            });
        }
        removed
    }

    /// Apply an update from a peer: kept only if it is newer than what we have
    /// (stamp, then origin name as tie-break). Returns whether it changed the table.
    pub fn merge(&self, u: &Update) -> bool {
        let mut g = self.shard(&u.key);
        if let Some(cur) = g.peek(&*u.key) {
            if (cur.stamp, &*cur.origin) >= (u.stamp, &*u.origin) {
                return false;
            }
        }
        match &u.node {
            Some(node) => {
                g.put(
                    u.key.clone(),
                    Entry {
                        node: node.clone(),
                        stamp: u.stamp,
                        origin: u.origin.clone(),
                        last_used: Instant::now(),
                    },
                );
                true
            }
            None => g.pop(&*u.key).is_some(),
        }
    }

    pub fn get(&self, key: &str) -> Option<EntryView> {
        let expire = self.expire();
        let g = self.shard(key);
        g.peek(key).and_then(|e| {
            let age = e.last_used.elapsed();
            (age <= expire).then(|| EntryView {
                key: key.to_string(),
                node: e.node.to_string(),
                expires_in: expire - age,
                stamp: e.stamp,
                origin: e.origin.to_string(),
            })
        })
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| match s.lock() {
                Ok(g) => g.len(),
                Err(p) => p.into_inner().len(),
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop expired entries (least recently used first); returns how many went.
    pub fn sweep(&self) -> usize {
        let expire = self.expire();
        let mut n = 0;
        for s in &self.shards {
            let mut g = match s.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            while let Some((_, e)) = g.peek_lru() {
                if e.last_used.elapsed() > expire {
                    g.pop_lru();
                    n += 1;
                } else {
                    break;
                }
            }
        }
        n
    }

    /// Every live entry as an update (for a full sync or a snapshot).
    pub fn export(&self) -> Vec<Update> {
        let mut out = Vec::new();
        for s in &self.shards {
            let g = match s.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            for (k, e) in g.iter() {
                out.push(Update {
                    key: k.clone(),
                    node: Some(e.node.clone()),
                    stamp: e.stamp,
                    origin: e.origin.clone(),
                });
            }
        }
        out
    }

    /// Changes made to this table (local writes and deletions), for replication.
    pub fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lookup_remove() {
        let t = StickyTable::new(100, Duration::from_secs(60), "gate-a");
        assert_eq!(t.lookup("c1"), Lookup::Miss);
        t.record("c1", "node2");
        assert_eq!(t.lookup("c1"), Lookup::Hit(Arc::from("node2")));
        assert_eq!(t.get("c1").map(|e| e.node), Some("node2".to_string()));
        assert!(t.remove("c1"));
        assert_eq!(t.lookup("c1"), Lookup::Miss);
    }

    #[test]
    fn expired_entries_are_stale_then_gone() {
        let t = StickyTable::new(100, Duration::from_millis(1), "gate-a");
        t.record("c1", "node1");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(t.lookup("c1"), Lookup::Stale);
        assert_eq!(t.lookup("c1"), Lookup::Miss);
        t.record("c2", "node1");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(t.sweep(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn capacity_drops_least_recently_used() {
        let t = StickyTable::new(SHARDS, Duration::from_secs(60), "gate-a");
        for i in 0..SHARDS * 20 {
            t.record(&format!("k{i}"), "n");
        }
        assert!(t.len() <= SHARDS, "len {}", t.len());
    }

    #[test]
    fn merge_is_last_writer_wins_with_name_tiebreak() {
        let t = StickyTable::new(100, Duration::from_secs(60), "gate-a");
        let u = |node: &str, stamp, origin: &str| Update {
            key: Arc::from("k"),
            node: Some(Arc::from(node)),
            stamp,
            origin: Arc::from(origin),
        };
        assert!(t.merge(&u("n1", 10, "gate-b")));
        assert!(!t.merge(&u("n2", 9, "gate-c")));
        assert!(t.merge(&u("n3", 10, "gate-c")));
        assert!(!t.merge(&u("n4", 10, "gate-a")));
        assert_eq!(t.lookup("k"), Lookup::Hit(Arc::from("n3")));
    }

    #[test]
    fn changes_are_published() {
        let t = StickyTable::new(100, Duration::from_secs(60), "gate-a");
        let mut rx = t.subscribe();
        t.record("k", "n1");
        let u = rx.try_recv().expect("update published");
        assert_eq!(&*u.key, "k");
        assert_eq!(u.node.as_deref(), Some("n1"));
        assert_eq!(&*u.origin, "gate-a");
    }
}
