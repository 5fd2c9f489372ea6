//! Validation of `[[clusters.X.fanout]]`: fan-out sessions (dynsec only,
//! `crate::fanout`). A client matched by a rule is connected to every up node of the
//! cluster at once.
//!
//! Called from `validate.rs` for every cluster, so `mqgate check`, start-up and every
//! reload accept and refuse the same files. A reload's rules apply to new connections;
//! running fan-out sessions keep the rule they started with.

use super::raw::RawFanout;
use super::{ConfigError, Mode};

/// `max_sessions`: fan-out sessions of one rule at once on this gateway.
pub const MAX_SESSIONS: (i64, i64) = (1, 1_000_000);
/// `max_inflight`: QoS 1/2 messages from the nodes not yet acknowledged by the client
/// (they take a packet identifier each on the client connection).
pub const MAX_INFLIGHT: (i64, i64) = (1, 65_535);
/// `max_packet_size`: the largest packet a fan-out session reads, either way.
pub const MAX_PACKET_SIZE: (i64, i64) = (1024, 268_435_460);

/// What a rule matches on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FanoutMatch {
    /// A glob on the client id.
    ClientId(String),
    /// A glob on the username (a CONNECT without one never matches).
    Username(String),
}

/// Where the client's own PUBLISHes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanoutPublish {
    /// To every connected node.
    All,
    /// To one node, picked by the client id's hash among the connected nodes
    /// (`publish_all_topics` still go to all).
    One,
}

/// One typed `[[clusters.X.fanout]]` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct FanoutRule {
    pub matches: FanoutMatch,
    pub publish: FanoutPublish,
    /// With `publish = "one"`: topic filters whose PUBLISHes still go to all nodes.
    pub publish_all_topics: Vec<String>,
    pub max_sessions: usize,
    pub max_inflight: usize,
    pub max_packet_size: usize,
}

impl FanoutRule {
    /// Does this rule take a client with this id and username?
    pub fn takes(&self, client_id: &str, username: Option<&str>) -> bool {
        match &self.matches {
            FanoutMatch::ClientId(g) => glob_match(g, client_id),
            FanoutMatch::Username(g) => username.is_some_and(|u| glob_match(g, u)),
        }
    }
}

/// `*` matches any run of characters (also none), `?` exactly one; everything else
/// matches itself. Iterative with one backtrack point: linear in practice, never
/// exponential.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let g: Vec<char> = glob.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut gi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match g.get(gi) {
            Some('*') => {
                star = Some((gi, ti));
                gi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                gi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sg, st)) => {
                    gi = sg + 1;
                    ti = st + 1;
                    star = Some((sg, st + 1));
                }
                None => return false,
            },
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

/// Why a glob is refused, if it is.
fn bad_glob(g: &str) -> Option<&'static str> {
    if g.is_empty() {
        return Some("an empty glob matches no client");
    }
    if g.chars().any(|c| matches!(c, '[' | ']' | '{' | '}' | '\\')) {
        return Some(
            "only `*` and `?` are glob characters here; `[`, `]`, `{`, `}` and `\\` are refused",
        );
    }
    if g.chars().any(char::is_control) {
        return Some("control characters are not allowed");
    }
    None
}

/// A topic filter as MQTT defines it: `#` only last and alone in its level, `+` alone
/// in its level.
fn bad_filter(f: &str) -> Option<&'static str> {
    if f.is_empty() {
        return Some("an empty topic filter");
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return Some("`#` must be the last level, alone");
        }
        if l.contains('+') && *l != "+" {
            return Some("`+` must be alone in its level");
        }
    }
    None
}

use super::sessions::{err, int};

/// The typed fan-out rules of cluster `cname`, and what is wrong with them.
pub fn rules(cname: &str, mode: Mode, raw: &[RawFanout]) -> (Vec<FanoutRule>, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    if !raw.is_empty() && mode == Mode::FullSync {
        errors.push(err(
            format!("clusters.{cname}.fanout"),
            "fan-out sessions apply to dynsec clusters only: in full-sync mode one leader \
             holds every client already"
                .into(),
            Some("remove [[clusters.X.fanout]] or set mode = \"dynsec\""),
        ));
    }
    for (i, r) in raw.iter().enumerate() {
        let k = |x: &str| format!("clusters.{cname}.fanout[{i}].{x}");
        let matches = match (&r.clients, &r.username) {
            (Some(g), None) => {
                if let Some(why) = bad_glob(g) {
                    errors.push(err(
                        k("clients"),
                        format!("bad glob {g:?}: {why}"),
                        Some("clients = \"backend-*\""),
                    ));
                }
                FanoutMatch::ClientId(g.clone())
            }
            (None, Some(g)) => {
                if let Some(why) = bad_glob(g) {
                    errors.push(err(
                        k("username"),
                        format!("bad glob {g:?}: {why}"),
                        Some("username = \"svc-*\""),
                    ));
                }
                FanoutMatch::Username(g.clone())
            }
            (Some(_), Some(_)) => {
                errors.push(err(
                    k("clients"),
                    "a rule matches on `clients` or on `username`, not both".into(),
                    Some("write two rules"),
                ));
                FanoutMatch::ClientId(String::new())
            }
            (None, None) => {
                errors.push(err(
                    format!("clusters.{cname}.fanout[{i}]"),
                    "a fan-out rule needs `clients` (a glob on the client id) or `username`".into(),
                    Some("clients = \"backend-*\""),
                ));
                FanoutMatch::ClientId(String::new())
            }
        };
        let publish = match r.publish.as_str() {
            "all" => FanoutPublish::All,
            "one" => FanoutPublish::One,
            other => {
                errors.push(err(
                    k("publish"),
                    format!("unknown value {other:?}: expected \"all\" or \"one\""),
                    Some("publish = \"all\""),
                ));
                FanoutPublish::All
            }
        };
        for (j, f) in r.publish_all_topics.iter().enumerate() {
            if let Some(why) = bad_filter(f) {
                errors.push(err(
                    format!("clusters.{cname}.fanout[{i}].publish_all_topics[{j}]"),
                    format!("bad topic filter {f:?}: {why}"),
                    None,
                ));
            }
        }
        if publish == FanoutPublish::All && !r.publish_all_topics.is_empty() {
            errors.push(err(
                k("publish_all_topics"),
                "publish_all_topics applies with publish = \"one\" only (with \"all\" every \
                 PUBLISH goes to all nodes)"
                    .into(),
                Some("remove it or set publish = \"one\""),
            ));
        }
        out.push(FanoutRule {
            matches,
            publish,
            publish_all_topics: r.publish_all_topics.clone(),
            max_sessions: int(&mut errors, k("max_sessions"), r.max_sessions, MAX_SESSIONS),
            max_inflight: int(&mut errors, k("max_inflight"), r.max_inflight, MAX_INFLIGHT),
            max_packet_size: int(
                &mut errors,
                k("max_packet_size"),
                r.max_packet_size,
                MAX_PACKET_SIZE,
            ),
        });
    }
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("backend-*", "backend-1"));
        assert!(glob_match("backend-*", "backend-"));
        assert!(!glob_match("backend-*", "backen"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*-svc-*", "x-svc-y"));
        assert!(!glob_match("*-svc-*", "x-svcy"));
        assert!(glob_match("é*", "été"));
        assert!(!glob_match("a", "ab"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
    }

    #[test]
    fn bad_globs_and_filters() {
        assert!(bad_glob("").is_some());
        assert!(bad_glob("back[0-9]").is_some());
        assert!(bad_glob("backend-*").is_none());
        assert!(bad_filter("a/#/b").is_some());
        assert!(bad_filter("a/b+").is_some());
        assert!(bad_filter("cmd/+/x").is_none());
        assert!(bad_filter("cmd/#").is_none());
    }
}
