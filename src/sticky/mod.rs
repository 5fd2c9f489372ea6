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

mod merge;
mod store;
pub mod subs;

use merge::merge_into;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use store::{Lru, Names};
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

/// One live entry as stored (24 bytes; the key is in the slot, see [`store`]).
#[derive(Debug, Clone, Copy)]
struct Live {
    stamp: u64,
    /// Last use, milliseconds on the table's clock (may be negative: an entry received
    /// with an idle time longer than the table's life).
    used: i64,
    /// When a use of this entry was last announced to peers, tenths of a second on
    /// the table's clock.
    announced: u32,
    node: u16,
    origin: u16,
}

/// A deletion, remembered so that older writes cannot resurrect the entry.
#[derive(Debug, Clone, Copy)]
struct Tomb {
    stamp: u64,
    /// When it was deleted, milliseconds on the table's clock.
    at: i64,
    origin: u16,
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

/// An [`Update`] borrowed from where it lies (a received frame, a shard being sent):
/// what the full sync encodes and merges without allocating per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateRef<'a> {
    pub key: &'a str,
    pub node: Option<&'a str>,
    pub stamp: u64,
    pub origin: &'a str,
    pub idle_ms: u64,
}

impl Update {
    pub fn view(&self) -> UpdateRef<'_> {
        UpdateRef {
            key: &self.key,
            node: self.node.as_deref(),
            stamp: self.stamp,
            origin: &self.origin,
            idle_ms: self.idle_ms,
        }
    }
}

impl UpdateRef<'_> {
    pub fn to_update(&self) -> Update {
        Update {
            key: Arc::from(self.key),
            node: self.node.map(Arc::from),
            stamp: self.stamp,
            origin: Arc::from(self.origin),
            idle_ms: self.idle_ms,
        }
    }
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
    live: Lru<Live>,
    dead: Lru<Tomb>,
    names: Names,
}

impl Shard {
    /// Version (stamp, origin id) of what this shard knows about `key`, live or deleted.
    fn version(&self, h: u64, key: &str) -> Option<(u64, u16)> {
        if let Some(e) = self.live.peek(h, key) {
            return Some((e.stamp, e.origin));
        }
        self.dead.peek(h, key).map(|t| (t.stamp, t.origin))
    }
}

pub struct StickyTable {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    /// The origin of the table's clock (entries' last use, tombstones' age).
    base: Instant,
    expire_ms: AtomicU64,
    capacity: AtomicUsize,
    origin: Arc<str>,
    /// This table's cluster, as its changes are tagged.
    cluster: Arc<str>,
    changes: broadcast::Sender<Change>,
}

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

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn per_shard(capacity: usize) -> usize {
    capacity.div_ceil(SHARDS).max(1)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds between two points of a table's clock, as a duration (never negative).
fn since(now: i64, then: i64) -> Duration {
    Duration::from_millis(u64::try_from(now.saturating_sub(then)).unwrap_or(0))
}

/// `idle` milliseconds before `now` on a table's clock.
fn ago(now: i64, idle_ms: u64) -> i64 {
    now.saturating_sub(i64::try_from(idle_ms).unwrap_or(i64::MAX))
}

/// Tenths of a second on a table's clock (the announcement times).
fn tenths(now: i64) -> u32 {
    u32::try_from(now.max(0) / 100).unwrap_or(u32::MAX)
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
        let hasher = RandomState::new();
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        live: Lru::new(per),
                        dead: Lru::new(per),
                        names: Names::default(),
                    })
                })
                .collect(),
            hasher,
            base: Instant::now(),
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

    /// Now, in milliseconds on this table's clock.
    fn clock(&self) -> i64 {
        i64::try_from(self.base.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        crate::sync::lock(&self.shards[i])
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard of a key's hash: bits the shard's own table does not use (it takes
    /// the low bits for the bucket and the top seven for its control bytes).
    fn shard_of(h: u64) -> usize {
        ((h >> 32) as usize) % SHARDS
    }

    fn shard(&self, h: u64) -> MutexGuard<'_, Shard> {
        self.lock(Self::shard_of(h))
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
        // Announced when more than the interval has passed (tenths of a second).
        let touch = u32::try_from(self.touch_interval().as_millis() / 100).unwrap_or(u32::MAX);
        let h = self.hash(key);
        let now = self.clock();
        let mut g = self.shard(h);
        let (result, announce) = match g.live.get_mut(h, key) {
            Some(e) if since(now, e.used) <= expire => {
                e.used = now;
                let t = tenths(now);
                let announce = (t.saturating_sub(e.announced) > touch).then(|| {
                    e.announced = t;
                    (e.node, e.stamp, e.origin)
                });
                let node = e.node;
                (Lookup::Hit(g.names.get(node).clone()), announce)
            }
            Some(_) => {
                g.live.pop(h, key);
                (Lookup::Stale, None)
            }
            None => (Lookup::Miss, None),
        };
        let announce = announce.map(|(node, stamp, origin)| {
            (
                g.names.get(node).clone(),
                stamp,
                g.names.get(origin).clone(),
            )
        });
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
        let h = self.hash(&key);
        let now = self.clock();
        let stamp;
        {
            let mut g = self.shard(h);
            stamp = match g.version(h, &key) {
                Some((s, _)) => now_ms().max(s + 1),
                None => now_ms(),
            };
            g.dead.pop(h, &key);
            match g.ids(&self.origin, Some(&node)) {
                Some((o, Some(n))) => g.live.put(
                    h,
                    &key,
                    Live {
                        stamp,
                        used: now,
                        announced: tenths(now),
                        node: n,
                        origin: o,
                    },
                ),
                _ => {
                    g.live.pop(h, &key);
                    tracing::debug!("sticky shard has no room for another name; entry not kept");
                }
            }
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
        let h = self.hash(&key);
        let now = self.clock();
        let stamp = {
            let mut g = self.shard(h);
            let Some(old) = g.live.pop(h, &key) else {
                return false;
            };
            let stamp = now_ms().max(old.stamp + 1);
            if let Some((origin, _)) = g.ids(&self.origin, None) {
                g.dead.put(
                    h,
                    &key,
                    Tomb {
                        stamp,
                        origin,
                        at: now,
                    },
                );
            }
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
        self.merge_ref(&u.view())
    }

    /// [`StickyTable::merge`] of a borrowed update.
    pub fn merge_ref(&self, u: &UpdateRef<'_>) -> bool {
        // Peers store the same form; an older peer (or snapshot) may send a long key.
        let key = stored_key(u.key);
        let h = self.hash(&key);
        let (wall, now, expire) = (now_ms(), self.clock(), self.expire());
        let mut g = self.shard(h);
        merge_into(&mut g, h, &key, u, wall, now, expire)
    }

    /// Merge many updates (a frame of a full sync), taking each shard's lock once for
    /// all of its updates; returns how many changed the table.
    pub fn merge_many<'a>(&self, updates: impl IntoIterator<Item = UpdateRef<'a>>) -> usize {
        let mut changed = 0;
        let mut batch: Vec<(usize, u64, UpdateRef<'a>)> = Vec::new();
        for u in updates {
            if u.key.len() > MAX_STORED_KEY {
                changed += usize::from(self.merge_ref(&u));
                continue;
            }
            let h = self.hash(u.key);
            batch.push((Self::shard_of(h), h, u));
        }
        // Stable: two updates of one key in a batch keep their order.
        batch.sort_by_key(|(s, _, _)| *s);
        let (wall, now, expire) = (now_ms(), self.clock(), self.expire());
        for run in batch.chunk_by(|a, b| a.0 == b.0) {
            let mut g = self.lock(run[0].0);
            for (_, h, u) in run {
                changed += usize::from(merge_into(&mut g, *h, u.key, u, wall, now, expire));
            }
        }
        changed
    }

    pub fn get(&self, key: &str) -> Option<EntryView> {
        let key = &*stored_key(key);
        let expire = self.expire();
        let h = self.hash(key);
        let now = self.clock();
        let g = self.shard(h);
        g.live.peek(h, key).and_then(|e| {
            let age = since(now, e.used);
            (age <= expire).then(|| EntryView {
                key: key.to_string(),
                node: g.names.get(e.node).to_string(),
                expires_in: expire - age,
                stamp: e.stamp,
                origin: g.names.get(e.origin).to_string(),
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
            let now = self.clock();
            let mut g = self.lock(i);
            while let Some((_, e)) = g.live.peek_lru() {
                if since(now, e.used) > expire {
                    g.live.pop_lru();
                    n += 1;
                } else {
                    break;
                }
            }
            while let Some((_, t)) = g.dead.peek_lru() {
                if since(now, t.at) > expire {
                    g.dead.pop_lru();
                } else {
                    break;
                }
            }
        }
        n
    }

    /// Hand one shard's entries and tombstones to `f`, borrowed, under the shard's lock
    /// (a full sync encodes them straight into frames), in storage order: about the
    /// order they were inserted, which the receiver then keeps as its LRU order.
    pub fn for_each_in_shard(&self, shard: usize, mut f: impl FnMut(UpdateRef<'_>)) {
        let expire = self.expire();
        let now = self.clock();
        let g = self.lock(shard % SHARDS);
        for (k, e) in g.live.iter_stored() {
            let idle = since(now, e.used);
            if idle <= expire {
                f(UpdateRef {
                    key: k,
                    node: Some(g.names.get(e.node)),
                    stamp: e.stamp,
                    origin: g.names.get(e.origin),
                    idle_ms: millis(idle),
                });
            }
        }
        for (k, t) in g.dead.iter_stored() {
            f(UpdateRef {
                key: k,
                node: None,
                stamp: t.stamp,
                origin: g.names.get(t.origin),
                idle_ms: millis(since(now, t.at)),
            });
        }
    }

    /// Entries and tombstones of one shard (live and deleted) as a count.
    pub fn shard_len(&self, shard: usize) -> usize {
        let g = self.lock(shard % SHARDS);
        g.live.len() + g.dead.len()
    }

    /// One shard's entries and tombstones as updates.
    pub fn export_shard(&self, shard: usize) -> Vec<Update> {
        let mut out = Vec::new();
        self.for_each_in_shard(shard, |u| out.push(u.to_update()));
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
