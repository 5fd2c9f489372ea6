//! Paced closing of a node's sessions (`[clusters.X.shaping] close_rate`, evacuation).
//!
//! A relayed session waits on one scope (`crate::sessions`). To close a node's sessions
//! a few at a time without a handle per session, each node spreads its sessions over
//! [`LANES`] lanes per listener: a lane is a child scope of the node's listener scope
//! (so node down, listener removal and shutdown still close everything at once), and a
//! new session takes the next lane round-robin. In a `balance = "hash"` cluster a
//! session with a sticky key takes lane `slot % LANES` of its key's hash slot instead,
//! so that a hash rebalance (`crate::cluster::slots`) closes only the lanes holding the
//! slots another node owns; the sessions it wakes of other slots carry on
//! ([`Pacing::survive`]). A paced close closes one lane at a time, the pause between two lanes set so that about `rate` sessions close per second
//! (each pause jittered by ±25 %), then closes the node's scopes for good.
//!
//! MQTT 5 clients on the boundary-tracking relay (the relay's polite mode) get a
//! DISCONNECT first, with the node's [`close_reason`](Pacing::close_reason): 0x9C "use
//! another server" for a paced close, 0x8B "server shutting down" when the gateway
//! itself stops ([`set_shutting_down`]).

use crate::cluster::slots::Moving;
use crate::cluster::{Health, Node};
use crate::metrics::Metrics;
use crate::sessions::{CloseCause, SessionScope};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// Lanes per node and listener.
pub const LANES: usize = 64;

/// DISCONNECT reason codes (MQTT 5, 3.14.2.1).
pub const USE_ANOTHER_SERVER: u8 = 0x9C;
pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;

static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// The gateway is stopping: sessions closed from now on are told 0x8B.
pub fn set_shutting_down() {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
}

/// A node's admin state as `mqgate status` and the status page show it: with the
/// progress of a running paced close.
pub fn state_label(state: &str, lanes_left: usize) -> String {
    if lanes_left == 0 {
        state.to_string()
    } else {
        format!("{state}, closing sessions ({lanes_left} lane(s) left)")
    }
}

/// The `reason` label of `mqgate_disconnects_sent_total`.
pub fn reason_label(code: u8) -> &'static str {
    match code {
        USE_ANOTHER_SERVER => "use_another_server",
        SERVER_SHUTTING_DOWN => "server_shutting_down",
        0x8E => "session_taken_over",
        _ => "other",
    }
}

/// A node's lanes and the state of its paced close.
#[derive(Default)]
pub struct Pacing {
    lanes: Mutex<HashMap<String, Lanes>>,
    next: AtomicUsize,
    /// The reason a polite relay sends before closing (0 = none: plain close).
    reason: AtomicU8,
    /// Sessions closed by paced closes so far, and lanes left in the one running.
    pub closed_paced: AtomicU64,
    pub lanes_left: AtomicUsize,
    /// The rate of the next paced close (an evacuation's), instead of `close_rate`.
    rate_override: AtomicU32,
    /// Set to stop the running paced close (evacuation cancelled).
    cancel: AtomicBool,
    /// A paced close is running.
    pub running: AtomicBool,
}

struct Lanes {
    parent: SessionScope,
    /// Round-robin lanes (a hash-placed session: its slot's, `slot % LANES`), made on
    /// first use.
    lanes: Vec<SessionScope>,
    /// Per lane: the hash rebalance that closed it last, if that is what closed it
    /// (its sessions of slots not moving carry on, [`Pacing::survive`]).
    moved: Vec<Option<Arc<Moving>>>,
}

impl Pacing {
    /// The scope a new session through listener `listener` waits on: a lane under
    /// `parent` (the node's scope for that listener): its hash slot's lane for a
    /// session placed by hash, else the next lane round-robin.
    pub fn lane(&self, listener: &str, parent: &SessionScope, slot: Option<u16>) -> SessionScope {
        let i = match slot {
            Some(s) => usize::from(s) % LANES,
            None => self.next.fetch_add(1, Ordering::Relaxed) % LANES,
        };
        let mut g = crate::sync::lock(&self.lanes);
        if !g.contains_key(listener) {
            g.insert(
                listener.to_string(),
                Lanes {
                    parent: parent.clone(),
                    lanes: Vec::new(),
                    moved: Vec::new(),
                },
            );
        }
        let Some(entry) = g.get_mut(listener) else {
            return parent.clone();
        };
        // The node hands out one scope per listener until it is closed: a closed
        // parent means a new one.
        if entry.parent.is_closed() {
            entry.parent = parent.clone();
            entry.lanes.clear();
            entry.moved.clear();
            // A new generation of sessions: a later close has a reason only if it is
            // paced again.
            self.reason.store(0, Ordering::Release);
        }
        if entry.lanes.is_empty() {
            entry.lanes = (0..LANES).map(|_| parent.child()).collect();
            entry.moved = vec![None; LANES];
        }
        if entry.lanes[i].is_closed() {
            entry.lanes[i] = parent.child();
        }
        entry.lanes[i].clone()
    }

    /// A session of hash slot `slot` through `listener` found its lane closed: when a
    /// hash rebalance closed it and `slot` is not one it moves, the scope to wait on
    /// from now on (the lane anew); `None` when the session is to end.
    pub fn survive(&self, listener: &str, slot: u16) -> Option<SessionScope> {
        let i = usize::from(slot) % LANES;
        let mut g = crate::sync::lock(&self.lanes);
        let entry = g.get_mut(listener)?;
        if entry.parent.is_closed() {
            return None;
        }
        let moving = entry.moved.get(i)?.as_ref()?;
        if moving.contains(slot) {
            return None;
        }
        if entry.lanes[i].is_closed() {
            entry.lanes[i] = entry.parent.child();
        }
        Some(entry.lanes[i].clone())
    }

    /// Forget what hash rebalances closed: a close of another kind is starting, and
    /// every session it closes is to end.
    fn forget_moves(&self) {
        for l in crate::sync::lock(&self.lanes).values_mut() {
            l.moved.iter_mut().for_each(|m| *m = None);
        }
    }

    /// Every open lane.
    pub(crate) fn open_lanes(&self) -> Vec<SessionScope> {
        let g = crate::sync::lock(&self.lanes);
        g.values()
            .flat_map(|l| l.lanes.iter().cloned())
            .filter(|s| !s.is_closed())
            .collect()
    }

    /// A hash rebalance: close the lanes holding `moving`'s slots, one after the
    /// other, pausing `sessions in the lane` / `rate` seconds between two (jittered);
    /// their sessions of other slots carry on ([`survive`](Self::survive)).
    /// `per_lane`: sessions of moving slots per lane.
    pub async fn close_moving(&self, moving: Arc<Moving>, per_lane: Vec<usize>, rate: u32) {
        self.reason.store(USE_ANOTHER_SERVER, Ordering::Release);
        let picked: Vec<(usize, usize)> = per_lane
            .iter()
            .enumerate()
            .filter(|(_, k)| **k > 0)
            .map(|(i, k)| (i, *k))
            .collect();
        for (n, (i, sessions)) in picked.iter().enumerate() {
            let lanes: Vec<SessionScope> = {
                let mut g = crate::sync::lock(&self.lanes);
                g.values_mut()
                    .filter_map(|l| {
                        let lane = l.lanes.get(*i)?.clone();
                        if let Some(m) = l.moved.get_mut(*i) {
                            *m = Some(moving.clone());
                        }
                        Some(lane)
                    })
                    .collect()
            };
            for lane in lanes {
                lane.close();
            }
            if n + 1 < picked.len() && rate > 0 {
                let pause = Duration::from_secs_f64(*sessions as f64 / f64::from(rate));
                tokio::time::sleep(jitter(pause, n)).await;
            }
        }
    }

    /// What a session closed right now should be told (MQTT 5), if anything.
    pub fn close_reason(&self) -> Option<u8> {
        if SHUTTING_DOWN.load(Ordering::SeqCst) {
            return Some(SERVER_SHUTTING_DOWN);
        }
        match self.reason.load(Ordering::Acquire) {
            0 => None,
            r => Some(r),
        }
    }

    /// Close every lane of every listener, `rate` sessions a second (`active` live
    /// now), then call `done` (which closes the node's scopes for good).
    pub async fn close_paced(
        &self,
        rate: u32,
        active: usize,
        gauge: &prometheus::IntGauge,
        done: impl FnOnce(),
    ) {
        self.cancel.store(false, Ordering::SeqCst);
        self.running.store(true, Ordering::SeqCst);
        self.forget_moves();
        self.reason.store(USE_ANOTHER_SERVER, Ordering::Release);
        let all = self.open_lanes();
        let per_lane = active as f64 / all.len().max(1) as f64;
        let pause = if rate == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(per_lane / f64::from(rate))
        };
        self.lanes_left.store(all.len(), Ordering::Relaxed);
        gauge.set(all.len() as i64);
        for (i, lane) in all.iter().enumerate() {
            if self.cancel.load(Ordering::SeqCst) {
                self.lanes_left.store(0, Ordering::Relaxed);
                self.reason.store(0, Ordering::Release);
                self.running.store(false, Ordering::SeqCst);
                return;
            }
            lane.close();
            self.lanes_left.fetch_sub(1, Ordering::Relaxed);
            gauge.dec();
            self.closed_paced
                .fetch_add(per_lane.round() as u64, Ordering::Relaxed);
            if i + 1 < all.len() && !pause.is_zero() {
                tokio::time::sleep(jitter(pause, i)).await;
            }
        }
        done();
        // The reason stays: the sessions of the lanes closed last may not have read
        // it yet. It is cleared when the node's sessions start over (`lane`).
        self.running.store(false, Ordering::SeqCst);
    }

    /// Close `lanes` of this node's lanes (the fullest first), one every `pause`
    /// (jittered), MQTT 5 clients told 0x9C: a rebalance moving about `lanes` × (live
    /// sessions / lanes) clients away. Returns the sessions those lanes held roughly.
    pub async fn close_some(&self, lanes: usize, pause: Duration) {
        self.reason.store(USE_ANOTHER_SERVER, Ordering::Release);
        self.forget_moves();
        let mut picked = self.open_lanes();
        picked.truncate(lanes);
        for (i, lane) in picked.iter().enumerate() {
            lane.close();
            if i + 1 < picked.len() && !pause.is_zero() {
                tokio::time::sleep(jitter(pause, i)).await;
            }
        }
    }

    /// Lanes the running paced close has still to close (0: none runs).
    pub fn lanes_left(&self) -> usize {
        if self.running.load(Ordering::SeqCst) {
            self.lanes_left.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    /// The next paced close of this node runs at `rate` (an evacuation).
    pub fn override_rate(&self, rate: u32) {
        self.rate_override.store(rate, Ordering::SeqCst);
    }

    /// Stop the running paced close after the lane being closed now.
    pub fn cancel(&self) -> bool {
        self.cancel.store(true, Ordering::SeqCst);
        self.running.load(Ordering::SeqCst)
    }
}

/// `d` ± 25 %, spread by a cheap hash of `i`.
fn jitter(d: Duration, i: usize) -> Duration {
    let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58; // 0..63
    let f = 0.75 + (h as f64) / 126.0; // 0.75 ..= 1.25
    d.mul_f64(f)
}

/// At the start of a graceful shutdown: in clusters with a `close_rate`, close every
/// node's sessions paced so that they are all closed within 80 % of `grace` (at
/// `close_rate`, or faster when that would take longer), MQTT 5 clients told 0x8B.
/// Clusters without `close_rate` keep relaying until the grace ends, as before.
pub fn shutdown_paced(
    clusters: Vec<Arc<crate::cluster::Cluster>>,
    metrics: &Arc<Metrics>,
    grace: Duration,
) {
    set_shutting_down();
    let spread = grace.mul_f64(0.8).as_secs_f64();
    for c in clusters {
        let configured = c.config().shaping.close_rate;
        if configured == 0 {
            continue;
        }
        for n in c.nodes().iter() {
            let needed = if spread > 0.0 {
                (n.active() as f64 / spread).ceil() as u32
            } else {
                0
            };
            // 0 (no grace): close at once.
            let rate = if spread > 0.0 {
                configured.max(needed)
            } else {
                0
            };
            // At shutdown the access log says `shutdown` whatever the cause here.
            close_node(metrics, n, rate, CloseCause::Removed);
        }
    }
}

/// Close `node`'s sessions: at once when `rate` is 0 or the broker is not up (nothing
/// to protect: its clients are gone already), else paced in a task of its own.
pub fn close_node(metrics: &Arc<Metrics>, node: &Arc<Node>, rate: u32, cause: CloseCause) {
    let rate = match node.pacing.rate_override.swap(0, Ordering::SeqCst) {
        0 => rate,
        r => r,
    };
    let handle = tokio::runtime::Handle::try_current();
    match handle {
        Ok(h) if rate > 0 && node.health() == Health::Up => {
            let node = node.clone();
            let gauge = metrics
                .shaping
                .paced_lanes_left
                .with_label_values(&[&node.cluster, &node.name]);
            node.set_close_cause(cause);
            h.spawn(async move {
                let n = node.clone();
                let active = node.active();
                tracing::info!(cluster = %node.cluster, node = %node.name, rate, active, "closing the node's sessions, paced");
                node.pacing
                    .close_paced(rate, active, &gauge, move || n.close_sessions(cause))
                    .await;
                gauge.set(0);
                tracing::info!(cluster = %node.cluster, node = %node.name, left = node.active(), "paced close over");
            });
        }
        _ => node.close_sessions(cause),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_are_children_of_the_node_scope_and_jitter_stays_within_a_quarter() {
        let p = Pacing::default();
        let parent = SessionScope::root();
        let a = p.lane("mqtt", &parent, None);
        let b = p.lane("mqtt", &parent, None);
        b.close();
        assert!(!a.is_closed());
        parent.close();
        assert!(a.is_closed() && b.is_closed());
        let fresh = SessionScope::root();
        assert!(!p.lane("mqtt", &fresh, None).is_closed());
        for i in 0..200 {
            let j = jitter(Duration::from_millis(100), i);
            assert!(j >= Duration::from_millis(75) && j <= Duration::from_millis(125));
        }
        assert_eq!(p.close_reason(), None);
    }

    #[test]
    fn a_hash_rebalance_ends_only_the_sessions_of_moving_slots() {
        let p = Pacing::default();
        let parent = SessionScope::root();
        // Slots 3 and 67 share lane 3.
        let a = p.lane("mqtt", &parent, Some(3));
        let b = p.lane("mqtt", &parent, Some(67));
        let other = p.lane("mqtt", &parent, Some(4));
        let moving = Arc::new(Moving::new([67u16]));
        let mut per_lane = vec![0; LANES];
        per_lane[3] = 1;
        block_on(p.close_moving(moving, per_lane, 0));
        assert!(a.is_closed() && b.is_closed(), "the lane of slot 67 closed");
        assert!(!other.is_closed(), "other lanes stay");
        let again = p
            .survive("mqtt", 3)
            .expect("slot 3 does not move: carries on");
        assert!(!again.is_closed());
        assert!(
            p.survive("mqtt", 67).is_none(),
            "slot 67 moves: its session ends"
        );
        assert!(
            p.survive("mqtt", 4).is_none(),
            "lane 4 was not closed by a rebalance"
        );
        // Any other close forgets the rebalance: its sessions end.
        again.close();
        p.forget_moves();
        assert!(p.survive("mqtt", 3).is_none());
        // A closed parent: nothing survives.
        let c = p.lane("mqtt", &parent, Some(5));
        let mut per_lane = vec![0; LANES];
        per_lane[5] = 1;
        block_on(p.close_moving(Arc::new(Moving::new([69u16])), per_lane, 0));
        assert!(c.is_closed());
        parent.close();
        assert!(p.survive("mqtt", 5).is_none());
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map(|rt| rt.block_on(f))
            .unwrap_or_else(|e| panic!("runtime: {e}"))
    }
}
