//! Balancing among candidate nodes: rendezvous hashing on the sticky key (so that
//! independent gateways agree without talking), least connections, round robin.
//! Each returns every candidate, best first, so that retries take the next ones.

use super::Node;
use std::sync::Arc;

/// Keys are hashed to one of this many slots, and rendezvous hashing ranks the nodes per
/// slot. All the clients of a slot share their owner, so a node can hold its sessions
/// in one lane per slot and `mqgate cluster rebalance` can close exactly the slots
/// whose owner is another node without a handle per session
/// (`crate::cluster::pacing`). 4,096 slots keep the spread within a few per cent of
/// even for up to a few dozen nodes.
pub const SLOTS: u16 = 4096;

/// Highest-random-weight order of `key`'s slot: score = hash(slot, node name), highest
/// first.
pub fn rendezvous<'a>(key: &str, nodes: Vec<&'a Arc<Node>>) -> Vec<&'a Arc<Node>> {
    rendezvous_slot(slot(key), nodes)
}

/// [`rendezvous`] for a slot already known.
pub fn rendezvous_slot(slot: u16, mut nodes: Vec<&Arc<Node>>) -> Vec<&Arc<Node>> {
    nodes.sort_by_cached_key(|n| std::cmp::Reverse(score(slot, &n.name)));
    nodes
}

/// The slot of a sticky key.
pub fn slot(key: &str) -> u16 {
    (mix(fnv(key.bytes())) % u64::from(SLOTS)) as u16
}

/// The rendezvous score of `node` for `slot`: FNV-1a over the slot, a separator and the
/// node name, then a 64-bit finaliser: stable across processes, versions and platforms
/// (unlike `DefaultHasher`).
pub fn score(slot: u16, node: &str) -> u64 {
    let bytes = slot
        .to_le_bytes()
        .into_iter()
        .chain(std::iter::once(0xff))
        .chain(node.bytes());
    mix(fnv(bytes))
}

fn fnv(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Fewest active connections first. Ties are broken by a rotating start (`counter`),
/// so that a burst of clients arriving before any is counted does not all go to the
/// first node in config order.
pub fn least_conn(counter: usize, nodes: Vec<&Arc<Node>>) -> Vec<&Arc<Node>> {
    let mut nodes = round_robin(counter, nodes);
    nodes.sort_by_key(|n| n.active());
    nodes
}

pub fn round_robin(counter: usize, mut nodes: Vec<&Arc<Node>>) -> Vec<&Arc<Node>> {
    if !nodes.is_empty() {
        let k = counter % nodes.len();
        nodes.rotate_left(k);
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::{score, slot, SLOTS};

    #[test]
    fn rendezvous_spreads_and_is_stable() {
        let nodes = ["node1", "node2", "node3"];
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let s = slot(&format!("client-{i}"));
            let best = (0..3).max_by_key(|&j| score(s, nodes[j])).unwrap_or(0);
            counts[best] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread {counts:?}");
        }
        // Slots themselves: each node owns close to a third of them.
        let mut owned = [0usize; 3];
        for s in 0..SLOTS {
            owned[(0..3).max_by_key(|&j| score(s, nodes[j])).unwrap_or(0)] += 1;
        }
        for o in owned {
            assert!((1250..1480).contains(&o), "uneven slots {owned:?}");
        }
        // Fixed values: gateways built from different versions must agree.
        // (computed independently: FNV-1a 64 then the finaliser, in Python).
        assert_eq!(slot("client-1"), 2093);
        assert_eq!(score(1, "node1"), 7_427_745_039_479_807_264);
        assert_ne!(score(1, "b"), score(2, "b"));
    }
}
