//! A node's sessions by hash slot (`balance = "hash"`), for `mqgate cluster rebalance`
//! by the hash (`crate::cluster::rebalance`).
//!
//! All the clients of a slot (`crate::cluster::balance::SLOTS`) have the same hash
//! owner. A node counts its live sessions per slot (an array of counters made with
//! its first hash-placed session, 16 KB) and puts each in its slot's lane
//! (`crate::cluster::pacing`). A rebalance then knows, per node, exactly which slots
//! another node owns and how many sessions each holds; it closes the lanes holding
//! them, and the sessions woken of slots that stay carry on on the lane anew. Nothing
//! per session but the slot number it keeps.

use crate::cluster::balance::SLOTS;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Live sessions of a node per hash slot.
#[derive(Default)]
pub struct SlotCounts(OnceLock<Box<[AtomicU32]>>);

impl SlotCounts {
    fn counts(&self) -> &[AtomicU32] {
        self.0
            .get_or_init(|| (0..SLOTS).map(|_| AtomicU32::new(0)).collect())
    }

    pub fn add(&self, slot: u16) {
        if let Some(c) = self.counts().get(usize::from(slot)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn remove(&self, slot: u16) {
        if let Some(c) = self.counts().get(usize::from(slot)) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The slots holding sessions, with how many.
    pub fn held(&self) -> Vec<(u16, usize)> {
        let Some(counts) = self.0.get() else {
            return Vec::new();
        };
        counts
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let k = c.load(Ordering::Relaxed) as usize;
                (k > 0).then_some((i as u16, k))
            })
            .collect()
    }
}

/// A set of slots a rebalance moves away from a node.
pub struct Moving([u64; SLOTS as usize / 64]);

impl Moving {
    pub fn new(slots: impl IntoIterator<Item = u16>) -> Self {
        let mut bits = [0u64; SLOTS as usize / 64];
        for s in slots {
            if let Some(w) = bits.get_mut(usize::from(s) / 64) {
                *w |= 1 << (s % 64);
            }
        }
        Moving(bits)
    }

    pub fn contains(&self, slot: u16) -> bool {
        self.0
            .get(usize::from(slot) / 64)
            .is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_moving_sets() {
        let c = SlotCounts::default();
        assert!(c.held().is_empty());
        c.add(7);
        c.add(7);
        c.add(4095);
        c.remove(7);
        assert_eq!(c.held(), vec![(7, 1), (4095, 1)]);
        let m = Moving::new([0, 63, 64, 4095]);
        for s in [0, 63, 64, 4095] {
            assert!(m.contains(s), "{s}");
        }
        for s in [1, 62, 65, 4094] {
            assert!(!m.contains(s), "{s}");
        }
        assert!(!m.contains(SLOTS), "out of range");
    }
}
