//! `[peers] name_env`, `discover` and `discover_interval`: this instance's name taken
//! from the environment (a pod name), and peers found through DNS. Called from
//! `validate`, so `mqgate check`, `run` and reload check them the same way.

use super::checker::V;
use super::raw::RawPeers;
use crate::config::PeerDiscovery;
use std::time::Duration;

/// `discover_interval` when omitted.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Shortest `discover_interval` (a DNS server is not a busy loop).
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// This instance's name: `name`, or the value of the variable `name_env` names.
pub(super) fn name(v: &mut V, p: &RawPeers) -> String {
    match (&p.name_env, p.name.is_empty()) {
        (Some(_), false) => {
            v.err_hint(
                "peers.name_env",
                "set either `name` or `name_env`, not both",
                "name_env = \"POD_NAME\"",
            );
            p.name.clone()
        }
        (Some(var), true) => match std::env::var(var) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => {
                v.err_hint(
                    "peers.name_env",
                    format!("environment variable {var} is not set or empty"),
                    "on Kubernetes: env POD_NAME from fieldRef metadata.name",
                );
                String::new()
            }
        },
        (None, true) => {
            v.err_hint(
                "peers.name",
                "[peers] needs this instance's `name` (or `name_env`)",
                "name = \"gate-a\"",
            );
            String::new()
        }
        (None, false) => p.name.clone(),
    }
}

/// `discover = "host:port"` (A/AAAA records) or `"_service._proto.host"` (SRV records).
pub(super) fn discovery(v: &mut V, p: &RawPeers) -> Option<PeerDiscovery> {
    let interval = match &p.discover_interval {
        Some(s) => {
            let d = v.positive_duration("peers.discover_interval".into(), s);
            if d < MIN_INTERVAL {
                v.err_hint(
                    "peers.discover_interval",
                    format!("{s:?} is shorter than 1s (it must be at least 1s and at most 1y)"),
                    "discover_interval = \"5s\"",
                );
            }
            d
        }
        None => DEFAULT_INTERVAL,
    };
    let target = p.discover.as_deref()?;
    match parse(target) {
        Some((name, port)) => Some(PeerDiscovery {
            name,
            port,
            interval,
        }),
        None => {
            v.err_hint(
                "peers.discover",
                format!(
                    "invalid discovery target {target:?}: expected a DNS name and a port \
                     (A/AAAA records) or an SRV name starting with `_`, without a port"
                ),
                "discover = \"mqgate-peers.mqtt.svc.cluster.local:7400\"",
            );
            None
        }
    }
}

/// `host:port` → `(host, Some(port))`; `_svc._proto.host` → `(name, None)`.
pub fn parse(s: &str) -> Option<(String, Option<u16>)> {
    let dns = |h: &str| {
        !h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    let s = s.trim_end_matches('.');
    if s.starts_with('_') {
        return dns(s).then(|| (s.to_string(), None));
    }
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = host.trim_end_matches('.');
    dns(host).then(|| (host.to_string(), Some(port)))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn discovery_targets_parse_as_a_records_with_a_port_or_srv_names_without() {
        assert_eq!(
            parse("mqgate-peers.mqtt.svc.cluster.local:7400"),
            Some(("mqgate-peers.mqtt.svc.cluster.local".into(), Some(7400)))
        );
        assert_eq!(
            parse("_peers._tcp.mqgate-peers.mqtt.svc.cluster.local"),
            Some((
                "_peers._tcp.mqgate-peers.mqtt.svc.cluster.local".into(),
                None
            ))
        );
        for bad in [
            "",
            "gate:0",
            "gate",
            "gate:x",
            "a..b:1",
            "_x._tcp.y:7400",
            "a b:1",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
