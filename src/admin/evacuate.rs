//! `POST /api/v1/clusters/{c}/nodes/{n}/evacuate {"rate": N}` and
//! `DELETE /api/v1/clusters/{c}/nodes/{n}/evacuate` (cancel): the node goes to `maint`
//! (no new clients) and its sessions are closed `rate` per second (`crate::pacing`),
//! MQTT 5 clients on the boundary-tracking relay told 0x9C "use another server".
//! Before the first close, every sticky entry that points to the node is rewritten to
//! the node its client should go to ([`move_sticky`]), so that a client that comes back
//! lands there (and peers learn it) instead of being placed again on reconnect.

use super::{error, json, Resp};
use crate::cluster::{AdminState, Cluster, Node};
use crate::host::Host;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Body of the evacuate request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvacuateBody {
    /// Sessions closed per second; absent: the cluster's `close_rate`.
    rate: Option<u32>,
}

/// Answer of the evacuate endpoints.
#[derive(Debug, Serialize, Deserialize)]
pub struct EvacuateAnswer {
    pub cluster: String,
    pub node: String,
    /// Sessions per second (0: all at once).
    pub rate: u32,
    /// Live sessions on the node when the evacuation started (or was cancelled).
    pub sessions: usize,
    /// Cancel: a paced close was running and stops.
    pub cancelled: bool,
    /// Sticky entries rewritten from the node to another one before the closes.
    #[serde(default)]
    pub sticky_moved: usize,
}

type Found = (Arc<Cluster>, Arc<Node>);

fn find(host: &Host, c: &str, n: &str) -> Result<Found, Box<Resp>> {
    let Some(cl) = host.cluster(c) else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            &format!("no cluster named `{c}`"),
        )));
    };
    let Some(node) = cl.node(n) else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            &format!("cluster `{c}` has no node named `{n}`"),
        )));
    };
    Ok((cl, node))
}

pub(super) fn evacuate(host: &Host, c: &str, n: &str, body: &[u8]) -> Resp {
    let (cl, node) = match find(host, c, n) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let usage = "{\"rate\": N} (sessions per second, 1-1000000)";
    let parsed: EvacuateBody = match super::optional_json(body, usage) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let rate = parsed.rate.unwrap_or(cl.config().shaping.close_rate);
    if rate > 1_000_000 {
        return error(
            StatusCode::BAD_REQUEST,
            "rate must be at most 1000000 sessions per second",
        );
    }
    if node.admin_state() == AdminState::Maint {
        return error(
            StatusCode::CONFLICT,
            &format!("node `{n}` is already in maint: set it ready first"),
        );
    }
    let sessions = node.active();
    // Before any session closes (the paced close starts with the state change).
    let sticky_moved = move_sticky(&cl, &node);
    tracing::info!(cluster = %c, node = %n, rate, sessions, sticky_moved, "evacuation started");
    node.pacing.override_rate(rate);
    cl.set_admin_state(&node, AdminState::Maint);
    json(
        StatusCode::OK,
        &EvacuateAnswer {
            cluster: c.to_string(),
            node: n.to_string(),
            rate,
            sessions,
            cancelled: false,
            sticky_moved,
        },
    )
}

pub(super) fn cancel(host: &Host, c: &str, n: &str) -> Resp {
    let (cl, node) = match find(host, c, n) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let cancelled = node.pacing.cancel();
    if cancelled {
        // The sessions not closed yet stay; the node takes clients again.
        cl.set_admin_state(&node, AdminState::Ready);
        tracing::info!(cluster = %c, node = %n, "evacuation cancelled");
    }
    json(
        StatusCode::OK,
        &EvacuateAnswer {
            cluster: c.to_string(),
            node: n.to_string(),
            rate: 0,
            sessions: node.active(),
            cancelled,
            sticky_moved: 0,
        },
    )
}

/// Rewrite every sticky entry of `cl` that points to `node` to the node its client is
/// to go to: with `balance = "hash"` the key's owner among the other ready nodes that
/// are up (rendezvous order, as routing picks), otherwise those nodes in turn. Each
/// rewrite is a local write, replicated to peers. Returns how many moved (0 when no
/// other node can take clients: the entries stay and clients are placed on reconnect).
pub fn move_sticky(cl: &Cluster, node: &Node) -> usize {
    let nodes = cl.nodes();
    let targets: Vec<&Arc<Node>> = nodes
        .iter()
        .filter(|t| {
            t.name != node.name
                && t.admin_state() == AdminState::Ready
                && t.health() == crate::cluster::Health::Up
        })
        .collect();
    if targets.is_empty() {
        return 0;
    }
    let hash = cl.config().balance == crate::config::Balance::Hash;
    let mut moved = 0;
    for u in cl.sticky.export() {
        if u.node.as_deref() != Some(node.name.as_str()) {
            continue;
        }
        let to = if hash {
            crate::cluster::balance::rendezvous(&u.key, targets.clone())
                .first()
                .map(|t| t.name.clone())
        } else {
            targets.get(moved % targets.len()).map(|t| t.name.clone())
        };
        if let Some(to) = to {
            cl.sticky.record(&u.key, &to);
            moved += 1;
        }
    }
    moved
}
