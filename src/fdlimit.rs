//! The open-file limit (`RLIMIT_NOFILE`). Every client connection holds two
//! descriptors (the client's socket and the broker's) and every listener one, so
//! `limits.max_connections` means nothing if the process may not open that many files:
//! connections beyond the limit fail at accept (`EMFILE`). HAProxy refuses to start when
//! `maxconn` does not fit; mqgate raises its soft limit to the hard one at start
//! ([`raise`], as HAProxy does) and warns — in `mqgate check` and in the start-up log —
//! when `max_connections` still does not fit ([`warning`]).

use crate::config::{Config, Splice};
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

/// Descriptors left aside for what is not a client connection or a pipe: health
/// checks, peer links, admin connections, log files, the runtime's own.
pub const RESERVE: u64 = 64;

/// Pipes splice(2) may open at once (two descriptors each): 0 with `splice = "off"`,
/// else `limits.max_pipes` when set, else a quarter of `max_connections` (HAProxy's
/// `tune.maxpipes` default) within what `limit` leaves beside the descriptors
/// `max_connections` needs ([`needed`]) and a [`RESERVE`], so that connections never
/// run out of descriptors because of pipes. `limit` `None`: unlimited.
pub fn pipe_budget(cfg: &Config, limit: Option<u64>) -> usize {
    if cfg.limits.splice == Splice::Off {
        return 0;
    }
    if let Some(n) = cfg.limits.max_pipes {
        return n;
    }
    let quarter = cfg.limits.max_connections / 4;
    let Some(limit) = limit else {
        return quarter;
    };
    let spare = limit.saturating_sub(needed(cfg)).saturating_sub(RESERVE) / 2;
    quarter.min(usize::try_from(spare).unwrap_or(usize::MAX))
}

/// A warning when `limits.max_pipes` is set and its pipes do not fit beside
/// `max_connections` under `limit` (`None`: unlimited).
pub fn pipe_warning(cfg: &Config, limit: Option<u64>) -> Option<String> {
    let limit = limit?;
    let pipes = cfg
        .limits
        .max_pipes
        .filter(|_| cfg.limits.splice == Splice::Auto)?;
    let need = needed(cfg)
        .saturating_add(RESERVE)
        .saturating_add(2 * pipes as u64);
    (need > limit).then(|| {
        format!(
            "limits.max_pipes = {pipes} needs {} open files (2 per pipe) beside the {} of \
             max_connections = {} and {RESERVE} kept aside, but the open-file limit is \
             {limit}: pipes could take the descriptors of connections. Lower max_pipes, \
             leave it unset (derived from the limit), or raise the limit",
            2 * pipes,
            needed(cfg),
            cfg.limits.max_connections
        )
    })
}

/// What `limit` open files leave short for `cfg`: connections, then pipes.
pub fn warnings(cfg: &Config, limit: Option<u64>) -> impl Iterator<Item = String> {
    [warning(cfg, limit), pipe_warning(cfg, limit)]
        .into_iter()
        .flatten()
}

/// Size the splice(2) pipe pool for `cfg`, at every apply: the number derived from the
/// open-file limit follows `max_connections`. Connections already relayed keep their
/// listener's setting; the pool's size applies to them at once. Logs the setting when
/// it `changed`. Whether splice is on.
pub fn configure_pipes(pool: &crate::pipes::PipePool, cfg: &Config, changed: bool) -> bool {
    let on = cfg.limits.splice == Splice::Auto;
    let max_pipes = pipe_budget(cfg, current().soft);
    pool.configure(on, max_pipes);
    if changed {
        tracing::info!(
            splice = if on { "auto" } else { "off" },
            max_pipes,
            "splice(2) for large flows between plain-TCP sockets"
        );
    }
    on
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max: usize) -> Config {
        cfg_with(max, "")
    }

    fn cfg_with(max: usize, extra: &str) -> Config {
        let text = format!(
            "[limits]\nmax_connections = {max}\n{extra}[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\ncluster = \"c\"\n\
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

    #[test]
    fn pipes_take_only_what_max_connections_leaves_of_the_open_file_limit() {
        // 1000 connections: 2002 descriptors; a quarter of them as pipes at most.
        let c = cfg_with(1000, "splice = \"auto\"\n");
        assert_eq!(
            pipe_budget(&c, None),
            250,
            "unlimited: HAProxy's maxconn / 4"
        );
        assert_eq!(pipe_budget(&c, Some(100_000)), 250);
        assert_eq!(
            pipe_budget(&c, Some(2002 + RESERVE + 20)),
            10,
            "what is left, / 2"
        );
        assert_eq!(pipe_budget(&c, Some(2002)), 0, "nothing left: no pipes");
        assert_eq!(
            pipe_budget(&c, Some(1024)),
            0,
            "over the limit already: no pipes"
        );
        assert_eq!(pipe_budget(&cfg(1000), None), 0, "splice is off by default");
        let off = cfg_with(1000, "splice = \"off\"\n");
        assert_eq!(pipe_budget(&off, None), 0);
        let set = cfg_with(1000, "splice = \"auto\"\nmax_pipes = 40\n");
        assert_eq!(
            pipe_budget(&set, Some(1024)),
            40,
            "an explicit max_pipes is taken as it is"
        );
        assert_eq!(
            pipe_warning(&c, Some(1024)),
            None,
            "derived: never a warning"
        );
        assert_eq!(pipe_warning(&set, Some(2002 + RESERVE + 80)), None);
        let w = pipe_warning(&set, Some(2002 + RESERVE + 79)).expect("80 more needed");
        assert!(
            w.contains("max_pipes = 40") && w.contains("80 open files"),
            "{w}"
        );
    }
}
