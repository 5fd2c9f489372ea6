//! The session registry: the handles that close relayed sessions from outside their
//! tasks — a node marked down, in maintenance or removed, a listener removed, the end
//! of the shutdown grace (and later: paced evacuation).
//!
//! A [`SessionScope`] is a tree of cancellation: the process's root (shutdown), a
//! child per listener, and under each listener a child per node (`cluster::Node`
//! keeps those). A relayed session waits on exactly one scope, its node's under its
//! listener, so any of the three closes it.
//!
//! Closing always goes through [`SessionScope::close`], which bumps a process-wide
//! epoch before it cancels: a relay task polls its wait (two shared locks) only when
//! the epoch moved since its last poll ([`epoch`]), not on every wake-up of every
//! connection. The token inside is private, so nothing can cancel it past the epoch.

use std::sync::atomic::{AtomicU64, Ordering};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Why a node's sessions were closed, kept on the node for the access log (the relay
/// reads it once its scope closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseCause {
    NodeDown = 1,
    Maint = 2,
    LeaderChange = 3,
    Removed = 4,
    /// A rebalance (by counts or by hash) moved the session to another node.
    Rebalance = 5,
}

impl CloseCause {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(CloseCause::NodeDown),
            2 => Some(CloseCause::Maint),
            3 => Some(CloseCause::LeaderChange),
            4 => Some(CloseCause::Removed),
            5 => Some(CloseCause::Rebalance),
            _ => None,
        }
    }
}

/// Bumped before any scope is closed.
static EPOCH: AtomicU64 = AtomicU64::new(0);

/// The current close epoch: a session whose last look at its scope was at this epoch
/// need not look again.
pub fn epoch() -> u64 {
    EPOCH.load(Ordering::SeqCst)
}

/// A set of sessions that can be closed together; see the module comment.
#[derive(Clone, Debug, Default)]
pub struct SessionScope(CancellationToken);

impl SessionScope {
    /// A root scope (the process's: shutdown).
    pub fn root() -> Self {
        Self(CancellationToken::new())
    }

    /// A scope closed with this one (or on its own).
    pub fn child(&self) -> Self {
        Self(self.0.child_token())
    }

    /// Close every session of this scope and of its children.
    pub fn close(&self) {
        EPOCH.fetch_add(1, Ordering::SeqCst);
        self.0.cancel();
    }

    pub fn is_closed(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Completes when the scope is closed (for set-up steps that wait, e.g. a client
    /// held while no node can take it).
    pub async fn closed(&self) {
        self.0.cancelled().await
    }

    /// The wait a relay task keeps; poll it only when [`epoch`] moved.
    pub fn wait(&self) -> WaitForCancellationFutureOwned {
        self.0.clone().cancelled_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_a_scope_closes_its_children_and_moves_the_epoch() {
        let root = SessionScope::root();
        let listener = root.child();
        let node = listener.child();
        let other = root.child();
        let before = epoch();
        listener.close();
        assert!(epoch() > before);
        assert!(listener.is_closed() && node.is_closed());
        assert!(!root.is_closed() && !other.is_closed());
        root.close();
        assert!(other.is_closed());
    }
}
