//! Listeners: bind client-facing sockets and run their accept loops.
//!
//! The accept loop does as little as possible: accept, apply the per-IP connection
//! rate (on listeners with `proxy_protocol`, `conn` applies it to the address the
//! PROXY header names instead), and hand one task per connection (`conn::handle`) to
//! the next connection thread (`crate::workers`); the task does the PROXY header, TLS
//! handshake and CONNECT read under their own deadlines. Accept errors
//! such as "too many open files" back off instead of spinning.

use crate::gateway::Shared;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Bind a listening socket with a deep backlog (connect storms) and SO_REUSEADDR /
/// SO_REUSEPORT, so that a new mqgate process can bind the same port while the old one
/// drains (zero-downtime restart). TCP_NODELAY is set here once: Linux copies it to
/// every accepted socket, which saves a `setsockopt` per connection.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        let _ = s.set_only_v6(false);
    }
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Run the accept loop of listener `name` until `stop` is cancelled.
///
/// Sockets are accepted with `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)` and are not
/// registered with any runtime here: the connection thread that gets one
/// (`crate::workers`) registers it, once.
pub async fn accept_loop(
    shared: Arc<Shared>,
    name: String,
    listener: std::net::TcpListener,
    stop: CancellationToken,
) {
    let listener = match watch(Socket::from(listener)) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %name, error = %e, "cannot watch the listening socket; not accepting");
            return;
        }
    };
    let mut backoff = Duration::from_millis(5);
    // The two stop waits live across iterations: made anew in every `select!`, each
    // accepted connection would register and remove two waiters on shared tokens.
    let stopped = stop.cancelled();
    let stopping = shared.stopping.cancelled();
    tokio::pin!(stopped, stopping);
    loop {
        let mut ready = tokio::select! {
            r = listener.readable() => match r {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(listener = %name, error = %e, "listening socket failed; not accepting");
                    break;
                }
            },
            _ = &mut stopped => break,
            _ = &mut stopping => break,
        };
        // Take what the kernel has queued, up to a batch, hand it out, then let other
        // tasks run.
        let mut batch = Vec::new();
        let (mut pause, mut emptied) = (false, false);
        for _ in 0..ACCEPT_BATCH {
            match accept(listener.get_ref()) {
                Ok((tcp, peer)) => {
                    backoff = Duration::from_millis(5);
                    batch.extend(admit(&shared, &name, tcp, peer));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
                    emptied = true;
                    break;
                }
                Err(e) if is_resource_error(&e) => {
                    tracing::warn!(listener = %name, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed: out of resources; backing off");
                    pause = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(listener = %name, error = %e, "accept failed");
                }
            }
        }
        drop(ready);
        shared.workers.spawn_many(&shared.tracker, batch);
        if pause {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = &mut stopped => break,
                _ = &mut stopping => break,
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        } else if !emptied {
            // More may be queued: let this thread's connections run first.
            tokio::task::yield_now().await;
        }
    }
    // Closing a listening socket resets the connections still in its accept queue; with
    // SO_REUSEPORT a new process may be taking over this port. Serve what is queued now
    // (a non-blocking accept until the queue is empty), then close.
    let mut drained = 0usize;
    let listener = listener.into_inner();
    let mut batch = Vec::new();
    while let Ok((tcp, peer)) = accept(&listener) {
        batch.extend(admit(&shared, &name, tcp, peer));
        drained += 1;
    }
    shared.workers.spawn_many(&shared.tracker, batch);
    tracing::debug!(listener = %name, drained, "listener stopped accepting");
}

/// Register a listening socket for readiness with the current runtime.
#[allow(unsafe_code)]
fn watch(listener: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: the `Socket` owns its descriptor and closes it only when dropped; the
    // `AsyncFd` owns the `Socket` (nothing else can close or replace the descriptor),
    // and `Socket::as_raw_fd` always returns that same descriptor.
    unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }.map_err(|e| e.into())
}

/// Connections taken per wake-up before the accept loop yields.
const ACCEPT_BATCH: usize = 64;

/// One non-blocking accept: the new socket is non-blocking and close-on-exec from the
/// start (no `fcntl` per connection).
fn accept(listener: &Socket) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    let (sock, addr) = listener.accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
    let peer = addr
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "peer is not an IP address"))?;
    Ok((sock.into(), peer))
}

/// The task for an accepted connection, to be run on a connection thread; none if
/// `per_ip_connect_rate` refuses it (the socket is closed here).
fn admit(
    shared: &Arc<Shared>,
    name: &str,
    tcp: std::net::TcpStream,
    peer: SocketAddr,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let rt = shared.runtime();
    let lst = rt.listeners.get(name).cloned()?;
    // Behind a PROXY-protocol balancer every connection comes from the
    // balancer: the rate applies to the real client, once its header is read.
    if !lst.config.proxy_protocol
        && over_rate(shared, name, peer, rt.config.limits.per_ip_connect_rate)
    {
        return None;
    }
    let shared = shared.clone();
    Some(async move {
        // Registered with the epoll set of the thread it runs on.
        match TcpStream::from_std(tcp) {
            Ok(tcp) => crate::conn::handle(shared, rt, lst, tcp, peer).await,
            Err(e) => {
                tracing::debug!(client.addr = %peer, error = %e, "cannot register the accepted socket")
            }
        }
    })
}

/// Apply `per_ip_connect_rate` to a new connection from `peer`; when it is over,
/// count and log the refusal and answer true (the caller closes the connection).
pub fn over_rate(shared: &Shared, listener: &str, peer: SocketAddr, rate: u32) -> bool {
    if shared.rate.allow(peer.ip(), rate) {
        return false;
    }
    shared
        .metrics
        .reject(listener, crate::metrics::Reject::Rate);
    tracing::debug!(client.addr = %peer, listener, "refused: over per_ip_connect_rate");
    true
}

fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

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
/// are spread over [`RATE_SHARDS`] locks by a keyed hash (no client can aim at one
/// shard), and each shard keeps two generations of buckets. When the current
/// generation is a second old, the one before it (whose buckets are all full again by
/// then) is dropped whole and a new one begins; a source found in the previous
/// generation moves to the current one. Per connection: one keyed hash, one or two
/// look-ups, at times the clearing of a bounded table. Memory is bounded too: a
/// generation that reaches [`RATE_SHARD_CAP`] sources is ended early, so beyond about
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
        let mut g = match self.shards[shard].lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        l.set_nonblocking(false).unwrap();
        let addr = l.local_addr().unwrap();
        let _c = std::net::TcpStream::connect(addr).unwrap();
        let (a, _) = l.accept().unwrap();
        assert!(a.nodelay().unwrap(), "no per-connection setsockopt needed");
    }

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
