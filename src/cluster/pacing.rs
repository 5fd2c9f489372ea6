//! Paced closing of a node's sessions (`[clusters.X.shaping] close_rate`, evacuation).
//!
//! A relayed session waits on one scope (`crate::sessions`). To close a node's sessions
//! a few at a time without a handle per session, each node spreads its sessions over
//! [`LANES`] lanes per listener: a lane is a child scope of the node's listener scope
//! (so node down, listener removal and shutdown still close everything at once), and a
//! new session takes the next lane round-robin. In a `balance = "hash"` cluster a
//! session with a sticky key takes its key's slot's lane instead
//! (`crate::cluster::balance::SLOTS`), which counts its sessions: all the clients of a
//! slot have the same hash owner, so [`rebalance_hash`] closes exactly the slots another
//! node owns, at no cost per session until then. A paced close closes one lane at a
//! time, the pause between two lanes set so that about `rate` sessions close per second
//! (each pause jittered by ±25 %), then closes the node's scopes for good.
//!
//! MQTT 5 clients on the boundary-tracking relay (the relay's polite mode) get a
//! DISCONNECT first, with the node's [`close_reason`](Pacing::close_reason): 0x9C "use
//! another server" for a paced close, 0x8B "server shutting down" when the gateway
//! itself stops ([`set_shutting_down`]).

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
    /// Round-robin lanes, made on first use.
    lanes: Vec<SessionScope>,
    /// `balance = "hash"`: a lane per hash slot that has had a session since the
    /// parent opened.
    slots: HashMap<u16, SlotLane>,
}

/// A slot's lane and its sessions: each holds a clone of `held` (its [`Lane::held`]),
/// so the strong count less one is how many live in it.
struct SlotLane {
    scope: SessionScope,
    held: Arc<()>,
}

impl SlotLane {
    fn sessions(&self) -> usize {
        Arc::strong_count(&self.held) - 1
    }
}

/// The lane a new session waits on.
pub struct Lane {
    pub scope: SessionScope,
    /// Kept by the session while it lives (slot lanes only): counts it in its lane.
    pub held: Option<Arc<()>>,
}

impl Pacing {
    /// The lane a new session through listener `listener` waits on: a lane under
    /// `parent` (the node's scope for that listener); `slot`'s lane for a session
    /// placed by hash, else the next round-robin lane.
    pub fn lane(&self, listener: &str, parent: &SessionScope, slot: Option<u16>) -> Lane {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % LANES;
        let mut g = crate::sync::lock(&self.lanes);
        if !g.contains_key(listener) {
            g.insert(
                listener.to_string(),
                Lanes {
                    parent: parent.clone(),
                    lanes: Vec::new(),
                    slots: HashMap::new(),
                },
            );
        }
        let Some(entry) = g.get_mut(listener) else {
            return Lane {
                scope: parent.clone(),
                held: None,
            };
        };
        // The node hands out one scope per listener until it is closed: a closed
        // parent means a new one.
        if entry.parent.is_closed() {
            entry.parent = parent.clone();
            entry.lanes.clear();
            entry.slots.clear();
            // A new generation of sessions: a later close has a reason only if it is
            // paced again.
            self.reason.store(0, Ordering::Release);
        }
        if let Some(slot) = slot {
            let lane = entry.slots.entry(slot).or_insert_with(|| SlotLane {
                scope: parent.child(),
                held: Arc::new(()),
            });
            if lane.scope.is_closed() {
                *lane = SlotLane {
                    scope: parent.child(),
                    held: Arc::new(()),
                };
            }
            return Lane {
                scope: lane.scope.clone(),
                held: Some(lane.held.clone()),
            };
        }
        if entry.lanes.is_empty() {
            entry.lanes = (0..LANES).map(|_| parent.child()).collect();
        }
        if entry.lanes[i].is_closed() {
            entry.lanes[i] = parent.child();
        }
        Lane {
            scope: entry.lanes[i].clone(),
            held: None,
        }
    }

    /// Every open lane with sessions: the round-robin ones (their sessions are not
    /// counted) and the slots' that hold any.
    fn open_lanes(&self) -> Vec<SessionScope> {
        let g = crate::sync::lock(&self.lanes);
        g.values()
            .flat_map(|l| {
                l.lanes.iter().cloned().chain(
                    l.slots
                        .values()
                        .filter(|s| s.sessions() > 0)
                        .map(|s| s.scope.clone()),
                )
            })
            .filter(|s| !s.is_closed())
            .collect()
    }

    /// The open slot lanes with sessions: (slot, lane, sessions).
    fn slot_lanes(&self) -> Vec<(u16, SessionScope, usize)> {
        let g = crate::sync::lock(&self.lanes);
        g.values()
            .flat_map(|l| l.slots.iter())
            .filter(|(_, s)| !s.scope.is_closed() && s.sessions() > 0)
            .map(|(slot, s)| (*slot, s.scope.clone(), s.sessions()))
            .collect()
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

/// Move clients from fuller to emptier nodes of `cluster`: every ready node that is up
/// and holds more than `(1 + tolerance)` × the mean closes enough of its lanes to come
/// down to about the mean, `rate` sessions a second, MQTT 5 clients told 0x9C; the
/// clients reconnect and the cluster's balance places them. Returns (node, sessions to
/// move) per node it acts on. Clients with a sticky entry come back to the same node:
/// rebalancing moves clients that keep no session (or `balance` without sticky).
pub fn rebalance(
    cluster: &Arc<crate::cluster::Cluster>,
    rate: u32,
    tolerance: f64,
) -> Vec<(String, usize)> {
    if cluster.config().balance == crate::config::Balance::Hash {
        return rebalance_hash(cluster, rate);
    }
    let nodes: Vec<Arc<Node>> = cluster
        .nodes()
        .iter()
        .filter(|n| {
            n.health() == Health::Up && n.admin_state() == crate::cluster::AdminState::Ready
        })
        .cloned()
        .collect();
    if nodes.is_empty() {
        return Vec::new();
    }
    let total: usize = nodes.iter().map(|n| n.active()).sum();
    let mean = total as f64 / nodes.len() as f64;
    let mut plan = Vec::new();
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return plan;
    };
    for n in nodes {
        let active = n.active();
        if (active as f64) <= mean * (1.0 + tolerance) || active == 0 {
            continue;
        }
        let excess = active - mean.round() as usize;
        let lanes_held = n.pacing.open_lanes().len().max(1);
        let per_lane = active as f64 / lanes_held as f64;
        let lanes = ((excess as f64 / per_lane).round() as usize).max(1);
        let pause = if rate == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(per_lane / f64::from(rate))
        };
        plan.push((n.name.clone(), (lanes as f64 * per_lane).round() as usize));
        handle.spawn(async move {
            n.pacing.close_some(lanes, pause).await;
        });
    }
    plan
}

/// `balance = "hash"`: each ready node that is up closes exactly the sessions whose
/// key's owner (rendezvous over the ready nodes that are up, as routing picks) is
/// another node — the lanes of the slots another node owns — about `rate` sessions a
/// second (jittered), MQTT 5 clients told 0x9C. The sticky entries of those slots that
/// point to the node are rewritten to their owner first (clients offline now
/// included), so the clients land there. The tolerance does not apply: the hash
/// decides. Returns (node, sessions to move) per node.
pub fn rebalance_hash(cluster: &Arc<crate::cluster::Cluster>, rate: u32) -> Vec<(String, usize)> {
    use crate::cluster::balance;
    let nodes: Vec<Arc<Node>> = cluster
        .nodes()
        .iter()
        .filter(|n| {
            n.health() == Health::Up && n.admin_state() == crate::cluster::AdminState::Ready
        })
        .cloned()
        .collect();
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return Vec::new();
    };
    let owners: Vec<&Arc<Node>> = nodes.iter().collect();
    let owner = |slot: u16| {
        balance::rendezvous_slot(slot, owners.clone())
            .first()
            .map(|o| o.name.clone())
    };
    let mut plan = Vec::new();
    // Per node: the slots it gives away, with their owner.
    let mut giving: HashMap<String, HashMap<u16, String>> = HashMap::new();
    for n in &nodes {
        let mut moving = Vec::new();
        for (slot, lane, sessions) in n.pacing.slot_lanes() {
            let Some(to) = owner(slot).filter(|o| *o != n.name) else {
                continue;
            };
            giving.entry(n.name.clone()).or_default().insert(slot, to);
            moving.push((lane, sessions));
        }
        if moving.is_empty() {
            continue;
        }
        plan.push((n.name.clone(), moving.iter().map(|(_, k)| k).sum()));
        n.pacing.reason.store(USE_ANOTHER_SERVER, Ordering::Release);
    }
    if giving.is_empty() {
        return plan;
    }
    for u in cluster.sticky.export() {
        let Some(to) = u
            .node
            .as_deref()
            .and_then(|from| giving.get(from))
            .and_then(|slots| slots.get(&balance::slot(&u.key)))
        else {
            continue;
        };
        cluster.sticky.record(&u.key, to);
    }
    for n in &nodes {
        let Some(slots) = giving.get(&n.name) else {
            continue;
        };
        let moving: Vec<(SessionScope, usize)> = n
            .pacing
            .slot_lanes()
            .into_iter()
            .filter(|(slot, _, _)| slots.contains_key(slot))
            .map(|(_, lane, k)| (lane, k))
            .collect();
        handle.spawn(async move {
            for (i, (lane, sessions)) in moving.iter().enumerate() {
                lane.close();
                if i + 1 < moving.len() && rate > 0 {
                    let pause = Duration::from_secs_f64(*sessions as f64 / f64::from(rate));
                    tokio::time::sleep(jitter(pause, i)).await;
                }
            }
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_are_children_of_the_node_scope_and_jitter_stays_within_a_quarter() {
        let p = Pacing::default();
        let parent = SessionScope::root();
        let a = p.lane("mqtt", &parent, None).scope;
        let b = p.lane("mqtt", &parent, None).scope;
        b.close();
        assert!(!a.is_closed());
        parent.close();
        assert!(a.is_closed() && b.is_closed());
        let fresh = SessionScope::root();
        assert!(!p.lane("mqtt", &fresh, None).scope.is_closed());
        for i in 0..200 {
            let j = jitter(Duration::from_millis(100), i);
            assert!(j >= Duration::from_millis(75) && j <= Duration::from_millis(125));
        }
        assert_eq!(p.close_reason(), None);
    }

    #[test]
    fn slot_lanes_count_their_sessions_and_start_over_once_closed() {
        let p = Pacing::default();
        let parent = SessionScope::root();
        let a = p.lane("mqtt", &parent, Some(7));
        let b = p.lane("mqtt", &parent, Some(7));
        let c = p.lane("mqtt", &parent, Some(9));
        let counts = |p: &Pacing| {
            let mut v: Vec<(u16, usize)> =
                p.slot_lanes().into_iter().map(|(s, _, k)| (s, k)).collect();
            v.sort();
            v
        };
        assert_eq!(counts(&p), vec![(7, 2), (9, 1)]);
        drop(b);
        drop(c);
        assert_eq!(
            counts(&p),
            vec![(7, 1)],
            "a lane with no session is not listed"
        );
        a.scope.close();
        assert!(counts(&p).is_empty(), "a closed lane is not listed");
        let d = p.lane("mqtt", &parent, Some(7));
        assert!(!d.scope.is_closed(), "a closed slot lane is made anew");
        assert_eq!(counts(&p), vec![(7, 1)]);
        assert_eq!(p.open_lanes().len(), 1);
    }
}
