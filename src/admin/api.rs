//! Handlers of the `/api/v1/…` endpoints that act on one thing: a node's admin state,
//! a sticky entry, a reload. Each answers JSON, with `{"error": "..."}` and a 4xx
//! status for requests that name something unknown or carry a bad body.
//!
//! They call the same entry points the rest of the gateway uses
//! ([`Cluster::set_admin_state`], the sticky table, [`Gateway::reload`]), so an API call
//! has exactly the effect of the equivalent internal event.

use super::Ctx;
use super::{error, json, Refusal, Resp};
use crate::cluster::{AdminState, Cluster};
use crate::host::Host;
use crate::reload::ApplyError;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Body of `PUT /api/v1/clusters/{c}/nodes/{n}/state`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    state: String,
}

/// Answer of the node state endpoint.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeStateAnswer {
    pub cluster: String,
    pub node: String,
    pub state: String,
    pub previous: String,
    /// Sessions closed by this change (`maint` closes them).
    pub sessions_closed: usize,
}

/// Answer of the sticky endpoints.
#[derive(Debug, Serialize, Deserialize)]
pub struct StickyAnswer {
    pub key: String,
    pub node: String,
    pub expires_in_secs: u64,
    /// The client's stored subscriptions (`[sessions] restore_subscriptions`; the key
    /// is then the client id); absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<SubscriptionView>,
}

/// One stored subscription as the admin API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SubscriptionView {
    pub topic: String,
    pub qos: u8,
    /// The Subscription Options byte as the client sent it (v5: no local, retain as
    /// published, retain handling).
    pub options: u8,
    /// Bytes of v5 properties (Subscription Identifier, User Properties) replayed with it.
    pub properties_len: usize,
}

fn subscriptions(cl: &Cluster, key: &str) -> Vec<SubscriptionView> {
    cl.subs
        .peek(key)
        .into_iter()
        .map(|s| SubscriptionView {
            topic: s.topic.to_string(),
            qos: s.options & 0x03,
            options: s.options,
            properties_len: s.properties.len(),
        })
        .collect()
}

fn cluster(host: &Host, name: &str) -> Result<Arc<Cluster>, Refusal> {
    host.cluster(name).ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            &format!("no cluster named `{name}`"),
        ))
    })
}

pub(super) fn node_state(host: &Host, c: &str, n: &str, body: &[u8]) -> Resp {
    let cl = match cluster(host, c) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let Some(node) = cl.node(n) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("cluster `{c}` has no node named `{n}`"),
        );
    };
    let parsed: StateBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("body must be {{\"state\": \"ready\"|\"drain\"|\"maint\"}}: {e}"),
            )
        }
    };
    let Some(state) = AdminState::parse(&parsed.state) else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "unknown state `{}`: use ready, drain or maint",
                parsed.state
            ),
        );
    };
    let previous = node.admin_state();
    let open = node.active();
    cl.set_admin_state(&node, state);
    json(
        StatusCode::OK,
        &NodeStateAnswer {
            cluster: c.to_string(),
            node: n.to_string(),
            state: state.as_str().to_string(),
            previous: previous.as_str().to_string(),
            sessions_closed: if state == AdminState::Maint { open } else { 0 },
        },
    )
}

pub(super) fn sticky_get(host: &Host, c: &str, key: &str) -> Resp {
    let cl = match cluster(host, c) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match cl.sticky.get(key) {
        Some(e) => json(
            StatusCode::OK,
            &StickyAnswer {
                key: e.key,
                node: e.node,
                expires_in_secs: e.expires_in.as_secs(),
                subscriptions: subscriptions(&cl, key),
            },
        ),
        None => error(
            StatusCode::NOT_FOUND,
            &format!("no sticky entry for `{key}` in cluster `{c}`"),
        ),
    }
}

pub(super) fn sticky_del(host: &Host, c: &str, key: &str) -> Resp {
    let cl = match cluster(host, c) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let entry = cl.sticky.get(key);
    if !cl.sticky.remove(key) {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no sticky entry for `{key}` in cluster `{c}`"),
        );
    }
    host.metrics
        .sticky_entries
        .with_label_values(&[&cl.name])
        .set(cl.sticky.len() as i64);
    tracing::info!(cluster = %c, key = %key, "sticky entry removed by the admin API");
    json(
        StatusCode::OK,
        &StickyAnswer {
            key: key.to_string(),
            node: entry.map(|e| e.node).unwrap_or_default(),
            expires_in_secs: 0,
            subscriptions: Vec::new(),
        },
    )
}

pub(super) async fn reload(gw: &Ctx) -> Resp {
    match gw.reload.reload().await {
        Ok(()) => json(
            StatusCode::OK,
            &serde_json::json!({
                "result": "ok",
                "file": gw.reload.config_file().display().to_string(),
            }),
        ),
        Err(ApplyError::Config(errs)) => {
            let list: Vec<serde_json::Value> = errs
                .errors
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "file": errs.file.display().to_string(),
                        "line": e.line,
                        "key": e.key,
                        "message": e.message,
                        "hint": e.hint,
                    })
                })
                .collect();
            json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({
                    "result": "error",
                    "error": errs.to_string(),
                    "errors": list,
                }),
            )
        }
        Err(other) => json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({
                "result": "error",
                "error": other.to_string(),
                "errors": [ { "message": other.to_string() } ],
            }),
        ),
    }
}
