//! The subscriptions of persistent clients, stored beside the sticky table of a
//! dynsec cluster (`[clusters.X.sessions] restore_subscriptions`).
//!
//! The packet-aware relay (`crate::relay::packets`) adds a subscription once the
//! broker granted it (SUBACK) and removes it once the broker confirmed an
//! UNSUBSCRIBE (UNSUBACK); when a client lands on a node that has no session for it
//! (CONNACK session-present 0), the relay replays what is stored here.
//!
//! Bounds (see docs/cluster-modes.md): per client, `max_per_client` subscriptions and
//! `max_bytes_per_client` bytes (topic filters and v5 property blocks); per cluster,
//! `max_total` subscriptions. A subscription over a bound is still forwarded (the
//! broker has it) but not stored, counted in
//! `mqgate_session_subscriptions_dropped_total{reason}`: after a node's death that
//! client gets back only what was stored. A client that starts a clean session
//! (3.x clean session 1, v5 clean start 1) has its stored subscriptions dropped, as
//! the broker drops them. A client unused for the sticky table's `expire` is forgotten.
//!
//! Keys are client ids in the sticky table's stored form (`super::stored_key`).

use super::stored_key;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One stored subscription: what the replay sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sub {
    pub topic: Box<str>,
    /// Subscription Options as the client sent them (QoS; v5 flags).
    pub options: u8,
    /// v5: the SUBSCRIBE's property block content (Subscription Identifier, User
    /// Properties); empty for MQTT 3.
    pub properties: Box<[u8]>,
}

impl Sub {
    /// What this subscription counts against `max_bytes_per_client`.
    pub fn cost(&self) -> usize {
        self.topic.len() + self.properties.len() + 1
    }
}

/// The bounds of a store (from `SessionsConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub per_client: usize,
    pub bytes_per_client: usize,
    pub total: usize,
    pub expire: Duration,
}

/// Why a subscription was not stored (`reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    ClientCount,
    ClientBytes,
    Total,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::ClientCount => "client_count",
            Refused::ClientBytes => "client_bytes",
            Refused::Total => "total",
        }
    }
}

pub const REFUSED_REASONS: [&str; 3] = ["client_count", "client_bytes", "total"];

#[derive(Debug)]
struct Client {
    subs: Vec<Sub>,
    bytes: usize,
    used: Instant,
}

pub struct SubStore {
    clients: Mutex<HashMap<Arc<str>, Client>>,
    total: AtomicUsize,
    bounds: Mutex<Bounds>,
}

impl SubStore {
    pub fn new(bounds: Bounds) -> Self {
        SubStore {
            clients: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
            bounds: Mutex::new(bounds),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Client>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn bounds(&self) -> Bounds {
        *self.bounds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New bounds (reload). Stored subscriptions over a lowered bound stay until
    /// their client unsubscribes or is forgotten.
    pub fn set_bounds(&self, b: Bounds) {
        *self.bounds.lock().unwrap_or_else(|p| p.into_inner()) = b;
    }

    /// Subscriptions stored, all clients together.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Store (or update, same topic filter) a subscription the broker granted.
    pub fn add(&self, client: &str, sub: Sub) -> Result<(), Refused> {
        let b = self.bounds();
        let key = stored_key(client);
        let mut map = self.lock();
        let now = Instant::now();
        let entry = map.get_mut(key.as_ref());
        if let Some(c) = entry {
            c.used = now;
            if let Some(old) = c.subs.iter_mut().find(|s| s.topic == sub.topic) {
                let bytes = c.bytes - old.cost() + sub.cost();
                if bytes > b.bytes_per_client {
                    return Err(Refused::ClientBytes);
                }
                c.bytes = bytes;
                *old = sub;
                return Ok(());
            }
            if c.subs.len() >= b.per_client {
                return Err(Refused::ClientCount);
            }
            if c.bytes + sub.cost() > b.bytes_per_client {
                return Err(Refused::ClientBytes);
            }
        } else if sub.cost() > b.bytes_per_client {
            return Err(Refused::ClientBytes);
        }
        if self.total() >= b.total {
            self.sweep(&mut map, b.expire);
            if self.total() >= b.total {
                return Err(Refused::Total);
            }
        }
        let c = map
            .entry(Arc::from(key.as_ref()))
            .or_insert_with(|| Client {
                subs: Vec::new(),
                bytes: 0,
                used: now,
            });
        c.bytes += sub.cost();
        c.subs.push(sub);
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Remove a client's subscription to `topic`; true if there was one.
    pub fn remove(&self, client: &str, topic: &str) -> bool {
        let key = stored_key(client);
        let mut map = self.lock();
        let Some(c) = map.get_mut(key.as_ref()) else {
            return false;
        };
        let Some(i) = c.subs.iter().position(|s| &*s.topic == topic) else {
            return false;
        };
        let s = c.subs.swap_remove(i);
        c.bytes -= s.cost();
        self.total.fetch_sub(1, Ordering::Relaxed);
        if c.subs.is_empty() {
            map.remove(key.as_ref());
        }
        true
    }

    /// Drop everything stored for a client (it started a clean session).
    pub fn forget(&self, client: &str) {
        let key = stored_key(client);
        if let Some(c) = self.lock().remove(key.as_ref()) {
            self.total.fetch_sub(c.subs.len(), Ordering::Relaxed);
        }
    }

    /// A client's stored subscriptions (a copy, to replay or show), marking it used.
    pub fn get(&self, client: &str) -> Vec<Sub> {
        let expire = self.bounds().expire;
        let key = stored_key(client);
        let mut map = self.lock();
        let Some(c) = map.get_mut(key.as_ref()) else {
            return Vec::new();
        };
        if c.used.elapsed() > expire {
            let n = c.subs.len();
            map.remove(key.as_ref());
            self.total.fetch_sub(n, Ordering::Relaxed);
            return Vec::new();
        }
        c.used = Instant::now();
        c.subs.clone()
    }

    /// A client's stored subscriptions without marking it used (admin API).
    pub fn peek(&self, client: &str) -> Vec<Sub> {
        let key = stored_key(client);
        self.lock()
            .get(key.as_ref())
            .map(|c| c.subs.clone())
            .unwrap_or_default()
    }

    /// Forget clients unused for `expire`.
    fn sweep(&self, map: &mut HashMap<Arc<str>, Client>, expire: Duration) {
        let mut dropped = 0;
        map.retain(|_, c| {
            let keep = c.used.elapsed() <= expire;
            if !keep {
                dropped += c.subs.len();
            }
            keep
        });
        self.total.fetch_sub(dropped, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(t: &str) -> Sub {
        Sub {
            topic: t.into(),
            options: 1,
            properties: Box::new([]),
        }
    }

    fn store(per_client: usize, bytes: usize, total: usize) -> SubStore {
        SubStore::new(Bounds {
            per_client,
            bytes_per_client: bytes,
            total,
            expire: Duration::from_secs(60),
        })
    }

    #[test]
    fn add_replace_remove_forget() {
        let s = store(10, 1000, 100);
        s.add("c", sub("a")).unwrap();
        s.add("c", sub("b")).unwrap();
        let mut q2 = sub("a");
        q2.options = 2;
        s.add("c", q2.clone()).unwrap();
        assert_eq!(s.total(), 2);
        assert!(s.get("c").contains(&q2));
        assert!(s.remove("c", "a"));
        assert!(!s.remove("c", "a"));
        assert_eq!(s.get("c"), vec![sub("b")]);
        s.forget("c");
        assert_eq!(s.total(), 0);
        assert!(s.get("c").is_empty());
    }

    #[test]
    fn bounds_refuse_and_count_nothing() {
        let s = store(2, 5, 3);
        s.add("c", sub("a")).unwrap();
        s.add("c", sub("b")).unwrap();
        assert_eq!(s.add("c", sub("c")), Err(Refused::ClientCount));
        assert_eq!(s.add("d", sub("long")), Ok(()));
        assert_eq!(s.add("d", sub("xy")), Err(Refused::ClientBytes));
        assert_eq!(s.add("e", sub("z")), Err(Refused::Total));
        assert_eq!(s.total(), 3);
        assert_eq!(s.add("f", sub("toolong")), Err(Refused::ClientBytes));
    }

    #[test]
    fn long_client_ids_share_the_sticky_tables_stored_form() {
        let s = store(2, 100, 10);
        let id = "x".repeat(1000);
        s.add(&id, sub("a")).unwrap();
        assert_eq!(s.peek(&id), vec![sub("a")]);
    }
}
