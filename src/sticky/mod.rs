//! The sticky table of a dynsec cluster: sticky key (client id or username) → node name.
//!
//! It keeps a client on the node that holds its session. Entries carry the wall-clock
//! time they were written (`stamp`, unix milliseconds) and the gateway that wrote them
//! (`origin`), so that replicas converge by "last writer wins, instance name breaks
//! ties" (see `peers`). Expiry counts from the last use; at capacity the least recently
//! used entries go first. The table is sharded to keep lock hold times short on the
//! connection path.
//!
//! Replication needs three things beyond a plain map, all kept here:
//! - **tombstones**: a deletion is remembered (with its stamp) for one `expire` period,
//!   so that an older write arriving later from a peer that was cut off cannot bring
//!   the entry back;
//! - **touches**: a lookup hit is announced to peers now and then (at most every
//!   `expire / 8`, between 1 s and 10 min), so that an entry used through one gateway
//!   does not expire on the others;
//! - **idle time** travels with every update, so a peer that receives an entry in a full
//!   sync (or a snapshot that is loaded) gives it the remaining lifetime, not a new one.

pub mod subs;

use lru::LruCache;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// Number of independently locked parts of a table (also the unit of a full sync).
pub const SHARDS: usize = 16;

/// Changes buffered for replication, for all of a gateway's tables together (one
/// feed, [`feed`]); a peer link that falls further behind resyncs.
pub const FEED_CAPACITY: usize = 16 * 1024;

/// A change of one cluster's table, tagged with the cluster's name: what the peer
/// links read, straight from the tables (no task in between).
pub type Change = (Arc<str>, Update);

/// A gateway's change feed: every table of the gateway sends into it, every peer link
/// subscribes to it. Sending with no subscriber (no peers) costs nothing but the check.
pub fn feed() -> broadcast::Sender<Change> {
    broadcast::channel(FEED_CAPACITY).0
}

/// Updates stamped further in the future than this are refused (a peer with a broken
/// clock, or a hostile one, must not pin entries forever).
pub const MAX_FUTURE_MS: u64 = 3_600_000;

/// One live entry as stored.
#[derive(Debug, Clone)]
pub struct Entry {
    pub node: Arc<str>,
    pub stamp: u64,
    pub origin: Arc<str>,
    last_used: Instant,
    /// When a use of this entry was last announced to peers.
    announced: Instant,
}

/// A deletion, remembered so that older writes cannot resurrect the entry.
#[derive(Debug, Clone)]
struct Tomb {
    stamp: u64,
    origin: Arc<str>,
    at: Instant,
}

/// A change to replicate: `node = None` is a deletion. An update with the same
/// (`stamp`, `origin`) as the stored entry is a touch: it only refreshes expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub key: Arc<str>,
    pub node: Option<Arc<str>>,
    pub stamp: u64,
    pub origin: Arc<str>,
    /// Milliseconds since the entry was last used (or deleted) at the sender.
    pub idle_ms: u64,
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

struct Shard {
    live: LruCache<Arc<str>, Entry>,
    dead: LruCache<Arc<str>, Tomb>,
}

impl Shard {
    /// Version (stamp, origin) of what this shard knows about `key`, live or deleted.
    fn version(&self, key: &str) -> Option<(u64, Arc<str>)> {
        if let Some(e) = self.live.peek(key) {
            return Some((e.stamp, e.origin.clone()));
        }
        self.dead.peek(key).map(|t| (t.stamp, t.origin.clone()))
    }
}

pub struct StickyTable {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    expire_ms: AtomicU64,
    capacity: AtomicUsize,
    origin: Arc<str>,
    /// This table's cluster, as its changes are tagged.
    cluster: Arc<str>,
    changes: broadcast::Sender<Change>,
}

/// Wall-clock milliseconds since the Unix epoch.
/// Keys up to this many bytes are stored as they are; longer ones (a client id may
/// be 65,535 bytes) as [`stored_key`]'s digest, so that an entry's memory is bounded
/// whatever the id's length (and so is what peers and the snapshot carry).
pub const MAX_STORED_KEY: usize = 128;

/// The form a sticky key is stored, replicated and looked up in: the key itself up
/// to [`MAX_STORED_KEY`] bytes, else `sha256:` and the hex SHA-256 of the key (71
/// bytes, itself short enough to be stored as it is, so this is idempotent). Every
/// public method of [`StickyTable`] applies it, admin API look-ups included.
pub fn stored_key(key: &str) -> std::borrow::Cow<'_, str> {
    use sha2::Digest;
    use std::fmt::Write;
    if key.len() <= MAX_STORED_KEY {
        return std::borrow::Cow::Borrowed(key);
    }
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    std::borrow::Cow::Owned(out)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn per_shard(capacity: usize) -> NonZeroUsize {
    NonZeroUsize::new(capacity.div_ceil(SHARDS).max(1)).unwrap_or(NonZeroUsize::MIN)
}

/// An LRU map bounded to `cap` that grows with its contents. `LruCache::new` would
/// allocate the whole hash table up front, and inserts at random buckets would then
/// touch its pages one by one: with the default capacity, megabytes resident for a
/// table that holds a few thousand entries.
fn bounded_lru<V>(cap: NonZeroUsize) -> LruCache<Arc<str>, V> {
    LruCache::sparse(cap)
}

/// `now - idle`, saturating (an `Instant` cannot go before the clock's origin).
fn ago(idle: Duration) -> Instant {
    let now = Instant::now();
    now.checked_sub(idle).unwrap_or(now)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl StickyTable {
    /// A table with a change feed of its own (tests, tools).
    pub fn new(capacity: usize, expire: Duration, origin: &str) -> Self {
        Self::with_feed(capacity, expire, origin, "", feed())
    }

    /// A table of cluster `cluster` that sends its changes into the gateway's `changes`.
    pub fn with_feed(
        capacity: usize,
        expire: Duration,
        origin: &str,
        cluster: &str,
        changes: broadcast::Sender<Change>,
    ) -> Self {
        let per = per_shard(capacity);
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        live: bounded_lru(per),
                        dead: bounded_lru(per),
                    })
                })
                .collect(),
            hasher: Default::default(),
            expire_ms: AtomicU64::new(millis(expire)),
            capacity: AtomicUsize::new(capacity),
            origin: Arc::from(origin),
            cluster: Arc::from(cluster),
            changes,
        }
    }

    pub fn origin(&self) -> &Arc<str> {
        &self.origin
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        crate::sync::lock(&self.shards[i])
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        self.lock((self.hasher.hash_one(key) as usize) % SHARDS)
    }

    pub fn expire(&self) -> Duration {
        Duration::from_millis(self.expire_ms.load(Ordering::Relaxed))
    }

    /// How often a use of one entry is announced to peers.
    fn touch_interval(&self) -> Duration {
        (self.expire() / 8).clamp(Duration::from_secs(1), Duration::from_secs(600))
    }

    /// Change capacity and expiry (reload). Shrinking drops least recently used entries.
    pub fn set_limits(&self, capacity: usize, expire: Duration) {
        self.expire_ms.store(millis(expire), Ordering::Relaxed);
        self.capacity.store(capacity, Ordering::Relaxed);
        let per = per_shard(capacity);
        for i in 0..SHARDS {
            let mut g = self.lock(i);
            g.live.resize(per);
            g.dead.resize(per);
        }
    }

    /// Look a key up for routing; a hit counts as a use (refreshes expiry and LRU order)
    /// and is announced to peers now and then.
    pub fn lookup(&self, key: &str) -> Lookup {
        let key = &*stored_key(key);
        let expire = self.expire();
        let touch = self.touch_interval();
        let mut g = self.shard(key);
        let (result, announce) = match g.live.get_mut(key) {
            Some(e) if e.last_used.elapsed() <= expire => {
                let now = Instant::now();
                e.last_used = now;
                let announce = (now.duration_since(e.announced) >= touch).then(|| {
                    e.announced = now;
                    (e.node.clone(), e.stamp, e.origin.clone())
                });
                (Lookup::Hit(e.node.clone()), announce)
            }
            Some(_) => {
                g.live.pop(key);
                (Lookup::Stale, None)
            }
            None => (Lookup::Miss, None),
        };
        drop(g);
        if let Some((node, stamp, origin)) = announce {
            self.publish(Update {
                key: Arc::from(key),
                node: Some(node),
                stamp,
                origin,
                idle_ms: 0,
            });
        }
        result
    }

    /// Record a local decision: `key` now lives on `node`. Replicated to peers.
    ///
    /// The stamp is the wall clock, but always above the version already known for the
    /// key, so a local write supersedes everything this gateway has seen (on every peer).
    pub fn record(&self, key: &str, node: &str) {
        let key: Arc<str> = Arc::from(stored_key(key));
        let node: Arc<str> = Arc::from(node);
        let stamp;
        {
            let mut g = self.shard(&key);
            stamp = match g.version(&key) {
                Some((s, _)) => now_ms().max(s + 1),
                None => now_ms(),
            };
            g.dead.pop(&*key);
            let now = Instant::now();
            g.live.put(
                key.clone(),
                Entry {
                    node: node.clone(),
                    stamp,
                    origin: self.origin.clone(),
                    last_used: now,
                    announced: now,
                },
            );
        }
        self.publish(Update {
            key,
            node: Some(node),
            stamp,
            origin: self.origin.clone(),
            idle_ms: 0,
        });
    }

    /// Remove a key (admin API). Replicated to peers as a deletion.
    pub fn remove(&self, key: &str) -> bool {
        let key: Arc<str> = Arc::from(stored_key(key));
        let stamp = {
            let mut g = self.shard(&key);
            let Some(old) = g.live.pop(&*key) else {
                return false;
            };
            let stamp = now_ms().max(old.stamp + 1);
            g.dead.put(
                key.clone(),
                Tomb {
                    stamp,
                    origin: self.origin.clone(),
                    at: Instant::now(),
                },
            );
            stamp
        };
        self.publish(Update {
            key,
            node: None,
            stamp,
            origin: self.origin.clone(),
            idle_ms: 0,
        });
        true
    }

    /// Apply an update from a peer (or a snapshot): kept only if it is newer than what
    /// we know (stamp, then origin name as tie-break), deletions included. An update
    /// with the same version refreshes the entry's last use (a touch). Updates that have
    /// already expired, or are stamped too far in the future, are ignored. Returns
    /// whether it changed which node the key maps to (or its existence).
    pub fn merge(&self, u: &Update) -> bool {
        if u.stamp > now_ms().saturating_add(MAX_FUTURE_MS) {
            return false;
        }
        // Peers store the same form; an older peer (or snapshot) may send a long key.
        if u.key.len() > MAX_STORED_KEY {
            let short = Update {
                key: Arc::from(stored_key(&u.key)),
                ..u.clone()
            };
            return self.merge(&short);
        }
        let expire = self.expire();
        let idle = Duration::from_millis(u.idle_ms);
        let mut g = self.shard(&u.key);
        if let Some((stamp, origin)) = g.version(&u.key) {
            match (stamp, &*origin).cmp(&(u.stamp, &*u.origin)) {
                std::cmp::Ordering::Greater => return false,
                std::cmp::Ordering::Equal => {
                    if let Some(e) = g.live.peek_mut(&*u.key) {
                        let used = ago(idle);
                        if used > e.last_used {
                            e.last_used = used;
                        }
                    }
                    return false;
                }
                std::cmp::Ordering::Less => {}
            }
        }
        if idle > expire {
            return false;
        }
        match &u.node {
            Some(node) => {
                g.dead.pop(&*u.key);
                g.live.put(
                    u.key.clone(),
                    Entry {
                        node: node.clone(),
                        stamp: u.stamp,
                        origin: u.origin.clone(),
                        last_used: ago(idle),
                        announced: Instant::now(),
                    },
                );
                true
            }
            None => {
                let had = g.live.pop(&*u.key).is_some();
                g.dead.put(
                    u.key.clone(),
                    Tomb {
                        stamp: u.stamp,
                        origin: u.origin.clone(),
                        at: ago(idle),
                    },
                );
                had
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<EntryView> {
        let key = &*stored_key(key);
        let expire = self.expire();
        let g = self.shard(key);
        g.live.peek(key).and_then(|e| {
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

    /// Live entries (tombstones are not counted).
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).live.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop expired entries and tombstones (least recently used first); returns how
    /// many entries went.
    pub fn sweep(&self) -> usize {
        let expire = self.expire();
        let mut n = 0;
        for i in 0..SHARDS {
            let mut g = self.lock(i);
            while let Some((_, e)) = g.live.peek_lru() {
                if e.last_used.elapsed() > expire {
                    g.live.pop_lru();
                    n += 1;
                } else {
                    break;
                }
            }
            while let Some((_, t)) = g.dead.peek_lru() {
                if t.at.elapsed() > expire {
                    g.dead.pop_lru();
                } else {
                    break;
                }
            }
        }
        n
    }

    /// One shard's entries and tombstones as updates (a full sync sends the table one
    /// shard at a time, so the lock is held only while copying one shard).
    pub fn export_shard(&self, shard: usize) -> Vec<Update> {
        let expire = self.expire();
        let g = self.lock(shard % SHARDS);
        let mut out = Vec::with_capacity(g.live.len() + g.dead.len());
        for (k, e) in g.live.iter() {
            let idle = e.last_used.elapsed();
            if idle <= expire {
                out.push(Update {
                    key: k.clone(),
                    node: Some(e.node.clone()),
                    stamp: e.stamp,
                    origin: e.origin.clone(),
                    idle_ms: millis(idle),
                });
            }
        }
        for (k, t) in g.dead.iter() {
            out.push(Update {
                key: k.clone(),
                node: None,
                stamp: t.stamp,
                origin: t.origin.clone(),
                idle_ms: millis(t.at.elapsed()),
            });
        }
        out
    }

    /// Every live entry and tombstone as an update (for a full sync or a snapshot).
    pub fn export(&self) -> Vec<Update> {
        (0..SHARDS).flat_map(|i| self.export_shard(i)).collect()
    }

    /// Changes made to this table (local writes, deletions and touches), for
    /// replication; with a shared feed, those of the other tables on it too.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Publish a change of this table.
    fn publish(&self, u: Update) {
        // No subscriber (no peer link): nothing to do.
        let _ = self.changes.send((self.cluster.clone(), u));
    }
}

#[cfg(test)]
mod tests;
