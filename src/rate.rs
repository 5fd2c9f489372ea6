//! `per_ip_connect_rate`'s token buckets: one per source, bounded, never scanned on
//! the accept path. Used by the transport layer (at accept, or behind a PROXY header
//! once the real source is known).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use tokio::time::Instant;

/// Shards of the [`RateLimiter`] (a power of two), each with its own lock.
const RATE_SHARDS: usize = 64;
/// Sources one shard keeps per generation: 64 × 3,584 = 229,376 sources a generation,
/// at most twice that in all. 3,584 buckets fill a 4,096-slot hash table to its load
/// limit, so a table never grows past that (about 135 KB; 17 MB for all 128 tables).
const RATE_SHARD_CAP: usize = 3584;
/// A bucket left alone this long is full again, the same as no bucket: the age at which
/// a generation is dropped.
const RATE_GENERATION_US: u64 = 1_000_000;

/// Token buckets for `per_ip_connect_rate` (connections per second, bursts up to one
/// second's worth), one per source: an IPv4 address (also in its IPv4-mapped IPv6 form,
/// as on a listener bound to `[::]`), or an IPv6 /64 (what one IPv6 host or subscriber
/// line usually holds: per address, one client could take 2^64 budgets).
///
/// The accept loop asks for every connection, so nothing here scans the table: sources
/// are spread over `RATE_SHARDS` locks by a keyed hash (no client can aim at one
/// shard), and each shard keeps two generations of buckets. When the current
/// generation is a second old, the one before it (whose buckets are all full again by
/// then) is dropped whole and a new one begins; a source found in the previous
/// generation moves to the current one. Per connection: one keyed hash, one or two
/// look-ups, at times the clearing of a bounded table. Memory is bounded too: a
/// generation that reaches `RATE_SHARD_CAP` sources is ended early, so beyond about
/// 230,000 new sources a second some sources are forgotten before their bucket has
/// refilled (they get a fresh burst); a source that keeps connecting stays in the
/// current generation and is never forgotten.
pub struct RateLimiter {
    hasher: RandomState,
    start: Instant,
    shards: Box<[Mutex<RateShard>]>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            hasher: RandomState::new(),
            start: Instant::now(),
            shards: (0..RATE_SHARDS)
                .map(|_| Mutex::new(RateShard::default()))
                .collect(),
        }
    }
}

impl RateLimiter {
    /// Take one connection from `ip`'s budget of `rate` per second (0 = unlimited);
    /// false if there is none left.
    pub fn allow(&self, ip: IpAddr, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let now = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.allow_at(rate_source(ip), rate, now)
    }

    /// [`RateLimiter::allow`] for source `key` at `now` (µs since `start`).
    fn allow_at(&self, key: u128, rate: u32, now: u64) -> bool {
        let shard = (self.hasher.hash_one(key) as usize) & (RATE_SHARDS - 1);
        let mut g = crate::sync::lock(&self.shards[shard]);
        g.allow(key, f64::from(rate), now)
    }
}

/// The source a connection counts against: an IPv4 address (as its IPv4-mapped IPv6
/// address, whose low 64 bits are never zero), or the /64 of an IPv6 address (low 64
/// bits zero).
fn rate_source(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6) & (u128::MAX << 64),
    }
}

/// One shard of the [`RateLimiter`]: two generations of buckets.
#[derive(Default)]
struct RateShard {
    /// Buckets used since `since`.
    cur: HashMap<u128, Bucket>,
    /// Buckets last used in the generation before; dropped whole at the next turn.
    prev: HashMap<u128, Bucket>,
    /// When `cur` began (µs since the limiter's start).
    since: u64,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// Last use, µs since the limiter's start.
    last: u64,
}

impl RateShard {
    fn allow(&mut self, key: u128, rate: f64, now: u64) -> bool {
        if now.saturating_sub(self.since) >= RATE_GENERATION_US
            || (self.cur.len() >= RATE_SHARD_CAP && !self.cur.contains_key(&key))
        {
            self.turn(now);
        }
        let prev = &mut self.prev;
        let b = self.cur.entry(key).or_insert_with(|| {
            prev.remove(&key).unwrap_or(Bucket {
                tokens: rate,
                last: now,
            })
        });
        let refill = now.saturating_sub(b.last) as f64 / 1e6 * rate;
        b.tokens = (b.tokens + refill).min(rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Begin a new generation: the previous one is dropped (its buckets hold plain
    /// numbers: freeing them is clearing the table's control bytes, at most a few KB).
    fn turn(&mut self, now: u64) {
        std::mem::swap(&mut self.cur, &mut self.prev);
        self.cur.clear();
        self.since = now;
    }
}

/// A token bucket of CONNECT admissions (`[clusters.X.shaping] connect_rate`,
/// `node_connect_rate`; `crate::shaping`).
#[derive(Debug)]
pub struct ConnectBucket {
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    /// Tokens left (fractions count: a refill is continuous).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
    /// The rate the bucket was last used with (a change of rate starts a full bucket).
    rate: u32,
}

impl Default for ConnectBucket {
    fn default() -> Self {
        ConnectBucket {
            state: Mutex::new(BucketState {
                tokens: 0.0,
                at: Instant::now(),
                rate: 0,
            }),
        }
    }
}

impl ConnectBucket {
    /// Take one admission at `rate` per second (0 = unlimited); false if none is left.
    pub fn allow(&self, rate: u32) -> bool {
        self.allow_at(rate, Instant::now())
    }

    pub(crate) fn allow_at(&self, rate: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let mut s = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let cap = f64::from(rate);
        if s.rate != rate {
            s.rate = rate;
            s.tokens = cap;
        } else {
            let dt = now.saturating_duration_since(s.at).as_secs_f64();
            s.tokens = (s.tokens + dt * cap).min(cap);
        }
        s.at = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_allows_burst_then_refuses() {
        let r = RateLimiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let allowed = (0..10).filter(|_| r.allow(ip, 5)).count();
        assert_eq!(allowed, 5);
        assert!(
            r.allow("10.0.0.2".parse().unwrap(), 5),
            "other sources are unaffected"
        );
        assert!(r.allow(ip, 0), "0 = unlimited");
    }

    /// An IPv6 client usually holds a whole /64: its addresses share one budget. IPv4
    /// stays per address, also when it arrives as an IPv4-mapped IPv6 address (a
    /// listener bound to `[::]`).
    #[test]
    fn rate_limit_is_per_v6_slash_64_and_per_v4_address() {
        let r = RateLimiter::default();
        let ip = |s: &str| -> IpAddr { s.parse().expect("address") };
        assert!(r.allow(ip("2001:db8:1:2::1"), 2));
        assert!(r.allow(ip("2001:db8:1:2:ffff:ffff:ffff:fffe"), 2));
        assert!(
            !r.allow(ip("2001:db8:1:2:abcd::7"), 2),
            "a third address of the same /64 is over the budget"
        );
        assert!(
            r.allow(ip("2001:db8:1:3::1"), 2),
            "the next /64 has its own budget"
        );

        assert!(r.allow(ip("10.0.0.1"), 1));
        assert!(!r.allow(ip("10.0.0.1"), 1));
        assert!(
            !r.allow(ip("::ffff:10.0.0.1"), 1),
            "the IPv4-mapped form is the same client"
        );
        assert!(
            r.allow(ip("10.0.0.2"), 1),
            "IPv4 neighbours have their own budget"
        );
        assert!(r.allow(ip("::ffff:10.0.0.3"), 1));
    }

    const SEC: u64 = 1_000_000;

    /// Dropping a generation forgets only buckets that are full again: a source that
    /// used its budget stays refused across a turn, and is forgotten a generation later.
    #[test]
    fn rate_generations_forget_only_buckets_that_are_full_again() {
        let mut s = RateShard::default();
        let (a, other) = (
            rate_source([10, 0, 0, 1].into()),
            rate_source([10, 0, 0, 2].into()),
        );
        assert!(s.allow(a, 1.0, SEC * 9 / 10));
        assert!(!s.allow(a, 1.0, SEC * 95 / 100), "budget used");
        // A second after the shard began, another source begins a new generation; `a`,
        // found in the previous one, moves back and is still refused.
        assert!(s.allow(other, 1.0, SEC));
        assert_eq!((s.cur.len(), s.prev.len()), (1, 1));
        assert!(
            !s.allow(a, 1.0, SEC * 105 / 100),
            "0.15 tokens: still refused"
        );
        assert!(s.cur.contains_key(&a) && s.prev.is_empty());
        // Idle sources go a generation at a time, without any call visiting them.
        assert!(s.allow(other, 1.0, SEC * 21 / 10));
        assert!(s.cur.len() == 1 && s.prev.contains_key(&a));
        assert!(s.allow(other, 1.0, SEC * 32 / 10));
        assert!(!s.cur.contains_key(&a) && !s.prev.contains_key(&a));
        assert!(s.allow(a, 1.0, SEC * 32 / 10), "its bucket was full anyway");
    }

    /// Far more than 100,000 sources within a second (600,000 IPv6 /64s): no hash table
    /// ever holds more than a shard's cap or grows past its size, so each connect
    /// clears at most one bounded table and looks up one or two keys; the whole table
    /// stays under its bound; a source that keeps connecting is never forgotten and
    /// stays limited throughout.
    #[test]
    fn rate_table_beyond_100k_sources_is_bounded_and_keeps_the_busy_ones() {
        let r = RateLimiter::default();
        let busy = rate_source([192, 0, 2, 1].into());
        let mut busy_allowed = 0;
        for i in 0..600_000u64 {
            let net =
                std::net::Ipv6Addr::new(0x2001, 0xdb8, (i >> 16) as u16, i as u16, 0, 0, 0, 1);
            // All within 0.6 s: none of these buckets has refilled.
            let now = i;
            assert!(r.allow_at(rate_source(net.into()), 5, now), "source {i}");
            if i % 100 == 0 && r.allow_at(busy, 5, now) {
                busy_allowed += 1;
            }
        }
        // 5 at once, plus 5 a second for 0.6 s.
        assert!(busy_allowed <= 8, "the busy source got {busy_allowed}");
        let mut total = 0;
        for shard in r.shards.iter() {
            let s = shard.lock().expect("shard");
            assert!(s.cur.len() <= RATE_SHARD_CAP && s.prev.len() <= RATE_SHARD_CAP);
            assert!(
                s.cur.capacity() <= RATE_SHARD_CAP && s.prev.capacity() <= RATE_SHARD_CAP,
                "a table grew past its bound: {} / {}",
                s.cur.capacity(),
                s.prev.capacity()
            );
            total += s.cur.len() + s.prev.len();
        }
        assert!(total <= 2 * RATE_SHARDS * RATE_SHARD_CAP);
        assert!(total < 600_000, "sources beyond the bound are forgotten");
    }
}
