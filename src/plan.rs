//! A reload's plan: what changes between the running gateway and a new configuration,
//! computed as a pure function ([`diff`]) of the two, before anything is touched.
//! The gateway then prepares what can fail (TLS material, sockets for the listeners
//! the plan binds) and applies the plan (`crate::gateway`).
//!
//! Start-up is a reload from nothing: [`Running::nothing`].
//!
//! TLS material is not part of the plan: every apply loads all of it afresh (the
//! listeners' certificates, keys, client CAs and CRLs; the clusters' `[tls]` CA and
//! client certificates), so a reload picks up changed files even when the config
//! text is the same.

use crate::config::{Config, Splice};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// What is running now, as far as a plan needs to know.
#[derive(Debug, Clone, Default)]
pub struct Running {
    /// Cluster names.
    pub clusters: BTreeSet<String>,
    /// Listener name → the address its socket was bound for.
    pub listeners: BTreeMap<String, SocketAddr>,
    pub max_connections: Option<usize>,
    pub threads: Option<Option<usize>>,
    pub log_level: Option<String>,
    /// `limits.splice` and `limits.max_pipes`.
    pub splice: Option<(Splice, Option<usize>)>,
}

impl Running {
    /// Before start-up.
    pub fn nothing() -> Self {
        Self::default()
    }
}

/// What a new configuration changes (see the module comment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Clusters to create (their nodes' checks start).
    pub clusters_added: Vec<String>,
    /// Clusters reconfigured in place (nodes added, removed or readdressed; health,
    /// sticky tables and sessions carry over).
    pub clusters_kept: Vec<String>,
    /// Clusters to retire (checks stop, sessions close).
    pub clusters_removed: Vec<String>,
    /// Listeners that need a new socket: new names, and names whose bind changed.
    pub listeners_bind: Vec<(String, SocketAddr)>,
    /// The names among `listeners_bind` that existed (re-bound: their sessions stay).
    pub listeners_rebound: Vec<String>,
    /// Listeners whose socket stays (their settings, TLS material and cluster are
    /// taken from the new configuration).
    pub listeners_kept: Vec<String>,
    /// Listeners to stop (their sessions close).
    pub listeners_removed: Vec<String>,
    /// The new `max_connections`, when it changed (or at start-up).
    pub max_connections: Option<usize>,
    /// `limits.threads` changed: it takes effect at the next start only.
    pub threads_changed: bool,
    /// The new `log.level`, when it changed.
    pub log_level: Option<String>,
    /// The new `limits.splice` and `max_pipes`, when they changed (the gateway sets
    /// the pipe pool at every apply anyway: its derived size follows
    /// `max_connections` and the open-file limit).
    pub splice: Option<(Splice, Option<usize>)>,
}

/// The plan that takes `running` to `new`.
pub fn diff(running: &Running, new: &Config) -> Plan {
    let mut p = Plan::default();
    let wanted: BTreeSet<&str> = new.clusters.iter().map(|c| c.name.as_str()).collect();
    for c in &new.clusters {
        if running.clusters.contains(&c.name) {
            p.clusters_kept.push(c.name.clone());
        } else {
            p.clusters_added.push(c.name.clone());
        }
    }
    p.clusters_removed = running
        .clusters
        .iter()
        .filter(|c| !wanted.contains(c.as_str()))
        .cloned()
        .collect();
    let names: BTreeSet<&str> = new.listeners.iter().map(|l| l.name.as_str()).collect();
    for l in &new.listeners {
        match running.listeners.get(&l.name) {
            Some(bind) if *bind == l.bind => p.listeners_kept.push(l.name.clone()),
            Some(_) => {
                p.listeners_bind.push((l.name.clone(), l.bind));
                p.listeners_rebound.push(l.name.clone());
            }
            None => p.listeners_bind.push((l.name.clone(), l.bind)),
        }
    }
    p.listeners_removed = running
        .listeners
        .keys()
        .filter(|n| !names.contains(n.as_str()))
        .cloned()
        .collect();
    if running.max_connections != Some(new.limits.max_connections) {
        p.max_connections = Some(new.limits.max_connections);
    }
    p.threads_changed = running.threads.is_some_and(|t| t != new.limits.threads);
    if running
        .log_level
        .as_ref()
        .is_some_and(|l| *l != new.log.level)
    {
        p.log_level = Some(new.log.level.clone());
    }
    let splice = (new.limits.splice, new.limits.max_pipes);
    if running.splice.is_some_and(|s| s != splice) {
        p.splice = Some(splice);
    }
    p
}

/// What a plan leaves running (what the next [`diff`] starts from).
pub fn after(new: &Config) -> Running {
    Running {
        clusters: new.clusters.iter().map(|c| c.name.clone()).collect(),
        listeners: new
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.bind))
            .collect(),
        max_connections: Some(new.limits.max_connections),
        threads: Some(new.limits.threads),
        log_level: Some(new.log.level.clone()),
        splice: Some((new.limits.splice, new.limits.max_pipes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(listeners: &[(&str, u16)], clusters: &[&str], extra: &str) -> Config {
        let mut t = format!("{extra}\n");
        for (name, port) in listeners {
            t.push_str(&format!(
                "[[listeners]]\nname = \"{name}\"\nbind = \"127.0.0.1:{port}\"\ncluster = \"{}\"\n",
                clusters[0]
            ));
        }
        for c in clusters {
            t.push_str(&format!(
                "[clusters.{c}]\nnodes = [ {{ name = \"n1\", address = \"127.0.0.1:1\" }} ]\n"
            ));
        }
        match crate::config::parse(Path::new("/tmp/plan-test.toml"), &t) {
            Ok(c) => c,
            Err(e) => panic!("test config: {e}\n{t}"),
        }
    }

    #[test]
    fn start_up_creates_everything() {
        let new = cfg(&[("a", 1883), ("b", 8883)], &["x", "y"], "");
        let p = diff(&Running::nothing(), &new);
        assert_eq!(p.clusters_added, ["x", "y"]);
        assert!(p.clusters_kept.is_empty() && p.clusters_removed.is_empty());
        let binds: Vec<&str> = p.listeners_bind.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(binds, ["a", "b"]);
        assert!(p.listeners_rebound.is_empty() && p.listeners_removed.is_empty());
        assert_eq!(p.max_connections, Some(new.limits.max_connections));
        assert!(!p.threads_changed);
        assert_eq!(p.log_level, None, "the binary sets the first level");
    }

    #[test]
    fn the_same_file_again_changes_nothing_but_keeps_everything() {
        let c = cfg(&[("a", 1883)], &["x"], "");
        let p = diff(&after(&c), &c);
        assert_eq!(
            p,
            Plan {
                clusters_kept: vec!["x".into()],
                listeners_kept: vec!["a".into()],
                ..Plan::default()
            }
        );
    }

    #[test]
    fn listeners_are_added_rebound_kept_and_removed_by_name() {
        let old = cfg(&[("a", 1883), ("b", 8883), ("c", 9000)], &["x"], "");
        let new = cfg(&[("a", 1883), ("b", 8884), ("d", 9001)], &["x"], "");
        let p = diff(&after(&old), &new);
        assert_eq!(p.listeners_kept, ["a"]);
        assert_eq!(
            p.listeners_bind,
            [
                ("b".to_string(), "127.0.0.1:8884".parse().expect("addr")),
                ("d".to_string(), "127.0.0.1:9001".parse().expect("addr")),
            ]
        );
        assert_eq!(p.listeners_rebound, ["b"]);
        assert_eq!(p.listeners_removed, ["c"]);
    }

    #[test]
    fn turning_a_listener_into_websocket_keeps_its_socket() {
        let old = cfg(&[("a", 1883)], &["x"], "");
        let mut new = old.clone();
        new.listeners[0].websocket = Some(crate::config::WebSocketConfig {
            path: "/mqtt".into(),
            allowed_origins: Vec::new(),
        });
        let p = diff(&after(&old), &new);
        // Kept: the gateway builds its ListenerRt from the new settings, so new
        // connections speak WebSocket and open ones keep their stream.
        assert_eq!(p.listeners_kept, ["a"]);
        assert!(p.listeners_bind.is_empty() && p.listeners_removed.is_empty());
        assert_eq!(new.listeners[0].transport(), "ws");
    }

    #[test]
    fn clusters_limits_and_log_level() {
        let old = cfg(&[("a", 1883)], &["x", "y"], "");
        let new = cfg(
            &[("a", 1883)],
            &["x", "z"],
            "[log]\nlevel = \"debug\"\n[limits]\nmax_connections = 10\nthreads = 3\n",
        );
        let p = diff(&after(&old), &new);
        assert_eq!(p.clusters_added, ["z"]);
        assert_eq!(p.clusters_kept, ["x"]);
        assert_eq!(p.clusters_removed, ["y"]);
        assert_eq!(p.max_connections, Some(10));
        assert!(p.threads_changed);
        assert_eq!(p.log_level.as_deref(), Some("debug"));
        assert_eq!(p.splice, None, "splice settings unchanged");
    }

    #[test]
    fn splice_settings_changes_are_planned() {
        let old = cfg(&[("a", 1883)], &["x"], "");
        let on = cfg(&[("a", 1883)], &["x"], "[limits]\nsplice = \"auto\"\n");
        assert_eq!(diff(&after(&old), &on).splice, Some((Splice::Auto, None)));
        let few = cfg(&[("a", 1883)], &["x"], "[limits]\nmax_pipes = 4\n");
        assert_eq!(diff(&after(&on), &few).splice, Some((Splice::Off, Some(4))));
        assert_eq!(diff(&after(&few), &few).splice, None);
    }
}
