//! Which peer a gateway takes its full table from (issue 30): ONE, not every one.
//!
//! On links of protocol version 3, nothing is sent in bulk until asked: each side asks
//! the other with a SYNC_REQUEST as soon as the link is up. A gateway that has not yet
//! received a full table since it started asks the first link that comes up for
//! [`Scope::Full`] (its whole table); every other link, and every link once a full
//! table has arrived, is asked for [`Scope::Own`]: only the entries that peer wrote
//! itself. The peers form a full mesh and each entry is replicated by the gateway that
//! wrote it, so the full copy plus every peer's own entries is complete, even for an
//! entry still on its way between two other peers when the full copy was taken, and
//! after a partition heals. A joining gateway so receives one full table and, from
//! the others, together about one table's worth of own entries (mostly duplicates,
//! which merge as a comparison), instead of one full table from every peer.
//!
//! If the link a full table comes from ends before the table is complete, the next
//! link that is up is asked for it (links of version 2 always send their full table
//! unasked, which also counts).

use std::sync::Mutex;
use tokio::sync::mpsc;

/// What a SYNC_REQUEST asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The whole table (every entry and tombstone the peer has).
    Full,
    /// Only the entries and tombstones the peer wrote itself (its name as origin).
    Own,
}

impl Scope {
    pub fn code(self) -> u8 {
        match self {
            Scope::Full => 0,
            Scope::Own => 1,
        }
    }

    pub fn from_code(c: u8) -> Option<Scope> {
        match c {
            0 => Some(Scope::Full),
            1 => Some(Scope::Own),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scope::Full => "full",
            Scope::Own => "own",
        }
    }
}

#[derive(Default)]
struct State {
    /// A full table has been received since the start.
    done: bool,
    /// The link a full table is being received from.
    source: Option<u64>,
    /// Links of version 3 that are up: id, peer, where to ask them for a full table.
    links: Vec<(u64, String, mpsc::UnboundedSender<Scope>)>,
}

/// The gateway's choice of full-table source, shared by its links.
#[derive(Default)]
pub struct Pull {
    state: Mutex<State>,
}

impl Pull {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// A link of version 3 to `peer` is up: what to ask it for. `ask` reaches the link
    /// later if it has to send the full table after all (its source went away).
    pub fn link_up(&self, id: u64, peer: &str, ask: mpsc::UnboundedSender<Scope>) -> Scope {
        let mut s = self.lock();
        s.links.push((id, peer.to_string(), ask));
        if !s.done && s.source.is_none() {
            s.source = Some(id);
            tracing::info!(peer, "asking this peer for its full sticky table");
            Scope::Full
        } else {
            Scope::Own
        }
    }

    /// A full table has arrived on link `id` (asked for, or sent unasked).
    pub fn full_received(&self, id: u64) {
        let mut s = self.lock();
        tracing::debug!(link = id, "a full sticky table has been received");
        s.done = true;
        s.source = None;
    }

    /// Link `id` ended: if the full table was coming from it, ask the next link up.
    pub fn link_down(&self, id: u64) {
        let mut s = self.lock();
        s.links.retain(|(i, _, _)| *i != id);
        if s.source != Some(id) {
            return;
        }
        s.source = None;
        if s.done {
            return;
        }
        while let Some((next, peer, ask)) = s.links.first().cloned() {
            if ask.send(Scope::Full).is_ok() {
                s.source = Some(next);
                tracing::info!(
                    peer,
                    "the full sticky table's source went away before it was complete; \
                     asking this peer instead"
                );
                return;
            }
            s.links.remove(0);
        }
    }

    /// Whether a full table has been received since the start.
    pub fn done(&self) -> bool {
        self.lock().done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_full_table_then_own_entries_and_a_fallback_when_the_source_dies() {
        let p = Pull::default();
        let (a, mut ra) = mpsc::unbounded_channel();
        let (b, mut rb) = mpsc::unbounded_channel();
        let (c, mut rc) = mpsc::unbounded_channel();
        assert_eq!(p.link_up(1, "gate-a", a), Scope::Full);
        assert_eq!(p.link_up(2, "gate-b", b), Scope::Own);
        assert_eq!(p.link_up(3, "gate-c", c), Scope::Own);
        // gate-a dies mid-sync: the next link up (gate-b) is asked, once.
        p.link_down(1);
        assert_eq!(rb.try_recv().ok(), Some(Scope::Full));
        assert!(ra.try_recv().is_err() && rc.try_recv().is_err());
        assert!(!p.done());
        // Another link ending changes nothing.
        p.link_down(3);
        assert!(rb.try_recv().is_err());
        p.full_received(2);
        assert!(p.done());
        // Once complete: later links are asked for their own entries only, and losing
        // the source asks nobody.
        let (d, mut rd) = mpsc::unbounded_channel();
        assert_eq!(p.link_up(4, "gate-d", d), Scope::Own);
        p.link_down(2);
        assert!(rd.try_recv().is_err());
    }

    #[test]
    fn a_source_whose_link_is_gone_is_skipped() {
        let p = Pull::default();
        let (a, _ra) = mpsc::unbounded_channel();
        let (b, rb) = mpsc::unbounded_channel();
        let (c, mut rc) = mpsc::unbounded_channel();
        p.link_up(1, "gate-a", a);
        p.link_up(2, "gate-b", b);
        p.link_up(3, "gate-c", c);
        drop(rb); // gate-b's link task is gone, its link_down not yet seen
        p.link_down(1);
        assert_eq!(rc.try_recv().ok(), Some(Scope::Full));
        for code in [0, 1] {
            assert_eq!(Scope::from_code(code).map(Scope::code), Some(code));
        }
        assert_eq!(Scope::from_code(2), None);
    }
}
