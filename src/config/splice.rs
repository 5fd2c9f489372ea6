//! Validation of `[limits] splice` and `max_pipes`: splice(2) for large flows in the
//! byte relay (`crate::relay::splice`, `crate::pipes`).
//!
//! Called from `validate.rs`, so `mqgate check`, start-up and every reload accept and
//! refuse the same files.

use super::raw::RawLimits;
use super::{ConfigError, Splice};

/// `max_pipes`: 0 (no pipe: every flow is copied) to ten million (twenty million
/// descriptors, far beyond any open-file limit).
pub const MAX_PIPES: (i64, i64) = (0, 10_000_000);

/// The typed `splice` and `max_pipes` (`None`: from the open-file limit), and what is
/// wrong with them.
pub fn splice(l: &RawLimits) -> (Splice, Option<usize>, Vec<ConfigError>) {
    let mut errors = Vec::new();
    // Off by default: on the hosts measured (BENCHMARKS.md) it saved the proxy's CPU
    // but not throughput.
    let mode = match l.splice.as_deref() {
        Some("auto") => Splice::Auto,
        None | Some("off") => Splice::Off,
        Some(other) => {
            errors.push(ConfigError {
                line: None,
                key: "limits.splice".into(),
                message: format!("unknown value {other:?}"),
                hint: Some(
                    "\"auto\" (large flows between plain-TCP sockets move with splice(2)) or \
                     \"off\" (every byte is copied)"
                        .into(),
                ),
            });
            Splice::Off
        }
    };
    let (min, max) = MAX_PIPES;
    let max_pipes = match l.max_pipes {
        None => None,
        Some(n) if (min..=max).contains(&n) => usize::try_from(n).ok(),
        Some(n) => {
            errors.push(ConfigError {
                line: None,
                key: "limits.max_pipes".into(),
                message: format!("must be at least {min} and at most {max}, got {n}"),
                hint: Some(
                    "each pipe holds two open files; leave it unset to take what the open-file \
                     limit leaves beside max_connections"
                        .into(),
                ),
            });
            None
        }
    };
    (mode, max_pipes, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(splice: Option<&str>, max_pipes: Option<i64>) -> RawLimits {
        RawLimits {
            splice: splice.map(str::to_string),
            max_pipes,
            ..RawLimits::default()
        }
    }

    #[test]
    fn splice_is_auto_or_off_and_max_pipes_is_bounded() {
        assert_eq!(splice(&raw(None, None)), (Splice::Off, None, vec![]));
        assert_eq!(
            splice(&raw(Some("off"), Some(0))),
            (Splice::Off, Some(0), vec![])
        );
        assert_eq!(
            splice(&raw(Some("auto"), Some(64))),
            (Splice::Auto, Some(64), vec![])
        );
        let (_, _, errors) = splice(&raw(Some("on"), Some(-1)));
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["limits.splice", "limits.max_pipes"]);
        let (_, max, errors) = splice(&raw(None, Some(MAX_PIPES.1 + 1)));
        assert_eq!((max, errors.len()), (None, 1));
    }
}
