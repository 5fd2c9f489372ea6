//! Validation of `[clusters.X.shaping]`: CONNECT admission rates (`crate::shaping`).
//!
//! Called from `validate.rs` for every cluster, so `mqgate check`, start-up and every
//! reload accept and refuse the same files.

use super::raw::RawShaping;
use super::{ConfigError, ShapingConfig};

/// `connect_rate`, `node_connect_rate` and `close_rate`, per second; 0 = no limit.
pub const RATE: (i64, i64) = (0, 1_000_000);

fn rate(errors: &mut Vec<ConfigError>, key: String, v: i64) -> u32 {
    let (min, max) = RATE;
    if v < min || v > max {
        errors.push(ConfigError {
            line: None,
            key,
            message: format!("must be at least {min} and at most {max} per second, got {v}"),
            hint: Some("0 = no limit; e.g. connect_rate = 500".into()),
        });
        return 0;
    }
    v as u32
}

/// The typed `shaping` of cluster `cname`, and what is wrong with it.
pub fn shaping(cname: &str, raw: Option<&RawShaping>) -> (ShapingConfig, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let Some(s) = raw else {
        return (ShapingConfig::default(), errors);
    };
    let k = |x: &str| format!("clusters.{cname}.shaping.{x}");
    let cfg = ShapingConfig {
        connect_rate: rate(&mut errors, k("connect_rate"), s.connect_rate),
        node_connect_rate: rate(&mut errors, k("node_connect_rate"), s.node_connect_rate),
        close_rate: rate(&mut errors, k("close_rate"), s.close_rate),
    };
    (cfg, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_bounded_and_default_to_no_limit() {
        let (cfg, errors) = shaping("b", None);
        assert!(errors.is_empty());
        assert_eq!(cfg, ShapingConfig::default());
        let bad = RawShaping {
            connect_rate: -1,
            node_connect_rate: 2_000_000,
            close_rate: 0,
        };
        let (_, errors) = shaping("b", Some(&bad));
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "clusters.b.shaping.connect_rate",
                "clusters.b.shaping.node_connect_rate"
            ]
        );
        let ok = RawShaping {
            connect_rate: 500,
            node_connect_rate: 100,
            close_rate: 10,
        };
        let (cfg, errors) = shaping("b", Some(&ok));
        assert!(errors.is_empty());
        assert_eq!((cfg.connect_rate, cfg.node_connect_rate), (500, 100));
    }
}
