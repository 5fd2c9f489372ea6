//! Which requests may change things, beyond the bearer token: requests a web browser
//! could have been made to send are refused.
//!
//! Two browser attacks reach an admin API on loopback (issue 23, item 5):
//! - **cross-site requests**: any web page can send a "simple" `POST` (e.g. with
//!   `Content-Type: text/plain`) to `http://127.0.0.1:9100/...`; the browser marks it with
//!   the page's `Origin`. A change whose `Origin` is present and is not this admin API
//!   (same host and port as the request's `Host`) is refused; so is `Origin: null`.
//! - **DNS rebinding**: a page at `attacker.example:9100` re-points its name to
//!   127.0.0.1 and then talks to the API as same-origin; the browser sends
//!   `Host: attacker.example:9100`. A change whose `Host` (or absolute request target)
//!   is not the admin address — the address the connection arrived on, the bound
//!   address, a loopback address (a port published by Docker arrives on the container's
//!   address), `localhost`, or a name or address in `[admin] allowed_hosts` — is refused.
//!
//! The `Host` port is not compared (a TLS proxy in front may change it); the `Origin`
//! port is, against the `Host` port, so that another web server on this host
//! (`http://localhost:8080`) is not taken for the admin API.

use crate::config::host_name;
use hyper::header::{HeaderMap, HOST, ORIGIN};
use hyper::Uri;
use std::net::{IpAddr, SocketAddr};

/// Where a request arrived: the admin socket's bound address (what the token-free check
/// decides on) and the local address of the connection (the address the client dialled).
#[derive(Debug, Clone, Copy)]
pub(super) struct Arrival {
    pub bound: SocketAddr,
    pub local: SocketAddr,
}

/// `Ok` if a mutating request may come from this `Host` / `Origin`; else why not.
pub(super) fn check_browser_safety(
    uri: &Uri,
    headers: &HeaderMap,
    arrival: &Arrival,
    allowed_hosts: &[String],
) -> Result<(), String> {
    // An absolute request target (`PUT http://host/...`) replaces `Host` (RFC 9112 3.2.2).
    let host_text = match uri.authority() {
        Some(a) => a.as_str().to_string(),
        None => {
            let mut hosts = headers.get_all(HOST).iter();
            let (Some(h), None) = (hosts.next(), hosts.next()) else {
                return Err("change refused: the request needs exactly one Host header".to_string());
            };
            h.to_str()
                .map_err(|_| "change refused: the Host header is not text".to_string())?
                .to_string()
        }
    };
    let refused_host = || {
        format!(
            "change refused: Host `{host_text}` is not this admin API's address ({}, loopback, localhost{}); \
             a web page may be using DNS rebinding. If you reach the API under this name, add it to [admin] allowed_hosts",
            arrival.local.ip().to_canonical(),
            if allowed_hosts.is_empty() {
                String::new()
            } else {
                format!(" or {}", allowed_hosts.join(", "))
            }
        )
    };
    let (host, host_port) = split_authority(&host_text).ok_or_else(refused_host)?;
    if !host_allowed(&host, arrival, allowed_hosts) {
        return Err(refused_host());
    }

    let mut origins = headers.get_all(ORIGIN).iter();
    let Some(origin) = origins.next() else {
        return Ok(()); // not sent by a browser on behalf of another page
    };
    let origin = origin.to_str().unwrap_or("(not text)");
    let refused_origin = || {
        format!(
            "change refused: the request comes from a web page at Origin `{origin}`, not from this admin API at `{host_text}`; cross-site changes are not accepted"
        )
    };
    if origins.next().is_some() {
        return Err(refused_origin());
    }
    let (scheme_port, rest) = if let Some(r) = origin.strip_prefix("http://") {
        (80, r)
    } else if let Some(r) = origin.strip_prefix("https://") {
        (443, r)
    } else {
        return Err(refused_origin()); // `null`, or not a web origin
    };
    let (o_host, o_port) = split_authority(rest).ok_or_else(refused_origin)?;
    if o_host == host && o_port.unwrap_or(scheme_port) == host_port.unwrap_or(scheme_port) {
        Ok(())
    } else {
        Err(refused_origin())
    }
}

/// `host[:port]` or `[v6][:port]` → normalized host name ([`host_name`]) and port.
fn split_authority(s: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (h, port)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok()?),
    };
    Some((host_name(host)?, port))
}

fn host_allowed(host: &str, arrival: &Arrival, allowed_hosts: &[String]) -> bool {
    let is = |ip: IpAddr| ip.to_canonical().to_string() == host;
    host == "localhost"
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        || is(arrival.local.ip())
        || (!arrival.bound.ip().is_unspecified() && is(arrival.bound.ip()))
        || allowed_hosts.iter().any(|h| h == host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn arrival(bound: &str, local: &str) -> Arrival {
        Arrival {
            bound: bound.parse().unwrap_or_else(|e| panic!("{bound}: {e}")),
            local: local.parse().unwrap_or_else(|e| panic!("{local}: {e}")),
        }
    }

    fn check(
        target: &str,
        host: Option<&str>,
        origin: Option<&str>,
        at: &Arrival,
        allowed: &[&str],
    ) -> Result<(), String> {
        let uri: Uri = target.parse().unwrap_or_else(|e| panic!("{target}: {e}"));
        let mut h = HeaderMap::new();
        if let Some(v) = host {
            h.insert(
                HOST,
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        if let Some(v) = origin {
            h.insert(
                ORIGIN,
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        check_browser_safety(&uri, &h, at, &allowed)
    }

    #[test]
    fn hosts() {
        let lo = arrival("127.0.0.1:9100", "127.0.0.1:9100");
        let ok = |host: &str| check("/x", Some(host), None, &lo, &["gw1.example"]);
        for h in [
            "127.0.0.1:9100",
            "127.0.0.1",
            "localhost:9100",
            "LocalHost.",
            "gw1.example:9100",
            "GW1.example",
        ] {
            assert!(ok(h).is_ok(), "{h}");
        }
        for h in [
            "attacker.example:9100",
            "10.0.0.9:9100",
            "localhost.attacker.example",
            "127.0.0.1:x",
            "user@127.0.0.1",
            "",
        ] {
            let e = ok(h).err().unwrap_or_default();
            assert!(e.contains("allowed_hosts"), "{h}: {e}");
        }
        assert!(check("/x", None, None, &lo, &[]).is_err(), "no Host");
        // An absolute target names the host; Host is then ignored.
        assert!(check(
            "http://attacker.example:9100/x",
            Some("127.0.0.1"),
            None,
            &lo,
            &[]
        )
        .is_err());
        assert!(check("http://localhost:9100/x", Some("evil"), None, &lo, &[]).is_ok());
    }

    #[test]
    fn wildcard_and_ipv6_binds() {
        // A wildcard bind: the address the client dialled is the admin address.
        let any = arrival("0.0.0.0:9100", "10.0.0.5:9100");
        assert!(check("/x", Some("10.0.0.5:9100"), None, &any, &[]).is_ok());
        assert!(check("/x", Some("0.0.0.0:9100"), None, &any, &[]).is_err());
        assert!(check("/x", Some("10.0.0.6:9100"), None, &any, &[]).is_err());
        // A port published by Docker: dialled on the host's loopback (or a NAT address,
        // when listed), it arrives on the container's address.
        let docker = arrival("0.0.0.0:9100", "172.17.0.2:9100");
        assert!(check("/x", Some("127.0.0.1:9101"), None, &docker, &[]).is_ok());
        assert!(check("/x", Some("203.0.113.5"), None, &docker, &["203.0.113.5"]).is_ok());
        assert!(check("/x", Some("203.0.113.6"), None, &docker, &["203.0.113.5"]).is_err());
        // Dual-stack socket reached over IPv4: the mapped address counts as IPv4.
        let dual = arrival("[::]:9100", "[::ffff:127.0.0.1]:9100");
        assert!(check("/x", Some("127.0.0.1:9100"), None, &dual, &[]).is_ok());
        let v6 = arrival("[::1]:9100", "[::1]:9100");
        assert!(check("/x", Some("[::1]:9100"), None, &v6, &[]).is_ok());
        assert!(check("/x", Some("[0:0::1]"), None, &v6, &[]).is_ok());
        assert!(
            check("/x", Some("::1"), None, &v6, &[]).is_err(),
            "no brackets"
        );
    }

    #[test]
    fn origins() {
        let lo = arrival("127.0.0.1:9100", "127.0.0.1:9100");
        let with = |host: &str, origin: &str| check("/x", Some(host), Some(origin), &lo, &[]);
        assert!(with("127.0.0.1:9100", "http://127.0.0.1:9100").is_ok());
        assert!(with("localhost:9100", "http://LOCALHOST:9100").is_ok());
        assert!(with("localhost", "http://localhost:80").is_ok());
        assert!(with("localhost", "https://localhost").is_ok());
        for (host, origin) in [
            ("127.0.0.1:9100", "http://evil.example"),
            ("localhost:9100", "http://localhost:8080"),
            ("localhost:9100", "http://127.0.0.1:9100"),
            ("127.0.0.1:9100", "null"),
            ("127.0.0.1:9100", "file://"),
            ("127.0.0.1:9100", "http://127.0.0.1:9100/path"),
            ("localhost", "https://localhost:80"),
        ] {
            let e = with(host, origin).err().unwrap_or_default();
            assert!(e.contains("Origin"), "{host} {origin}: {e}");
        }
    }
}
