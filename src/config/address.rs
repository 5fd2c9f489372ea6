//! Addresses in the file: broker nodes (`host:port`), host names the admin API
//! compares, and CIDR blocks.

use super::*;

/// `host:port`, `ip:port` or `[v6]:port`.
pub fn parse_host_port(s: &str) -> Option<NodeAddress> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(NodeAddress {
            host: sa.ip().to_string(),
            port: sa.port(),
        });
    }
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if host.is_empty() || port == 0 || host.contains(':') {
        return None;
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return None;
    }
    Some(NodeAddress {
        host: host.to_string(),
        port,
    })
}

/// A host name or IP address as the admin API compares it with a request's `Host` or
/// `Origin` (no port): an IP in its canonical text form (an IPv6 address may be in
/// brackets; an IPv4-mapped one becomes IPv4), or a DNS name in lower case without a
/// trailing dot. `None` for anything else (ports, schemes, wildcards, empty labels).
pub fn host_name(s: &str) -> Option<String> {
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Some(ip.to_canonical().to_string());
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

pub(super) fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}
