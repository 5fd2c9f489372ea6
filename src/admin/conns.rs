//! The admin server's open connections, so that idle ones make room for new ones.
//!
//! A fixed set of slots, each taken at accept and held until the connection closed, let
//! 128 silent connections lock out liveness probes and scrapes for up to the header
//! timeout (issue 23, item 6). Here every connection is accepted when it arrives, and
//! when [`Conns::max`] are open the one idle the longest is closed to make room. A
//! connection is *busy* only while a complete request is being handled; one that sends
//! nothing, or trickles a request header, ages like an idle keep-alive connection and is
//! among the first to go, while a probe's fresh connection is the last. Only when every
//! open connection is busy does a new one wait (see [`Conns::freed`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub(super) struct Conns {
    max: usize,
    table: Mutex<Table>,
    freed: Notify,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Slot>,
}

struct Slot {
    /// Requests being handled on it (HTTP/1.1: at most one).
    busy: u32,
    /// Accepted, or its last request handled.
    idle_since: Instant,
    peer: SocketAddr,
    close: CancellationToken,
}

/// A registered connection; dropping it unregisters it.
pub(super) struct Admitted {
    conns: Arc<Conns>,
    pub id: u64,
    /// Cancelled when the connection is closed to make room for a newer one.
    pub close: CancellationToken,
}

/// A request being handled; dropping it makes its connection idle again.
pub(super) struct Busy {
    conns: Arc<Conns>,
    id: u64,
}

impl Conns {
    pub fn new(max: usize) -> Arc<Conns> {
        Arc::new(Conns {
            max: max.max(1),
            table: Mutex::default(),
            freed: Notify::new(),
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a new connection from `peer`. When `max` are open, the one idle the
    /// longest is closed first (its address is returned for the log). `None` when every
    /// open connection is busy: wait for [`Conns::freed`] and try again.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<(Admitted, Option<SocketAddr>)> {
        let mut t = self.table();
        let mut evicted = None;
        if t.open.len() >= self.max {
            let (&oldest, _) = t
                .open
                .iter()
                .filter(|(_, s)| s.busy == 0)
                .min_by_key(|(&id, s)| (s.idle_since, id))?;
            if let Some(s) = t.open.remove(&oldest) {
                s.close.cancel();
                evicted = Some(s.peer);
            }
        }
        let id = t.next_id;
        t.next_id += 1;
        let close = CancellationToken::new();
        t.open.insert(
            id,
            Slot {
                busy: 0,
                idle_since: Instant::now(),
                peer,
                close: close.clone(),
            },
        );
        Some((
            Admitted {
                conns: self.clone(),
                id,
                close,
            },
            evicted,
        ))
    }

    /// Wait until a connection closes or finishes a request (after [`Conns::admit`]
    /// found every connection busy).
    pub async fn freed(&self) {
        self.freed.notified().await;
    }

    /// Connection `id` is handling a request until the returned guard is dropped.
    pub fn busy(self: &Arc<Self>, id: u64) -> Busy {
        if let Some(s) = self.table().open.get_mut(&id) {
            s.busy += 1;
        }
        Busy {
            conns: self.clone(),
            id,
        }
    }

    /// Open connections.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table().open.len()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.conns.table().open.remove(&self.id);
        self.conns.freed.notify_one();
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(s) = self.conns.table().open.get_mut(&self.id) {
            s.busy = s.busy.saturating_sub(1);
            s.idle_since = Instant::now();
        }
        self.conns.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn the_longest_idle_connection_makes_room() {
        let conns = Conns::new(3);
        let admit = |p| conns.admit(peer(p)).unwrap_or_else(|| panic!("admit {p}"));
        let (a, _) = admit(1);
        let (b, _) = admit(2);
        let (c, _) = admit(3);
        // a is handling a request: the longest idle is b.
        let busy_a = conns.busy(a.id);
        let (d, evicted) = admit(4);
        assert_eq!(evicted, Some(peer(2)));
        assert!(b.close.is_cancelled() && !a.close.is_cancelled());
        assert_eq!(conns.len(), 3);
        // a's request is done: it is now the most recently idle; c goes next.
        drop(busy_a);
        let (_e, evicted) = admit(5);
        assert_eq!(evicted, Some(peer(3)));
        assert!(c.close.is_cancelled());
        // An evicted connection closing does not remove another.
        drop(b);
        drop(c);
        assert_eq!(conns.len(), 3);
        drop(d);
        assert_eq!(conns.len(), 2);
    }

    #[test]
    fn all_busy_means_wait() {
        let conns = Conns::new(1);
        let (a, _) = conns.admit(peer(1)).unwrap_or_else(|| panic!("admit"));
        let busy = conns.busy(a.id);
        assert!(conns.admit(peer(2)).is_none());
        drop(busy);
        assert!(conns.admit(peer(2)).is_some());
        assert!(a.close.is_cancelled());
    }
}
