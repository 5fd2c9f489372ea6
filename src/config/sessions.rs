//! Validation of `[clusters.X.sessions]`: packet-aware sessions (dynsec only).
//!
//! Called from `validate.rs` for every cluster, so `mqgate check`, start-up and every
//! reload accept and refuse the same files.

use super::checker::parse_duration;
use super::raw::RawSessions;
use super::{ConfigError, Mode, SessionsConfig};
use std::time::Duration;

/// `max_subscriptions_per_client`: a client may hold more on its broker; this many
/// are what mqgate stores and replays.
pub const MAX_PER_CLIENT: (i64, i64) = (1, 10_000);
/// `max_subscription_bytes_per_client`: at least one filter of the longest topic.
pub const MAX_BYTES_PER_CLIENT: (i64, i64) = (64, 16 * 1024 * 1024);
/// `max_subscriptions_total`.
pub const MAX_TOTAL: (i64, i64) = (1, 100_000_000);

pub(super) fn err(key: String, message: String, hint: Option<&str>) -> ConfigError {
    ConfigError {
        line: None,
        key,
        message,
        hint: hint.map(str::to_string),
    }
}

pub(super) fn int(
    errors: &mut Vec<ConfigError>,
    key: String,
    v: i64,
    (min, max): (i64, i64),
) -> usize {
    if v < min || v > max {
        errors.push(err(
            key,
            format!("must be at least {min} and at most {max}, got {v}"),
            None,
        ));
        return min as usize;
    }
    v as usize
}

/// The typed `sessions` of cluster `cname`, and what is wrong with it.
pub fn sessions(
    cname: &str,
    mode: Mode,
    raw: Option<&RawSessions>,
) -> (SessionsConfig, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let Some(s) = raw else {
        return (SessionsConfig::default(), errors);
    };
    let k = |x: &str| format!("clusters.{cname}.sessions.{x}");
    if mode == Mode::FullSync {
        errors.push(err(
            format!("clusters.{cname}.sessions"),
            "sessions settings apply to dynsec clusters only: in full-sync mode the \
             brokers share sessions and subscriptions themselves"
                .into(),
            Some("remove [clusters.X.sessions] or set mode = \"dynsec\""),
        ));
    }
    let replay_timeout = match parse_duration(&s.replay_timeout) {
        Some(d) if d >= Duration::from_millis(1) && d <= super::bounds::MAX_DURATION => d,
        _ => {
            errors.push(err(
                k("replay_timeout"),
                format!("invalid duration {:?}: from 1ms to 1y", s.replay_timeout),
                Some("replay_timeout = \"10s\""),
            ));
            Duration::from_secs(10)
        }
    };
    let cfg = SessionsConfig {
        restore_subscriptions: s.restore_subscriptions,
        clean_orphans: s.clean_orphans,
        max_per_client: int(
            &mut errors,
            k("max_subscriptions_per_client"),
            s.max_subscriptions_per_client,
            MAX_PER_CLIENT,
        ),
        max_bytes_per_client: int(
            &mut errors,
            k("max_subscription_bytes_per_client"),
            s.max_subscription_bytes_per_client,
            MAX_BYTES_PER_CLIENT,
        ),
        max_total: int(
            &mut errors,
            k("max_subscriptions_total"),
            s.max_subscriptions_total,
            MAX_TOTAL,
        ),
        replay_timeout,
        single_live: super::single_live::single_live(cname, s, &mut errors),
    };
    (cfg, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_sync_refuses_sessions_and_bounds_are_checked() {
        let raw = RawSessions {
            restore_subscriptions: true,
            max_subscriptions_per_client: 0,
            replay_timeout: "soon".into(),
            ..RawSessions::default()
        };
        let (_, errors) = sessions("b", Mode::FullSync, Some(&raw));
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "clusters.b.sessions",
                "clusters.b.sessions.replay_timeout",
                "clusters.b.sessions.max_subscriptions_per_client"
            ]
        );
        assert!(errors[0].message.contains("dynsec clusters only"));
        let ok = RawSessions {
            restore_subscriptions: true,
            ..RawSessions::default()
        };
        let (cfg, errors) = sessions("b", Mode::Dynsec, Some(&ok));
        assert!(errors.is_empty());
        assert!(cfg.restore_subscriptions && cfg.packet_aware());
    }
}
