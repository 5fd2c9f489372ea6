//! `mqgate cluster rebalance`: move clients from fuller to emptier nodes, by live
//! connections (closing some of a node's lanes, `crate::cluster::pacing`) or, with
//! `balance = "hash"`, by the hash owner of the slots a node holds sessions of
//! (`crate::cluster::slots`).

use crate::cluster::balance;
use crate::cluster::pacing::LANES;
use crate::cluster::slots::Moving;
use crate::cluster::{Cluster, Health, Node};
use crate::sessions::CloseCause;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Move clients from fuller to emptier nodes of `cluster`: every ready node that is up
/// and holds more than `(1 + tolerance)` × the mean closes enough of its lanes to come
/// down to about the mean, `rate` sessions a second, MQTT 5 clients told 0x9C; the
/// clients reconnect and the cluster's balance places them. Returns (node, sessions to
/// move) per node it acts on. Clients with a sticky entry come back to the same node:
/// rebalancing moves clients that keep no session (or `balance` without sticky).
pub fn rebalance(cluster: &Arc<Cluster>, rate: u32, tolerance: f64) -> Vec<(String, usize)> {
    if cluster.config().balance == crate::config::Balance::Hash {
        return rebalance_hash(cluster, rate);
    }
    let nodes = ready_up(cluster);
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
        n.set_close_cause(CloseCause::Rebalance);
        handle.spawn(async move {
            n.pacing.close_some(lanes, pause).await;
        });
    }
    plan
}

/// `balance = "hash"`: each ready node that is up closes exactly the sessions whose
/// key's owner (rendezvous over the ready nodes that are up, as routing picks) is
/// another node — those of the slots another node owns — about `rate` sessions a
/// second (jittered), MQTT 5 clients told 0x9C. The sticky entries of those slots
/// that point to the node are rewritten to their owner first (clients offline now
/// included), so that the clients land there. The tolerance does not apply: the hash
/// decides. Returns (node, sessions to move) per node.
pub fn rebalance_hash(cluster: &Arc<Cluster>, rate: u32) -> Vec<(String, usize)> {
    let nodes = ready_up(cluster);
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
    // Per node: the slots it gives away, with their owner, and its sessions per lane.
    let mut giving: HashMap<String, (HashMap<u16, String>, Vec<usize>)> = HashMap::new();
    for n in &nodes {
        let mut slots = HashMap::new();
        let lanes = LANES;
        let mut per_lane = vec![0; lanes];
        for (slot, sessions) in n.slots.held() {
            let Some(to) = owner(slot).filter(|o| *o != n.name) else {
                continue;
            };
            slots.insert(slot, to);
            per_lane[usize::from(slot) % lanes] += sessions;
        }
        if slots.is_empty() {
            continue;
        }
        plan.push((n.name.clone(), per_lane.iter().sum()));
        giving.insert(n.name.clone(), (slots, per_lane));
    }
    if giving.is_empty() {
        return plan;
    }
    for u in cluster.sticky.export() {
        let Some(to) = u
            .node
            .as_deref()
            .and_then(|from| giving.get(from))
            .and_then(|(slots, _)| slots.get(&balance::slot(&u.key)))
        else {
            continue;
        };
        cluster.sticky.record(&u.key, to);
    }
    for n in &nodes {
        let Some((slots, per_lane)) = giving.remove(&n.name) else {
            continue;
        };
        let moving = Arc::new(Moving::new(slots.into_keys()));
        let n = n.clone();
        n.set_close_cause(CloseCause::Rebalance);
        handle.spawn(async move { n.pacing.close_moving(moving, per_lane, rate).await });
    }
    plan
}

/// The cluster's ready nodes that are up: those a rebalance moves clients between.
fn ready_up(cluster: &Cluster) -> Vec<Arc<Node>> {
    cluster
        .nodes()
        .iter()
        .filter(|n| {
            n.health() == Health::Up && n.admin_state() == crate::cluster::AdminState::Ready
        })
        .cloned()
        .collect()
}
