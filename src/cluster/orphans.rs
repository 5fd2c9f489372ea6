//! `[sessions] clean_orphans`: once a persistent client lives on another node, remove
//! the session it left on its previous node, so that node stops queueing messages for
//! it. The removal is what a client would do itself: a CONNECT with its client id and
//! clean session 1 (the health check's login), CONNACK, DISCONNECT.
//!
//! This is the cluster's queue of pending removals; the task that works through it
//! (paced, retried, bounded) is `crate::orphans`, beside the health checks.

use super::Cluster;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Pending removals per cluster; beyond that the oldest is given up.
pub const MAX_PENDING: usize = 10_000;

/// Pending removals of a cluster: (old node, client id).
#[derive(Default)]
pub struct Orphans {
    pending: Mutex<VecDeque<(Arc<str>, Box<str>)>>,
    wake: Arc<Notify>,
}

impl Orphans {
    /// The next pending removal: (old node, client id).
    pub fn pop(&self) -> Option<(Arc<str>, Box<str>)> {
        self.lock().pop_front()
    }

    /// Put a removal back at the end (to be retried).
    pub fn retry(&self, node: Arc<str>, client_id: Box<str>) {
        self.lock().push_back((node, client_id));
    }

    /// Notified when a removal is queued.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

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
    }

    /// The pending removals.
    pub fn orphans(&self) -> &Orphans {
        &self.orphans
    }

    /// Count a removal's outcome (`mqgate_session_orphans_total{result}`).
    pub fn orphan_result(&self, result: &str) {
        self.metrics
            .session_orphans
            .with_label_values(&[&self.name, result])
            .inc();
    }
}
