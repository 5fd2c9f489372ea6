//! Per-session handles of a node's sessions in a `balance = "hash"` cluster, by the key
//! the cluster hashes on (`crate::cluster::sticky_key`): `mqgate cluster rebalance`
//! closes exactly the sessions whose hash owner is now another node
//! ([`crate::cluster::pacing::rebalance_hash`]). Each such session waits on a scope of its own,
//! a child of its lane (so node down, paced closes and shutdown still close it); the
//! entry leaves the table when the session ends (`ActiveGuard`'s drop). Other clusters
//! register nothing.

use crate::sessions::SessionScope;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Members {
    map: Mutex<HashMap<String, (u64, SessionScope)>>,
    next: AtomicU64,
}

impl Members {
    /// Register a session of `key` waiting on `scope`; returns its ticket for
    /// [`leave`](Self::leave). A second session with the same key replaces the first
    /// (the broker takes over the session too).
    pub fn join(&self, key: &str, scope: SessionScope) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        crate::sync::lock(&self.map).insert(key.to_string(), (id, scope));
        id
    }

    /// The session with ticket `id` ended.
    pub fn leave(&self, key: &str, id: u64) {
        let mut g = crate::sync::lock(&self.map);
        if g.get(key).is_some_and(|(i, _)| *i == id) {
            g.remove(key);
        }
    }

    /// The live sessions' keys and scopes.
    pub fn snapshot(&self) -> Vec<(String, SessionScope)> {
        crate::sync::lock(&self.map)
            .iter()
            .filter(|(_, (_, s))| !s.is_closed())
            .map(|(k, (_, s))| (k.clone(), s.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        crate::sync::lock(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_leaves_only_its_own_entry() {
        let m = Members::default();
        let root = SessionScope::root();
        let a = m.join("c1", root.child());
        let b = m.join("c1", root.child());
        m.leave("c1", a);
        assert_eq!(m.len(), 1, "the newer session of c1 stays");
        m.leave("c1", b);
        assert!(m.is_empty());
        let s = root.child();
        m.join("c2", s.clone());
        s.close();
        assert!(m.snapshot().is_empty(), "closed sessions are not listed");
    }
}
