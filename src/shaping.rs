//! Reconnect-storm shaping: CONNECT admission rates (`[clusters.X.shaping]`
//! `connect_rate` per cluster, `node_connect_rate` per node).
//!
//! A client over a rate gets CONNACK 0x89 "server busy" (MQTT 5) or 0x03 "server
//! unavailable" (3.x) at once, before a node is picked or a broker connection opened:
//! the refusal costs one token-bucket look-up and one small write, so a reconnect storm
//! after a node failure is spread over time instead of landing on the surviving brokers
//! at once (HAProxy's `rate-limit sessions`, per cluster and per node).
//!
//! Each bucket holds up to one second's worth of tokens (a burst of `rate`) and refills
//! continuously. The rate is read from the cluster's current config on every CONNECT,
//! so a reload changes it at once; the bucket itself outlives reloads.

use crate::metrics::names;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use std::sync::Mutex;
use std::time::Instant;

/// Why an admission was refused (`reason` label of `mqgate_admissions_refused_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Over the cluster's `connect_rate`.
    ClusterRate,
    /// Every node the client could go to is over `node_connect_rate`.
    NodeRate,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::ClusterRate => "cluster_rate",
            Refused::NodeRate => "node_rate",
        }
    }
}

/// A token bucket of CONNECT admissions; see the module comment.
#[derive(Debug)]
pub struct ConnectBucket {
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    /// Tokens left (fractions count: a refill is continuous).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
    /// The rate the bucket was last used with (a change of rate starts a full bucket).
    rate: u32,
}

impl Default for ConnectBucket {
    fn default() -> Self {
        ConnectBucket {
            state: Mutex::new(BucketState {
                tokens: 0.0,
                at: Instant::now(),
                rate: 0,
            }),
        }
    }
}

impl ConnectBucket {
    /// Take one admission at `rate` per second (0 = unlimited); false if none is left.
    pub fn allow(&self, rate: u32) -> bool {
        self.allow_at(rate, Instant::now())
    }

    fn allow_at(&self, rate: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let mut s = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let cap = f64::from(rate);
        if s.rate != rate {
            s.rate = rate;
            s.tokens = cap;
        } else {
            let dt = now.saturating_duration_since(s.at).as_secs_f64();
            s.tokens = (s.tokens + dt * cap).min(cap);
        }
        s.at = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// `mqgate_admissions_refused_total{cluster,reason}`.
pub const ADMISSIONS_REFUSED_TOTAL: &str = names::ADMISSIONS_REFUSED_TOTAL;

/// The shaping metrics, registered with the process's other metrics.
pub struct ShapingMetrics {
    pub admissions_refused: IntCounterVec,
    /// `mqgate_paced_close_lanes_left{cluster,node}`: lanes of sessions a running paced
    /// close (evacuation, maint, leader change) has still to close; 0 when none runs.
    pub paced_lanes_left: IntGaugeVec,
    /// `mqgate_disconnects_sent_total{cluster,reason}`: DISCONNECTs sent to MQTT 5
    /// clients before a close by the gateway.
    pub disconnects_sent: IntCounterVec,
}

impl ShapingMetrics {
    pub fn new(r: &Registry) -> Self {
        let admissions_refused = IntCounterVec::new(
            Opts::new(
                ADMISSIONS_REFUSED_TOTAL,
                "CONNECTs refused with \"server busy\" by the admission rates, by reason.",
            ),
            &["cluster", "reason"],
        )
        .expect("valid metric definition");
        r.register(Box::new(admissions_refused.clone()))
            .expect("metric registered once");
        let paced_lanes_left = IntGaugeVec::new(
            Opts::new(
                names::PACED_CLOSE_LANES_LEFT,
                "Lanes of sessions a running paced close has still to close (64 per node and listener).",
            ),
            &["cluster", "node"],
        )
        .expect("valid metric definition");
        r.register(Box::new(paced_lanes_left.clone()))
            .expect("metric registered once");
        let disconnects_sent = IntCounterVec::new(
            Opts::new(
                names::DISCONNECTS_SENT_TOTAL,
                "DISCONNECTs sent to MQTT 5 clients before a close by the gateway, by reason.",
            ),
            &["cluster", "reason"],
        )
        .expect("valid metric definition");
        r.register(Box::new(disconnects_sent.clone()))
            .expect("metric registered once");
        ShapingMetrics {
            admissions_refused,
            paced_lanes_left,
            disconnects_sent,
        }
    }

    pub fn refused(&self, cluster: &str, why: Refused) {
        self.admissions_refused
            .with_label_values(&[cluster, why.as_str()])
            .inc();
    }
}

/// Refuse a client over an admission rate: CONNACK 0x89 "server busy" (MQTT 5) or
/// 0x03 "server unavailable" (3.x), a clean close, both counters and a debug line.
pub async fn refuse_busy<S>(
    data: &crate::runtime::DataPath,
    listener: &str,
    cluster: &str,
    why: Refused,
    client: &mut S,
    v5: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tracing::debug!(
        reason = "connect_rate",
        admission = why.as_str(),
        "refused: over the admission rate (server busy)"
    );
    data.metrics
        .reject(listener, crate::metrics::Reject::ConnectRate);
    data.metrics.shaping.refused(cluster, why);
    crate::session::refuse(client, v5, if v5 { 0x89 } else { 0x03 }).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_of_one_second_then_refills() {
        let b = ConnectBucket::default();
        let t0 = Instant::now();
        assert!((0..10).all(|_| b.allow_at(10, t0)));
        assert!(!b.allow_at(10, t0));
        // 100 ms at 10/s: one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.allow_at(10, t1));
        assert!(!b.allow_at(10, t1));
        // Never more than the burst, however long the pause.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| b.allow_at(10, t2)).count(), 10);
        // 0 = unlimited; a new rate starts full.
        assert!((0..1000).all(|_| b.allow_at(0, t2)));
        assert_eq!((0..5).filter(|_| b.allow_at(3, t2)).count(), 3);
    }
}
