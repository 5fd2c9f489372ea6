//! The metrics of splice(2) relaying (`crate::pipes`, `crate::relay::splice`), in a
//! file of their own beside `metrics.rs`.

use super::{counter_one, gauge_one, names};
use prometheus::{IntCounter, IntGauge, Registry};

/// Pipes and bytes of splice(2) relaying (`[limits] splice`, `max_pipes`).
#[derive(Clone)]
pub struct SpliceMetrics {
    /// `mqgate_splice_pipes_in_use`: pipes held by large flows now.
    pub pipes_in_use: IntGauge,
    /// `mqgate_splice_pipes_open`: pipes open now (in use, and idle ones kept for the
    /// next flow); two descriptors each, at most `max_pipes`.
    pub pipes_open: IntGauge,
    /// `mqgate_splice_pipes_unavailable_total`: large flows that kept copying because
    /// `max_pipes` pipes were open (or the kernel refused one).
    pub unavailable: IntCounter,
    /// `mqgate_spliced_bytes_total`: bytes relayed by splice(2) (also counted in
    /// `mqgate_bytes_total`).
    pub bytes: IntCounter,
}

impl SpliceMetrics {
    pub fn new(r: &Registry) -> Self {
        SpliceMetrics {
            pipes_in_use: gauge_one(
                r,
                names::SPLICE_PIPES_IN_USE,
                "Pipes held by large flows relayed with splice(2) now.",
            ),
            pipes_open: gauge_one(
                r,
                names::SPLICE_PIPES_OPEN,
                "Pipes open for splice(2) now (in use and idle; two descriptors each; at most limits.max_pipes).",
            ),
            unavailable: counter_one(
                r,
                names::SPLICE_PIPES_UNAVAILABLE_TOTAL,
                "Large flows that kept copying because no pipe was left (limits.max_pipes) or the kernel refused one.",
            ),
            bytes: counter_one(
                r,
                names::SPLICED_BYTES_TOTAL,
                "Bytes relayed with splice(2), without a copy to user space (also in mqgate_bytes_total).",
            ),
        }
    }
}
