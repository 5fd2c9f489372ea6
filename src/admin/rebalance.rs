//! `POST /api/v1/clusters/{c}/rebalance {"rate": N, "tolerance": 0.1}`: move clients
//! from fuller to emptier nodes (`crate::cluster::rebalance::rebalance`).

use super::{error, json, Resp};
use crate::host::Host;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RebalanceBody {
    /// Sessions closed per second per node; absent: the cluster's `close_rate`.
    rate: Option<u32>,
    /// Spread allowed above the mean, as a fraction (default 0.1).
    tolerance: Option<f64>,
}

/// One node the rebalance moves clients away from.
#[derive(Debug, Serialize, Deserialize)]
pub struct RebalanceMove {
    pub node: String,
    /// Sessions to close (about: whole lanes are closed).
    pub sessions: usize,
}

/// Answer of the rebalance endpoint.
#[derive(Debug, Serialize, Deserialize)]
pub struct RebalanceAnswer {
    pub cluster: String,
    pub rate: u32,
    pub moves: Vec<RebalanceMove>,
}

pub(super) fn rebalance(host: &Host, c: &str, body: &[u8]) -> Resp {
    let Some(cl) = host.cluster(c) else {
        return error(StatusCode::NOT_FOUND, &format!("no cluster named `{c}`"));
    };
    let usage = "{\"rate\": N, \"tolerance\": 0.1}";
    let parsed: RebalanceBody = match super::optional_json(body, usage) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let rate = parsed.rate.unwrap_or(cl.config().shaping.close_rate);
    let tolerance = parsed.tolerance.unwrap_or(0.1);
    if rate > 1_000_000 || !(0.0..=10.0).contains(&tolerance) {
        return error(
            StatusCode::BAD_REQUEST,
            "rate must be at most 1000000 per second and tolerance from 0 to 10",
        );
    }
    let moves = crate::cluster::rebalance::rebalance(&cl, rate, tolerance)
        .into_iter()
        .map(|(node, sessions)| RebalanceMove { node, sessions })
        .collect::<Vec<_>>();
    tracing::info!(cluster = %c, rate, tolerance, nodes = moves.len(), "rebalance started");
    json(
        StatusCode::OK,
        &RebalanceAnswer {
            cluster: c.to_string(),
            rate,
            moves,
        },
    )
}
