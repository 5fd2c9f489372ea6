//! Validation of `[limits] splice` and `max_pipes`: splice(2) for large flows in the
//! byte relay (`crate::relay::splice`, `crate::pipes`).
//!
//! Called from `validate.rs`, so `mqgate check`, start-up and every reload accept and
//! refuse the same files.

use super::checker::V;
use super::raw::RawLimits;
use super::Splice;

/// `max_pipes`: 0 (no pipe: every flow is copied) to ten million (twenty million
/// descriptors, far beyond any open-file limit).
pub const MAX_PIPES: (i64, i64) = (0, 10_000_000);

/// The typed `splice` and `max_pipes` (`None`: from the open-file limit); what is
/// wrong with them goes to `v`.
pub(super) fn splice(v: &mut V, l: &RawLimits) -> (Splice, Option<usize>) {
    // Off by default: on the hosts measured (BENCHMARKS.md) it saved the proxy's CPU
    // but not throughput.
    let mode = match l.splice.as_deref() {
        Some("auto") => Splice::Auto,
        None | Some("off") => Splice::Off,
        Some(other) => {
            v.err_hint(
                "limits.splice",
                format!("unknown value {other:?}"),
                "\"auto\" (large flows between plain-TCP sockets move with splice(2)) or \
                 \"off\" (every byte is copied)",
            );
            Splice::Off
        }
    };
    let (min, max) = MAX_PIPES;
    let max_pipes = match l.max_pipes {
        None => None,
        Some(n) if (min..=max).contains(&n) => usize::try_from(n).ok(),
        Some(n) => {
            v.err_hint(
                "limits.max_pipes",
                format!("must be at least {min} and at most {max}, got {n}"),
                "each pipe holds two open files; leave it unset to take what the open-file \
                 limit leaves beside max_connections",
            );
            None
        }
    };
    (mode, max_pipes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed values and the keys of the errors, for these raw ones.
    fn check(mode: Option<&str>, max_pipes: Option<i64>) -> (Splice, Option<usize>, Vec<String>) {
        let raw = RawLimits {
            splice: mode.map(str::to_string),
            max_pipes,
            ..RawLimits::default()
        };
        let mut v = V {
            errors: Vec::new(),
            warnings: Vec::new(),
            base: std::path::PathBuf::new(),
        };
        let (mode, max) = splice(&mut v, &raw);
        (mode, max, v.errors.into_iter().map(|e| e.key).collect())
    }

    #[test]
    fn splice_is_auto_or_off_and_max_pipes_is_bounded() {
        assert_eq!(check(None, None), (Splice::Off, None, vec![]));
        assert_eq!(check(Some("off"), Some(0)), (Splice::Off, Some(0), vec![]));
        assert_eq!(
            check(Some("auto"), Some(64)),
            (Splice::Auto, Some(64), vec![])
        );
        let (_, _, keys) = check(Some("on"), Some(-1));
        assert_eq!(keys, ["limits.splice", "limits.max_pipes"]);
        let (_, max, keys) = check(None, Some(MAX_PIPES.1 + 1));
        assert_eq!((max, keys.len()), (None, 1));
    }
}
