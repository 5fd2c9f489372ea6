//! Validation of `single_live` and its damping in `[clusters.X.sessions]`: one live
//! session per client id across the gateways of a cluster (`crate::live`).
//!
//! Called from `sessions.rs` (itself called from `validate.rs` for every cluster), so
//! `mqgate check`, start-up and every reload accept and refuse the same files.

use super::checker::parse_duration;
use super::raw::RawSessions;
use super::{ConfigError, SingleLiveConfig};
use std::time::Duration;

/// `takeover_limit`: takeovers from different addresses tolerated within the window.
pub const LIMIT: (i64, i64) = (1, 1000);
/// `takeover_window` and `takeover_holddown`: from 1 s to 1 day.
pub const DURATION: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(86_400));

fn duration(errors: &mut Vec<ConfigError>, key: String, v: &str, dflt: Duration) -> Duration {
    match parse_duration(v) {
        Some(d) if d >= DURATION.0 && d <= DURATION.1 => d,
        _ => {
            errors.push(ConfigError {
                line: None,
                key,
                message: format!("invalid duration {v:?}: must be at least 1s and at most 1d"),
                hint: Some(format!("e.g. \"{}s\"", dflt.as_secs())),
            });
            dflt
        }
    }
}

/// The typed `single_live` settings of cluster `cname`; problems go to `errors`.
pub fn single_live(
    cname: &str,
    s: &RawSessions,
    errors: &mut Vec<ConfigError>,
) -> SingleLiveConfig {
    let k = |x: &str| format!("clusters.{cname}.sessions.{x}");
    let d = SingleLiveConfig::default();
    let limit = if (LIMIT.0..=LIMIT.1).contains(&s.takeover_limit) {
        s.takeover_limit as u32
    } else {
        errors.push(ConfigError {
            line: None,
            key: k("takeover_limit"),
            message: format!(
                "must be at least {} and at most {}, got {}",
                LIMIT.0, LIMIT.1, s.takeover_limit
            ),
            hint: None,
        });
        d.limit
    };
    SingleLiveConfig {
        enabled: s.single_live,
        limit,
        window: duration(errors, k("takeover_window"), &s.takeover_window, d.window),
        holddown: duration(
            errors,
            k("takeover_holddown"),
            &s.takeover_holddown,
            d.holddown,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_and_defaults_are_off() {
        let raw = RawSessions {
            single_live: true,
            takeover_limit: 0,
            takeover_window: "0s".into(),
            takeover_holddown: "2d".into(),
            ..RawSessions::default()
        };
        let mut errors = Vec::new();
        let c = single_live("b", &raw, &mut errors);
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "clusters.b.sessions.takeover_limit",
                "clusters.b.sessions.takeover_window",
                "clusters.b.sessions.takeover_holddown"
            ]
        );
        assert!(c.enabled);
        let mut errors = Vec::new();
        let c = single_live("b", &RawSessions::default(), &mut errors);
        assert!(errors.is_empty());
        assert_eq!(c, SingleLiveConfig::default());
        assert!(!c.enabled);
    }
}
