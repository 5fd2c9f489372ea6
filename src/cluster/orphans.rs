//! `[sessions] clean_orphans`: once a persistent client lives on another node, remove
//! the session it left on its previous node, so that node stops queueing messages for
//! it. The removal is what a client would do itself: a CONNECT with its client id and
//! clean session 1 (the health check's login), CONNACK, DISCONNECT.
//!
//! Paced (one removal every [`PACE`]), retried while the old node is down or refuses
//! (every [`RETRY`], until it is removed from the config), bounded ([`MAX_PENDING`]
//! pending removals per cluster; beyond that the oldest is given up), and never while
//! the client's sticky entry points to that node again (it came back there).

use super::{Cluster, Health};
use crate::config::CheckKind;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;

pub const PACE: Duration = Duration::from_millis(20);
pub const RETRY: Duration = Duration::from_secs(1);
pub const MAX_PENDING: usize = 10_000;

/// Pending removals of a cluster: (old node, client id).
#[derive(Default)]
pub struct Orphans {
    pending: Mutex<VecDeque<(Arc<str>, Box<str>)>>,
    wake: Arc<Notify>,
    running: AtomicBool,
}

impl Orphans {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Arc<str>, Box<str>)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Cluster {
    /// `client_id` left a session on `old` and now lives elsewhere: remove it there.
    pub fn orphan(self: &Arc<Self>, old: Arc<str>, client_id: &str) {
        {
            let mut q = self.orphans.lock();
            q.retain(|(_, id)| &**id != client_id);
            if q.len() >= MAX_PENDING {
                q.pop_front();
                self.orphan_result("dropped");
            }
            q.push_back((old, client_id.into()));
        }
        self.orphans.wake.notify_one();
        if !self.orphans.running.swap(true, Ordering::AcqRel) {
            tokio::spawn(cleaner(Arc::downgrade(self)));
        }
    }

    fn orphan_result(&self, result: &str) {
        self.metrics
            .session_orphans
            .with_label_values(&[&self.name, result])
            .inc();
    }
}

/// Works through a cluster's pending removals; ends with the cluster.
async fn cleaner(cluster: Weak<Cluster>) {
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let next = c.orphans.lock().pop_front();
        let Some((node_name, id)) = next else {
            let wake = c.orphans.wake.clone();
            drop(c);
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(RETRY * 10) => {}
            }
            continue;
        };
        let cfg = c.config();
        let Some(node) = c.node(&node_name) else {
            continue; // the node was removed from the config: nothing to clean
        };
        let back = c.sticky.get(&id).is_some_and(|e| *e.node == *node_name);
        if back || !cfg.sessions.clean_orphans {
            continue; // the client came back there, or the setting was turned off
        }
        if node.health() != Health::Up {
            // Retried when the node is back.
            c.orphans.lock().push_back((node_name, id));
            drop((c, node));
            tokio::time::sleep(RETRY).await;
            continue;
        }
        let mut h = cfg.health.clone();
        if h.check == CheckKind::Tcp {
            h.check = CheckKind::Mqtt;
        }
        let timeout = h.timeout;
        let tls = c.tls();
        let probe = crate::health::probe(&node, &h, tls.as_deref(), &id);
        let r = tokio::time::timeout(timeout, probe).await;
        match r {
            Ok(Ok(())) => {
                tracing::debug!(cluster = %c.name, node = %node_name, client_id = %id, "orphaned session removed");
                c.orphan_result("done");
            }
            _ => {
                tracing::debug!(cluster = %c.name, node = %node_name, client_id = %id, "orphaned session not removed yet; retrying");
                c.orphan_result("retried");
                c.orphans.lock().push_back((node_name, id));
                drop((c, node));
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        drop((c, node));
        tokio::time::sleep(PACE).await;
    }
}
