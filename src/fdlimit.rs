//! The open-file limit (`RLIMIT_NOFILE`). Every client connection holds two
//! descriptors (the client's socket and the broker's) and every listener one, so
//! `limits.max_connections` means nothing if the process may not open that many files:
//! connections beyond the limit fail at accept (`EMFILE`). HAProxy refuses to start when
//! `maxconn` does not fit; mqgate raises its soft limit to the hard one at start
//! ([`raise`], as HAProxy does) and warns — in `mqgate check` and in the start-up log —
//! when `max_connections` still does not fit ([`warning`]).

use crate::config::Config;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Soft and hard open-file limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// A limit for logs: the number, or `unlimited`.
pub fn show(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_string(), |n| n.to_string())
}

/// This process's limits now.
pub fn current() -> Limit {
    let r = getrlimit(Resource::Nofile);
    Limit {
        soft: r.current,
        hard: r.maximum,
    }
}

/// Raise the soft limit to the hard one (no privilege needed); returns the limits in
/// force afterwards. On failure the limits stay as they were.
pub fn raise() -> std::io::Result<Limit> {
    let now = current();
    if now.soft == now.hard {
        return Ok(now);
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: now.hard,
            maximum: now.hard,
        },
    )?;
    Ok(current())
}

/// Descriptors `cfg` needs at most: two per client connection, one per listener.
pub fn needed(cfg: &Config) -> u64 {
    (cfg.limits.max_connections as u64)
        .saturating_mul(2)
        .saturating_add(cfg.listeners.len() as u64)
}

/// A warning when `cfg` needs more descriptors than `limit` (`None`: unlimited) allows.
pub fn warning(cfg: &Config, limit: Option<u64>) -> Option<String> {
    let limit = limit?;
    let need = needed(cfg);
    (need > limit).then(|| {
        format!(
            "limits.max_connections = {} needs up to {need} open files (2 per connection + 1 per \
             listener) but the open-file limit is {limit}: connections beyond about {} will fail. \
             Raise the limit (systemd: LimitNOFILE={need} or more in the unit; a shell: \
             ulimit -n) or lower max_connections",
            cfg.limits.max_connections,
            limit.saturating_sub(cfg.listeners.len() as u64) / 2
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max: usize) -> Config {
        let text = format!(
            "[limits]\nmax_connections = {max}\n[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\ncluster = \"c\"\n\
             [[listeners]]\nname = \"b\"\nbind = \"127.0.0.1:1\"\ncluster = \"c\"\n\
             [clusters.c]\nnodes = [ {{ name = \"n\", address = \"127.0.0.1:1883\" }} ]\n"
        );
        match crate::config::parse(std::path::Path::new("/tmp/fd.toml"), &text) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn max_connections_twice_plus_listeners_must_fit_the_open_file_limit() {
        let c = cfg(1000);
        assert_eq!(needed(&c), 2002);
        assert_eq!(warning(&c, Some(2002)), None);
        assert_eq!(warning(&c, None), None, "unlimited");
        let w = warning(&c, Some(1024)).expect("1024 < 2002: a warning");
        assert!(
            w.contains("max_connections = 1000")
                && w.contains("2002")
                && w.contains("1024")
                && w.contains("LimitNOFILE"),
            "{w}"
        );
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let after = raise().expect("raising the soft limit to the hard one is always allowed");
        assert_eq!(after.soft, after.hard);
    }
}
