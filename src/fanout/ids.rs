//! Packet identifier tables of a fan-out session.
//!
//! Two kinds, one type: the identifiers mqgate assigns on the client connection to
//! the QoS 1/2 PUBLISHes it merges from the nodes (one 1..=65535 space for all nodes
//! together, each mapped back to its node and that node's own identifier), and the
//! identifiers it uses on each node connection for what the client sends there
//! (SUBSCRIBE, UNSUBSCRIBE, QoS 1/2 PUBLISH, replayed SUBSCRIBEs). An identifier is
//! in use from [`Ids::alloc`] until [`Ids::free`]; the next one is searched from the
//! last one given out (a bitmap, 64 at a time), so a freed identifier is not reused at
//! once. Pure, no I/O.

use std::collections::HashMap;

/// A table of identifiers in use, each with its value `T`, at most `limit` at once.
#[derive(Debug)]
pub struct Ids<T> {
    used: HashMap<u16, T>,
    /// One bit per identifier in use (1024 words, allocated at the first `alloc`), so
    /// that finding a free one near exhaustion skips 64 at a time.
    bits: Vec<u64>,
    next: u16,
    limit: usize,
}

impl<T> Ids<T> {
    /// At most `limit` (clamped to 1..=65535) identifiers at once.
    pub fn new(limit: usize) -> Self {
        Ids {
            used: HashMap::new(),
            bits: Vec::new(),
            next: 1,
            limit: limit.clamp(1, 65_535),
        }
    }

    /// True when [`Ids::alloc`] would succeed.
    pub fn available(&self) -> bool {
        self.used.len() < self.limit
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    /// A free identifier for `v`, or `v` back when `limit` are in use.
    pub fn alloc(&mut self, v: T) -> Result<u16, T> {
        if !self.available() {
            return Err(v);
        }
        if self.bits.is_empty() {
            self.bits = vec![0; 1024];
            // Identifier 0 does not exist: marked used for good.
            self.bits[0] = 1;
        }
        // `limit` <= 65535 and fewer are used: a free one exists within one turn.
        let Some(id) = self.free_from(self.next).or_else(|| self.free_from(1)) else {
            return Err(v);
        };
        self.bits[usize::from(id / 64)] |= 1 << (id % 64);
        self.next = if id == u16::MAX { 1 } else { id + 1 };
        self.used.insert(id, v);
        Ok(id)
    }

    /// The first free identifier at or after `from` (none past 65535).
    fn free_from(&self, from: u16) -> Option<u16> {
        let mut w = usize::from(from / 64);
        // Bits below `from` in its word count as used.
        let mut word = self.bits.get(w)? | ((1u64 << (from % 64)) - 1);
        loop {
            if word != u64::MAX {
                let bit = (!word).trailing_zeros() as usize;
                return u16::try_from(w * 64 + bit).ok();
            }
            w += 1;
            word = *self.bits.get(w)?;
        }
    }

    pub fn get(&self, id: u16) -> Option<&T> {
        self.used.get(&id)
    }

    pub fn get_mut(&mut self, id: u16) -> Option<&mut T> {
        self.used.get_mut(&id)
    }

    pub fn free(&mut self, id: u16) -> Option<T> {
        let v = self.used.remove(&id);
        if v.is_some() {
            if let Some(w) = self.bits.get_mut(usize::from(id / 64)) {
                *w &= !(1 << (id % 64));
            }
        }
        if self.used.is_empty() && self.used.capacity() > 1024 {
            self.used = HashMap::new();
        }
        v
    }

    /// Remove every entry and hand them over (a node connection that ended).
    pub fn drain(&mut self) -> Vec<(u16, T)> {
        let out = self.used.drain().collect();
        self.used = HashMap::new();
        self.bits = Vec::new();
        out
    }

    /// Identifiers whose value passes `f`.
    pub fn ids_where(&self, mut f: impl FnMut(&T) -> bool) -> Vec<u16> {
        self.used
            .iter()
            .filter(|(_, v)| f(v))
            .map(|(k, _)| *k)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_nonzero_and_not_reused_at_once() {
        let mut t = Ids::new(65_535);
        let a = t.alloc('a').ok();
        let b = t.alloc('b').ok();
        assert_eq!((a, b), (Some(1), Some(2)));
        assert_eq!(t.free(1), Some('a'));
        assert_eq!(t.alloc('c').ok(), Some(3), "freed ids come back last");
        assert_eq!(t.get(2), Some(&'b'));
        assert_eq!(t.free(9), None);
    }

    #[test]
    fn the_whole_space_then_exhaustion_then_reuse() {
        let mut t = Ids::new(usize::MAX);
        let mut seen = std::collections::HashSet::new();
        for i in 0..65_535u32 {
            let id = t.alloc(i).expect("an id is free");
            assert_ne!(id, 0);
            assert!(seen.insert(id));
        }
        assert!(!t.available());
        assert_eq!(t.alloc(7), Err(7), "65,535 in use: none left");
        assert_eq!(t.free(40_000), Some(39_999));
        assert_eq!(t.alloc(8), Ok(40_000), "the one freed is found");
        assert_eq!(t.drain().len(), 65_535);
        assert!(t.is_empty() && t.available());
    }

    #[test]
    fn a_limit_below_the_space() {
        let mut t = Ids::new(2);
        assert!(t.alloc(()).is_ok() && t.alloc(()).is_ok());
        assert!(t.alloc(()).is_err());
        assert_eq!(t.len(), 2);
        assert_eq!(t.ids_where(|_| true).len(), 2);
    }
}
