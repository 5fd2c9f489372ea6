//! The pipes of splice(2) relaying (`[limits] splice`, `max_pipes`; the relaying itself
//! is `crate::relay::splice`). Pipes cost two descriptors each, so [`PipePool`] bounds
//! them (`limits.max_pipes`, HAProxy's `tune.maxpipes`; by default what the open-file
//! limit leaves beside `max_connections`, `crate::fdlimit::pipe_budget`). A large flow
//! takes a pipe ([`Lease`]) and gives it back when it ends; without one it keeps
//! copying. A few empty pipes are kept for the next flow; a pipe a connection left
//! bytes in (it ended in the middle of a transfer) is closed, never reused.

use crate::metrics::SpliceMetrics;
use crate::sync::lock;
use rustix::pipe::{pipe_with, PipeFlags};
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Empty pipes kept open for the next large flow (within the pool's maximum).
pub const IDLE_KEEP: usize = 16;

/// The pipes of one gateway (see the module comment).
pub struct PipePool {
    enabled: AtomicBool,
    state: Mutex<PoolState>,
    metrics: SpliceMetrics,
}

#[derive(Default)]
struct PoolState {
    /// Pipes open: held by flows, or idle.
    open: usize,
    max: usize,
    idle: Vec<PipePair>,
}

/// The two ends of one pipe.
struct PipePair {
    read: OwnedFd,
    write: OwnedFd,
}

impl PipePool {
    /// A pool that gives out no pipe until [`PipePool::configure`]d.
    pub fn new(metrics: SpliceMetrics) -> Self {
        PipePool {
            enabled: AtomicBool::new(false),
            state: Mutex::new(PoolState::default()),
            metrics,
        }
    }

    /// Splice on or off, and the most pipes open at once. Applies at once (start-up
    /// and every reload): idle pipes over the new maximum are closed; pipes in use
    /// over it are closed when their flows give them back.
    pub fn configure(&self, enabled: bool, max: usize) {
        self.enabled.store(enabled, Ordering::Relaxed);
        let mut st = lock(&self.state);
        st.max = if enabled { max } else { 0 };
        while st.open > st.max {
            if st.idle.pop().is_none() {
                break;
            }
            st.open -= 1;
        }
        self.metrics.pipes_open.set(st.open as i64);
    }

    /// Splicing is on (`limits.splice = "auto"`).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// A pipe for a large flow: an idle one, or a new one while fewer than the maximum
    /// are open. `None` (counted) when none is left or the kernel refuses one.
    pub fn take(self: &Arc<Self>) -> Option<Lease> {
        if !self.enabled() {
            return None;
        }
        let reused = {
            let mut st = lock(&self.state);
            match st.idle.pop() {
                Some(p) => Some(p),
                None if st.open < st.max => {
                    st.open += 1;
                    self.metrics.pipes_open.set(st.open as i64);
                    None
                }
                None => {
                    drop(st);
                    self.metrics.unavailable.inc();
                    return None;
                }
            }
        };
        let pair = match reused {
            Some(p) => p,
            None => match pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK) {
                Ok((read, write)) => PipePair { read, write },
                Err(e) => {
                    tracing::debug!(error = %e, "no pipe for splice(2); copying");
                    let mut st = lock(&self.state);
                    st.open -= 1;
                    self.metrics.pipes_open.set(st.open as i64);
                    drop(st);
                    self.metrics.unavailable.inc();
                    return None;
                }
            },
        };
        self.metrics.pipes_in_use.inc();
        Some(Lease {
            pool: self.clone(),
            pair: Some(pair),
            in_pipe: 0,
            fills: 0,
            filled_bytes: 0,
        })
    }

    fn give_back(&self, pair: PipePair, empty: bool) {
        self.metrics.pipes_in_use.dec();
        // A pipe not kept is closed after the lock is let go (two close(2) calls).
        let closed = {
            let mut st = lock(&self.state);
            let closed = if empty && st.open <= st.max && st.idle.len() < IDLE_KEEP {
                st.idle.push(pair);
                None
            } else {
                st.open -= 1;
                Some(pair)
            };
            self.metrics.pipes_open.set(st.open as i64);
            closed
        };
        drop(closed);
    }

    /// Pipes open now (in use and idle), and idle among them.
    pub fn counts(&self) -> (usize, usize) {
        let st = lock(&self.state);
        (st.open, st.idle.len())
    }
}

/// One pipe held by one direction of one connection, and the bytes in it; given back
/// to its pool when dropped (closed instead if bytes are left in it).
pub struct Lease {
    pool: Arc<PipePool>,
    pair: Option<PipePair>,
    in_pipe: usize,
    /// Splices into the pipe, and the bytes they moved (how large the segments are).
    fills: u32,
    filled_bytes: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(pair) = self.pair.take() {
            self.pool.give_back(pair, self.in_pipe == 0);
        }
    }
}

impl Lease {
    /// The pipe's read and write ends.
    pub fn ends(&self) -> io::Result<(&OwnedFd, &OwnedFd)> {
        self.pair
            .as_ref()
            .map(|p| (&p.read, &p.write))
            .ok_or_else(|| io::Error::other("pipe already given back"))
    }

    /// Bytes moved into the pipe and not yet out of it.
    pub fn in_pipe(&self) -> usize {
        self.in_pipe
    }

    /// `n` bytes went into the (empty) pipe.
    pub fn filled(&mut self, n: usize) {
        self.in_pipe = n;
        self.fills = self.fills.saturating_add(1);
        self.filled_bytes += n as u64;
    }

    /// Splices into the pipe so far.
    pub fn fills(&self) -> u32 {
        self.fills
    }

    /// Bytes per splice into the pipe so far (0 before the first).
    pub fn mean_fill(&self) -> u64 {
        self.filled_bytes / u64::from(self.fills.max(1))
    }

    /// `n` bytes went out of the pipe to the destination.
    pub fn drained(&mut self, n: usize) {
        self.in_pipe -= n;
        self.pool.metrics.bytes.inc_by(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max: usize) -> Arc<PipePool> {
        let m = crate::metrics::Metrics::new();
        let p = Arc::new(PipePool::new(m.splice.clone()));
        p.configure(true, max);
        p
    }

    #[test]
    fn the_pool_never_opens_more_than_its_maximum() {
        let p = pool(3);
        let leases: Vec<Lease> = (0..5).filter_map(|_| p.take()).collect();
        assert_eq!(leases.len(), 3, "three pipes at most");
        assert_eq!(p.counts(), (3, 0));
        assert_eq!(p.metrics.unavailable.get(), 2, "two flows kept copying");
        assert_eq!(p.metrics.pipes_in_use.get(), 3);
        drop(leases);
        assert_eq!(p.counts(), (3, 3), "empty pipes kept for the next flow");
        assert_eq!(p.metrics.pipes_in_use.get(), 0);
        let again: Vec<Lease> = (0..3).filter_map(|_| p.take()).collect();
        assert_eq!(again.len(), 3);
        assert_eq!(
            p.counts(),
            (3, 0),
            "the idle pipes were reused, none opened"
        );
    }

    #[test]
    fn idle_pipes_are_bounded_and_a_pipe_with_bytes_left_is_closed() {
        let p = pool(IDLE_KEEP + 4);
        let leases: Vec<Lease> = (0..IDLE_KEEP + 4).filter_map(|_| p.take()).collect();
        assert_eq!(leases.len(), IDLE_KEEP + 4);
        drop(leases);
        assert_eq!(
            p.counts(),
            (IDLE_KEEP, IDLE_KEEP),
            "only IDLE_KEEP kept open"
        );
        let mut l = p.take().expect("an idle pipe");
        l.in_pipe = 10; // a connection ended with bytes in its pipe
        drop(l);
        assert_eq!(
            p.counts(),
            (IDLE_KEEP - 1, IDLE_KEEP - 1),
            "a pipe with stale bytes is closed, never handed to another connection"
        );
    }

    #[test]
    fn a_lower_maximum_or_off_closes_idle_pipes_and_gives_out_none() {
        let p = pool(8);
        let leases: Vec<Lease> = (0..8).filter_map(|_| p.take()).collect();
        drop(leases);
        assert_eq!(p.counts(), (8, 8));
        p.configure(true, 2);
        assert_eq!(p.counts(), (2, 2));
        p.configure(false, 8);
        assert_eq!(p.counts(), (0, 0));
        assert!(p.take().is_none(), "off: no pipe");
        assert_eq!(p.metrics.unavailable.get(), 0, "off is not a shortage");
        p.configure(true, 0);
        assert!(p.take().is_none(), "max_pipes = 0: no pipe");
        assert_eq!(p.metrics.unavailable.get(), 1);
    }

    #[test]
    fn a_lease_knows_how_large_its_fills_were() {
        let p = pool(1);
        let mut l = p.take().expect("a pipe");
        assert_eq!(l.mean_fill(), 0);
        l.filled(60_000);
        l.drained(60_000);
        l.filled(4_000);
        l.drained(4_000);
        assert_eq!(l.mean_fill(), 32_000);
        assert_eq!(
            p.metrics.bytes.get(),
            64_000,
            "spliced bytes counted as drained"
        );
    }

    #[test]
    fn pipes_in_use_over_a_lowered_maximum_are_closed_when_given_back() {
        let p = pool(4);
        let leases: Vec<Lease> = (0..4).filter_map(|_| p.take()).collect();
        p.configure(true, 1);
        assert_eq!(p.counts(), (4, 0), "in use: not taken away");
        assert!(p.take().is_none());
        drop(leases);
        assert_eq!(p.counts(), (1, 1));
    }
}
