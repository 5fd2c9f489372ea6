//! `[sessions] clean_orphans`: the task that removes the sessions clients left on
//! nodes they no longer use (queued by `Cluster::orphan`), one per cluster beside its
//! health checks. The removal is what a client would do itself: a CONNECT with its
//! client id and clean session 1 (the health check's login), CONNACK, DISCONNECT.
//!
//! Paced (one removal every [`PACE`]), retried while the old node is down or refuses
//! (every [`RETRY`], until it is removed from the config), bounded (the cluster keeps at
//! most `cluster::orphans::MAX_PENDING`), and never while the client's sticky entry
//! points to that node again (it came back there).

use crate::cluster::{Cluster, Health};
use crate::config::CheckKind;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const PACE: Duration = Duration::from_millis(20);
pub const RETRY: Duration = Duration::from_secs(1);

/// Start the cleaner of `cluster`; it ends with the cluster or at `stop`.
pub fn spawn(tracker: &TaskTracker, cluster: &Arc<Cluster>, stop: CancellationToken) {
    let weak = Arc::downgrade(cluster);
    tracker.spawn(async move {
        tokio::select! {
            _ = cleaner(weak) => {}
            _ = stop.cancelled() => {}
        }
    });
}

/// Works through a cluster's pending removals; ends with the cluster.
async fn cleaner(cluster: Weak<Cluster>) {
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let next = c.orphans().pop();
        let Some((node_name, id)) = next else {
            let wake = c.orphans().wake();
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
            c.orphans().retry(node_name, id);
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
        let probe = crate::health::probe(&node, &h, cfg.send_proxy_protocol, tls.as_deref(), &id);
        let r = tokio::time::timeout(timeout, probe).await;
        match r {
            Ok(Ok(())) => {
                tracing::debug!(cluster = %c.name, node = %node_name, client_id = %id, "orphaned session removed");
                c.orphan_result("done");
            }
            _ => {
                tracing::debug!(cluster = %c.name, node = %node_name, client_id = %id, "orphaned session not removed yet; retrying");
                c.orphan_result("retried");
                c.orphans().retry(node_name, id);
                drop((c, node));
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        drop((c, node));
        tokio::time::sleep(PACE).await;
    }
}
