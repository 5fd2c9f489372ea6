//! `POST /api/v1/clusters/{c}/nodes/{n}/evacuate {"rate": N}` and
//! `DELETE /api/v1/clusters/{c}/nodes/{n}/evacuate` (cancel): the node goes to `maint`
//! (no new clients) and its sessions are closed `rate` per second (`crate::pacing`),
//! MQTT 5 clients on the boundary-tracking relay told 0x9C "use another server".

use super::{error, json, Resp};
use crate::cluster::{AdminState, Cluster, Node};
use crate::host::Host;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Body of the evacuate request.
#[derive(Debug, Deserialize)]
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
    let parsed: EvacuateBody = if body.iter().all(u8::is_ascii_whitespace) {
        EvacuateBody { rate: None }
    } else {
        match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("body must be {{\"rate\": N}} (sessions per second, 1-1000000): {e}"),
                )
            }
        }
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
    tracing::info!(cluster = %c, node = %n, rate, sessions, "evacuation started");
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
        },
    )
}
