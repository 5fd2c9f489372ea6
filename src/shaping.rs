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

pub use crate::rate::ConnectBucket;

/// `mqgate_admissions_refused_total{cluster,reason}`.
pub const ADMISSIONS_REFUSED_TOTAL: &str = names::ADMISSIONS_REFUSED_TOTAL;

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
    data.metrics.shaping.refused(cluster, why.as_str());
    crate::reply::refuse(client, v5, if v5 { 0x89 } else { 0x03 }).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

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
