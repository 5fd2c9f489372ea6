//! Who may start a handshake on the peers port, so that connections that never
//! authenticate (idle, slow, hostile) cannot keep configured peers out.
//!
//! - A new connection first waits for its first byte, at most [`FIRST_BYTE_TIMEOUT`],
//!   without holding a handshake slot. At most [`Limits::waiting`] wait at once; one
//!   more closes the one that has waited longest. A real peer sends its first bytes
//!   (TLS ClientHello or HELLO) as soon as it is connected, so it leaves this stage at
//!   once and idle sockets cannot crowd it out.
//! - With its first byte, it takes a handshake slot (the handshake must then finish
//!   within the caller's deadline): a connection from the address of a configured peer
//!   (its `address` host, resolved) uses [`Limits::reserved`] slots of its own first,
//!   then the shared ones; any other source gets only the [`Limits::shared`] slots, at
//!   most [`Limits::per_source`] at once per address. Without a slot the connection is
//!   closed.

use crate::config::PeerConfig;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A new connection must send its first byte within this.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);

/// Bounds on unauthenticated connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections waiting for their first byte.
    pub waiting: usize,
    /// Handshake slots shared by every source.
    pub shared: usize,
    /// Shared slots one source address (other than a configured peer's) may hold.
    pub per_source: usize,
    /// Slots only configured peers' addresses may use.
    pub reserved: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        waiting: 256,
        shared: 32,
        per_source: 4,
        reserved: 16,
    };
}

#[derive(Default)]
struct State {
    waiting: BTreeMap<u64, CancellationToken>,
    next: u64,
    shared: usize,
    reserved: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// The admission state of one peers listener.
pub struct Admission {
    limits: Limits,
    state: Mutex<State>,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// A connection arrived: it waits for its first byte. If too many wait, the one
    /// that has waited longest is told to close ([`Waiting::evicted`]).
    pub fn arrive(self: &Arc<Self>) -> Waiting {
        let token = CancellationToken::new();
        let mut st = self.lock();
        let id = st.next;
        st.next += 1;
        st.waiting.insert(id, token.clone());
        while st.waiting.len() > self.limits.waiting {
            if let Some((_, oldest)) = st.waiting.pop_first() {
                oldest.cancel();
            }
        }
        Waiting {
            admission: self.clone(),
            id,
            token,
        }
    }

    /// A connection from `source` sent its first byte: a handshake slot, if one is
    /// free for it. `peer_address`: `source` is the address of a configured peer.
    pub fn handshake(self: &Arc<Self>, source: IpAddr, peer_address: bool) -> Option<Slot> {
        let l = self.limits;
        let mut st = self.lock();
        let pool = if peer_address && st.reserved < l.reserved {
            st.reserved += 1;
            Pool::Reserved
        } else if st.shared < l.shared
            && (peer_address || st.per_source.get(&source).copied().unwrap_or(0) < l.per_source)
        {
            st.shared += 1;
            *st.per_source.entry(source).or_insert(0) += 1;
            Pool::Shared
        } else {
            return None;
        };
        Some(Slot {
            admission: self.clone(),
            pool,
            source,
        })
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize, usize) {
        let st = self.lock();
        (st.waiting.len(), st.shared, st.reserved)
    }
}

/// A connection waiting for its first byte.
pub struct Waiting {
    admission: Arc<Admission>,
    id: u64,
    token: CancellationToken,
}

impl Waiting {
    /// Resolves when the connection must close to make room for a newer one.
    pub async fn evicted(&self) {
        self.token.cancelled().await
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.admission.lock().waiting.remove(&self.id);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Shared,
    Reserved,
}

/// A handshake slot, given back when dropped.
pub struct Slot {
    admission: Arc<Admission>,
    pool: Pool,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.admission.lock();
        match self.pool {
            Pool::Reserved => st.reserved = st.reserved.saturating_sub(1),
            Pool::Shared => {
                st.shared = st.shared.saturating_sub(1);
                if let Some(n) = st.per_source.get_mut(&self.source) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        st.per_source.remove(&self.source);
                    }
                }
            }
        }
    }
}

/// The addresses of the configured peers (each `address` host, resolved; IPv4-mapped
/// IPv6 addresses as IPv4). A name that does not resolve is left out (and logged at
/// debug): that peer then uses the shared slots.
pub async fn peer_addresses(peers: &[PeerConfig]) -> HashSet<IpAddr> {
    let mut out = HashSet::new();
    for p in peers {
        let looked_up =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(&p.address)).await;
        match looked_up {
            Ok(Ok(addrs)) => out.extend(addrs.map(|a| a.ip().to_canonical())),
            Ok(Err(e)) => {
                tracing::debug!(peer = %p.name, address = %p.address, "cannot resolve peer address: {e}")
            }
            Err(_) => {
                tracing::debug!(peer = %p.name, address = %p.address, "resolving peer address timed out")
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Limits = Limits {
        waiting: 3,
        shared: 4,
        per_source: 2,
        reserved: 1,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[tokio::test]
    async fn the_longest_waiting_connection_makes_room_for_a_new_one() {
        let a = Admission::new(SMALL);
        let w: Vec<Waiting> = (0..3).map(|_| a.arrive()).collect();
        assert!(!w[0].token.is_cancelled());
        let newest = a.arrive();
        assert!(w[0].token.is_cancelled(), "oldest evicted");
        w[0].evicted().await; // resolves
        assert!(!w[1].token.is_cancelled() && !newest.token.is_cancelled());
        assert_eq!(a.counts().0, 3);
        drop(w);
        drop(newest);
        assert_eq!(a.counts().0, 0);
    }

    #[test]
    fn other_sources_are_limited_per_address_and_cannot_take_reserved_slots() {
        let a = Admission::new(SMALL);
        let x1 = a.handshake(ip("192.0.2.1"), false).expect("1st");
        let x2 = a.handshake(ip("192.0.2.1"), false).expect("2nd");
        assert!(a.handshake(ip("192.0.2.1"), false).is_none(), "per source");
        let y1 = a.handshake(ip("192.0.2.2"), false).expect("other source");
        let y2 = a.handshake(ip("192.0.2.2"), false).expect("other source");
        assert!(a.handshake(ip("192.0.2.3"), false).is_none(), "shared full");
        // A configured peer's address still gets the reserved slot.
        let p = a.handshake(ip("198.51.100.7"), true).expect("reserved");
        assert_eq!(a.counts(), (0, 4, 1));
        assert!(a.handshake(ip("198.51.100.7"), true).is_none(), "all taken");
        drop(x1);
        // Peers' addresses are not limited per source in the shared slots.
        let p2 = a.handshake(ip("198.51.100.7"), true).expect("shared");
        drop((x2, y1, y2, p, p2));
        assert_eq!(a.counts(), (0, 0, 0));
        assert!(a.lock().per_source.is_empty());
    }

    #[tokio::test]
    async fn peer_addresses_resolve_literals_and_names() {
        let peers = [
            PeerConfig {
                name: "a".into(),
                address: "10.0.0.1:7400".into(),
            },
            PeerConfig {
                name: "b".into(),
                address: "[::ffff:10.0.0.2]:7400".into(),
            },
            PeerConfig {
                name: "c".into(),
                address: "localhost:7400".into(),
            },
        ];
        let got = peer_addresses(&peers).await;
        assert!(got.contains(&ip("10.0.0.1")));
        assert!(got.contains(&ip("10.0.0.2")), "mapped to IPv4: {got:?}");
        assert!(got.contains(&ip("127.0.0.1")), "{got:?}");
    }
}
