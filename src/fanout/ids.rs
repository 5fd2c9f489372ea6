//! Packet identifier tables of a fan-out session.
//!
//! Two kinds, one type: the identifiers mqgate assigns on the client connection to
//! the QoS 1/2 PUBLISHes it merges from the nodes (one 1..=65535 space for all nodes
//! together, each mapped back to its node and that node's own identifier), and the
//! identifiers it uses on each node connection for what the client sends there
//! (SUBSCRIBE, UNSUBSCRIBE, QoS 1/2 PUBLISH, replayed SUBSCRIBEs). An identifier is
//! in use from [`Ids::alloc`] until [`Ids::free`]; the next one is searched from the
//! last one given out, so a freed identifier is not reused at once. Pure, no I/O.

use std::collections::HashMap;

/// A table of identifiers in use, each with its value `T`, at most `limit` at once.
#[derive(Debug)]
pub struct Ids<T> {
    used: HashMap<u16, T>,
    next: u16,
    limit: usize,
}

impl<T> Ids<T> {
    /// At most `limit` (clamped to 1..=65535) identifiers at once.
    pub fn new(limit: usize) -> Self {
        Ids {
            used: HashMap::new(),
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

    /// A free identifier for `v`, or `None` (and `v` back) when `limit` are in use.
    pub fn alloc(&mut self, v: T) -> Result<u16, T> {
        if !self.available() {
            return Err(v);
        }
        // `limit` <= 65535 and fewer are used: a free one exists within one turn.
        loop {
            let id = self.next;
            self.next = if self.next == u16::MAX {
                1
            } else {
                self.next + 1
            };
            if let std::collections::hash_map::Entry::Vacant(e) = self.used.entry(id) {
                e.insert(v);
                return Ok(id);
            }
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
        if self.used.is_empty() && self.used.capacity() > 1024 {
            self.used = HashMap::new();
        }
        v
    }

    /// Remove every entry and hand them over (a node connection that ended).
    pub fn drain(&mut self) -> Vec<(u16, T)> {
        let out = self.used.drain().collect();
        self.used = HashMap::new();
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
