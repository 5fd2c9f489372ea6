//! The `info` summary of refused clients.
//!
//! Each refused client is logged at `debug` only (one line per bad client would let any
//! scanner flood the log), and counted in `mqgate_connections_rejected_total`. This
//! task reads those counters once a second and, when some moved, writes one `info`
//! line with the counts per listener and reason since the previous such line:
//!
//! ```text
//! INFO mqgate::refused: clients refused since the last summary total=7 refused="mqtt: 5 invalid, 1 no_node; mqtts: 1 tls"
//! ```
//!
//! At most one line per [`EVERY`]: the first refusal after a quiet minute is reported
//! within a second, a steady stream of them once a minute. Nothing is written while no
//! client is refused.

use crate::host::Host;
use crate::metrics::{names, Metrics};
use prometheus::core::Collector;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// At most one summary line per this long.
pub const EVERY: Duration = Duration::from_secs(60);
/// How often the counters are read.
const TICK: Duration = Duration::from_secs(1);

/// (listener, reason) → refused clients so far.
pub type Counts = BTreeMap<(String, String), u64>;

/// The current values of `mqgate_connections_rejected_total`.
pub fn counts(m: &Metrics) -> Counts {
    let mut out = Counts::new();
    for f in m.connections_rejected.collect() {
        if f.get_name() != names::CONNECTIONS_REJECTED_TOTAL {
            continue;
        }
        for s in f.get_metric() {
            let label = |name: &str| {
                s.get_label()
                    .iter()
                    .find(|l| l.get_name() == name)
                    .map(|l| l.get_value().to_string())
                    .unwrap_or_default()
            };
            let n = s.get_counter().get_value() as u64;
            if n > 0 {
                out.insert((label("listener"), label("reason")), n);
            }
        }
    }
    out
}

/// What moved from `before` to `now`, as `(total, "mqtt: 5 invalid, 1 no_node; mqtts:
/// 1 tls")`; `None` if nothing did. A counter that went down (its listener was removed
/// and added again) counts from zero.
pub fn summary(before: &Counts, now: &Counts) -> Option<(u64, String)> {
    let mut per_listener: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
    let mut total = 0;
    for ((listener, reason), &n) in now {
        let was = before
            .get(&(listener.clone(), reason.clone()))
            .copied()
            .unwrap_or(0);
        let d = if n >= was { n - was } else { n };
        if d > 0 {
            total += d;
            per_listener.entry(listener).or_default().push((d, reason));
        }
    }
    if total == 0 {
        return None;
    }
    let mut text = String::new();
    for (listener, mut reasons) in per_listener {
        // Most frequent first, then by name.
        reasons.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        if !text.is_empty() {
            text.push_str("; ");
        }
        let _ = write!(text, "{listener}: ");
        for (i, (n, reason)) in reasons.iter().enumerate() {
            if i > 0 {
                text.push_str(", ");
            }
            let _ = write!(text, "{n} {reason}");
        }
    }
    Some((total, text))
}

/// When to write a summary line: at most one per [`EVERY`].
pub struct Summaries {
    reported: Counts,
    last: Option<Instant>,
}

impl Summaries {
    /// Start from `counts` (what was refused before is not reported).
    pub fn new(counts: Counts) -> Self {
        Summaries {
            reported: counts,
            last: None,
        }
    }

    /// Called every `TICK` with the counters read at `at`: the summary to log, if any.
    pub fn tick(&mut self, now: Counts, at: Instant) -> Option<(u64, String)> {
        if self.last.is_some_and(|t| at.duration_since(t) < EVERY) {
            return None;
        }
        let out = summary(&self.reported, &now);
        if out.is_some() {
            self.last = Some(at);
        }
        self.reported = now;
        out
    }
}

/// Start the summary task (stops with the gateway's background tasks).
pub fn spawn(host: &Arc<Host>) {
    let host = host.clone();
    host.bg_tracker.clone().spawn(async move {
        let stop = host.background.clone();
        let mut s = Summaries::new(counts(&host.metrics));
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            if let Some((total, refused)) = s.tick(counts(&host.metrics), Instant::now()) {
                tracing::info!(
                    total,
                    refused = refused.as_str(),
                    "clients refused since the last summary"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Reject;

    #[test]
    fn only_what_moved_is_summarised() {
        let m = Metrics::new();
        m.init_listener("mqtt", "tcp");
        let start = counts(&m);
        assert_eq!(summary(&start, &counts(&m)), None, "zeros are not reported");
        for _ in 0..5 {
            m.reject("mqtt", Reject::Invalid);
        }
        m.reject("mqtt", Reject::NoNode);
        m.reject("mqtts", Reject::Tls);
        let first = counts(&m);
        assert_eq!(
            summary(&start, &first),
            Some((7, "mqtt: 5 invalid, 1 no_node; mqtts: 1 tls".to_string()))
        );
        assert_eq!(summary(&first, &counts(&m)), None);
        m.reject("mqtts", Reject::Tls);
        assert_eq!(
            summary(&first, &counts(&m)),
            Some((1, "mqtts: 1 tls".to_string()))
        );
        // A counter that restarted (listener removed and added again) counts from zero.
        let mut later = counts(&m);
        later.insert(("mqtt".into(), "invalid".into()), 2);
        assert_eq!(
            summary(&first, &later),
            Some((3, "mqtt: 2 invalid; mqtts: 1 tls".to_string()))
        );
    }

    #[test]
    fn at_most_one_line_a_minute() {
        let m = Metrics::new();
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let mut s = Summaries::new(counts(&m));
        assert_eq!(s.tick(counts(&m), t0), None, "nothing refused: no line");
        m.reject("mqtt", Reject::Invalid);
        // The first refusal after a quiet time is reported at the next tick.
        assert_eq!(
            s.tick(counts(&m), t0 + sec),
            Some((1, "mqtt: 1 invalid".into()))
        );
        // More within the minute wait for the minute to pass, then come in one line.
        for i in 2..30 {
            m.reject("mqtt", Reject::Invalid);
            assert_eq!(s.tick(counts(&m), t0 + sec * i), None);
        }
        assert_eq!(
            s.tick(counts(&m), t0 + sec * 61),
            Some((28, "mqtt: 28 invalid".into()))
        );
        // A quiet minute writes nothing; the next refusal is reported at once again.
        assert_eq!(s.tick(counts(&m), t0 + sec * 122), None);
        m.reject("mqtt", Reject::Busy);
        assert_eq!(
            s.tick(counts(&m), t0 + sec * 123),
            Some((1, "mqtt: 1 busy".into()))
        );
    }
}
