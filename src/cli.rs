//! The operator-facing side of the binary: `check`'s summary, `version`, and the
//! commands that talk to a running gateway's admin API (`status`, `node`, `sticky`).
//!
//! The client commands speak plain HTTP/1.1 over a blocking `TcpStream` (no async
//! runtime needed for one request) to the admin API, and print readable tables. Every
//! failure is one line on stderr and a non-zero exit: the gateway is not running, the
//! token is wrong or missing, the cluster/node/key is unknown.

use crate::admin::{ClusterView, StatusView};
use crate::config::{Config, Mode};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

/// Where the admin API is when neither `--admin` nor `./mqgate.toml` says.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9100";
/// Environment variable holding the bearer token for mutating commands.
pub const TOKEN_ENV: &str = "MQGATE_ADMIN_TOKEN";

pub enum Request {
    Status,
    Node {
        state: String,
        cluster: String,
        node: String,
    },
    Sticky {
        action: String,
        cluster: String,
        key: String,
    },
}

pub fn version() -> String {
    format!(
        "mqgate {} ({} {})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// One screen describing what a valid config sets up.
pub fn summary(c: &Config) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}: OK", c.source.display());
    for l in &c.listeners {
        let tls = match &l.tls {
            Some(t) if t.client_ca.is_some() => " (TLS, client certificates required)",
            Some(_) => " (TLS)",
            None => "",
        };
        let pp = if l.proxy_protocol {
            ", expects PROXY header"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  listener {:<12} {}{}{} -> cluster {}",
            l.name, l.bind, tls, pp, l.cluster
        );
    }
    for cl in &c.clusters {
        let how = match cl.mode {
            Mode::FullSync => "full-sync: every client goes to the leader".to_string(),
            Mode::Dynsec => format!(
                "dynsec: balance {}, sticky on {} ({} sessions, expire {})",
                cl.balance.as_str(),
                cl.sticky.key.as_str(),
                cl.sticky.sessions.as_str(),
                human(cl.sticky.expire)
            ),
        };
        let _ = writeln!(s, "  cluster  {:<12} {}", cl.name, how);
        let _ = writeln!(
            s,
            "           health {} every {} (rise {}, fall {}), on node down: {}",
            cl.health.check.as_str(),
            human(cl.health.interval),
            cl.health.rise,
            cl.health.fall,
            cl.on_node_down.as_str()
        );
        for n in &cl.nodes {
            let _ = writeln!(s, "           node {:<12} {}", n.name, n.address);
        }
    }
    let _ = writeln!(
        s,
        "  admin    {}{}",
        c.admin.bind,
        if c.admin.token.is_some() {
            " (token required for changes)"
        } else {
            ""
        }
    );
    if let Some(p) = &c.peers {
        let _ = writeln!(
            s,
            "  peers    {} on {} with {} peer(s)",
            p.name,
            p.bind,
            p.peers.len()
        );
    }
    let _ = writeln!(
        s,
        "  limits   {} connections, CONNECT within {}, at most {} bytes",
        c.limits.max_connections,
        human(c.limits.connect_timeout),
        c.limits.max_connect_size
    );
    s
}

/// A duration the way the config file writes it: "250ms", "10s", "5m", "24h".
fn human(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms >= 3_600_000 && ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms >= 60_000 && ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms >= 1000 && ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Run one client command against the admin API at `admin` (or the default).
pub fn client(req: Request, admin: Option<String>) -> ExitCode {
    let base = admin.unwrap_or_else(default_admin);
    let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
    match run_client(&req, &base, token.as_deref()) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mqgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The admin URL: the `[admin] bind` of `./mqgate.toml` if it has one, else
/// [`DEFAULT_ADMIN`]. A wildcard bind (`0.0.0.0`, `::`) is reached over loopback.
pub fn default_admin() -> String {
    std::fs::read_to_string("mqgate.toml")
        .ok()
        .and_then(|t| admin_from_toml(&t))
        .unwrap_or_else(|| DEFAULT_ADMIN.to_string())
}

fn admin_from_toml(text: &str) -> Option<String> {
    let v: toml::Value = toml::from_str(text).ok()?;
    let bind = v.get("admin")?.get("bind")?.as_str()?;
    let addr: std::net::SocketAddr = bind.parse().ok()?;
    let ip = match addr.ip() {
        std::net::IpAddr::V4(a) if a.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(a) if a.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => format!("[{a}]"),
    };
    Some(format!("http://{ip}:{}", addr.port()))
}

/// Everything but the printing, so that it can be tested.
pub fn run_client(req: &Request, base: &str, token: Option<&str>) -> Result<String, String> {
    let api = Api::new(base, token)?;
    match req {
        Request::Status => {
            let body = api.call("GET", "/api/v1/status", None)?;
            let s: StatusView = serde_json::from_str(&body)
                .map_err(|e| format!("unexpected answer from {}: {e}", api.base))?;
            Ok(status_table(&s))
        }
        Request::Node {
            state,
            cluster,
            node,
        } => {
            let path = format!(
                "/api/v1/clusters/{}/nodes/{}/state",
                encode(cluster),
                encode(node)
            );
            let body = serde_json::json!({ "state": state }).to_string();
            let out = api.call("PUT", &path, Some(&body))?;
            let a: crate::admin::NodeStateAnswer = serde_json::from_str(&out)
                .map_err(|e| format!("unexpected answer from {}: {e}", api.base))?;
            let mut s = format!(
                "cluster {} node {}: {} -> {}",
                a.cluster, a.node, a.previous, a.state
            );
            match a.state.as_str() {
                "drain" => s.push_str(" (new clients avoid it; sticky clients still land there)"),
                "maint" => {
                    let _ = write!(
                        s,
                        " (takes no clients; closed {} session(s))",
                        a.sessions_closed
                    );
                }
                _ => {}
            }
            s.push('\n');
            Ok(s)
        }
        Request::Sticky {
            action,
            cluster,
            key,
        } => {
            let path = format!(
                "/api/v1/clusters/{}/sticky/{}",
                encode(cluster),
                encode(key)
            );
            let method = if action == "del" { "DELETE" } else { "GET" };
            let out = api.call(method, &path, None)?;
            let a: crate::admin::StickyAnswer = serde_json::from_str(&out)
                .map_err(|e| format!("unexpected answer from {}: {e}", api.base))?;
            if method == "DELETE" {
                Ok(format!(
                    "removed sticky entry `{}` of cluster {} (was on node {})\n",
                    a.key, cluster, a.node
                ))
            } else {
                Ok(table(
                    &["KEY", "NODE", "EXPIRES IN"],
                    &[vec![a.key, a.node, format!("{}s", a.expires_in_secs)]],
                    "",
                ))
            }
        }
    }
}

/// A tiny HTTP/1.1 client for the admin API.
struct Api<'a> {
    base: String,
    host: String,
    prefix: String,
    token: Option<&'a str>,
}

impl<'a> Api<'a> {
    fn new(base: &str, token: Option<&'a str>) -> Result<Self, String> {
        let base = base.trim_end_matches('/');
        let rest = if let Some(r) = base.strip_prefix("http://") {
            r
        } else if base.starts_with("https://") {
            return Err(format!(
                "{base}: the admin API speaks plain HTTP; use http:// (put a TLS proxy in front for remote access)"
            ));
        } else if base.contains("://") {
            return Err(format!("{base}: not an http:// URL"));
        } else {
            base
        };
        let (host, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if host.is_empty() {
            return Err(format!("{base}: no host in the admin URL"));
        }
        let host = if host
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok())
        {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        Ok(Api {
            base: format!("http://{}{}", host, prefix),
            host,
            prefix: prefix.to_string(),
            token,
        })
    }

    /// Send one request; `Ok(body)` for 2xx, else a one-line explanation.
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<String, String> {
        let unreachable = |e: std::io::Error| {
            format!(
                "cannot reach the admin API at {} ({e}); is mqgate running? (use --admin URL)",
                self.base
            )
        };
        let addrs: Vec<_> = self.host.to_socket_addrs().map_err(unreachable)?.collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let mut s = stream.ok_or_else(|| unreachable(last))?;
        let io = |e: std::io::Error| format!("talking to the admin API at {}: {e}", self.base);
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io)?;
        s.set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(io)?;
        let body = body.unwrap_or("");
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: mqgate/{}\r\nAccept: application/json\r\n",
            self.prefix,
            self.host,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(t) = self.token {
            let _ = write!(head, "Authorization: Bearer {t}\r\n");
        }
        if method != "GET" {
            let _ = write!(
                head,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        head.push_str("\r\n");
        head.push_str(body);
        s.write_all(head.as_bytes()).map_err(io)?;
        let mut raw = Vec::new();
        s.take(16 * 1024 * 1024).read_to_end(&mut raw).map_err(io)?;
        let text = String::from_utf8_lossy(&raw);
        let (headers, payload) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{} did not answer with HTTP", self.base))?;
        let status: u16 = headers
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("{} did not answer with HTTP", self.base))?;
        let payload = if headers
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(payload)
        } else {
            payload.to_string()
        };
        if (200..300).contains(&status) {
            return Ok(payload);
        }
        let msg = serde_json::from_str::<serde_json::Value>(&payload)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| payload.trim().to_string());
        Err(match status {
            401 if self.token.is_none() => format!(
                "the admin API needs a token: set {TOKEN_ENV} to the content of [admin] token_file"
            ),
            401 => format!("the admin API refused the token in {TOKEN_ENV}: {msg}"),
            403 => format!("the admin API refused the change: {msg}"),
            _ => msg.lines().next().unwrap_or("").to_string(),
        })
    }
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encode a path segment.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Left-aligned columns, two spaces apart, each line prefixed by `indent`.
fn table(header: &[&str], rows: &[Vec<String>], indent: &str) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::from(indent);
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{:<w$}  ", c, w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn cluster_block(out: &mut String, c: &ClusterView) {
    let mut head = format!("cluster {}  mode {}", c.name, c.mode);
    if c.mode == "full-sync" {
        let _ = write!(head, "  leader {}", c.leader.as_deref().unwrap_or("NONE"));
    } else {
        let _ = write!(
            head,
            "  balance {}  sticky entries {}",
            c.balance, c.sticky_entries
        );
    }
    head.push_str(if c.ready {
        "  ready"
    } else {
        "  NOT READY (no node can take clients)"
    });
    out.push_str(&head);
    out.push('\n');
    let rows: Vec<Vec<String>> = c
        .nodes
        .iter()
        .map(|n| {
            let role = if n.leader {
                "leader"
            } else if c.mode == "full-sync" {
                "follower"
            } else {
                "-"
            };
            vec![
                n.name.clone(),
                n.address.clone(),
                n.health.clone(),
                n.admin_state.clone(),
                role.to_string(),
                n.active_connections.to_string(),
                n.connections_total.to_string(),
                n.connack_failures.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NODE",
            "ADDRESS",
            "HEALTH",
            "STATE",
            "ROLE",
            "ACTIVE",
            "TOTAL",
            "CONNACK FAILURES",
        ],
        &rows,
        "  ",
    ));
}

/// `mqgate status` output.
pub fn status_table(s: &StatusView) -> String {
    let mut out = format!(
        "mqgate {} (version {}): {}\n",
        s.instance,
        s.version,
        if s.ready { "ready" } else { "NOT READY" }
    );
    for c in &s.clusters {
        out.push('\n');
        cluster_block(&mut out, c);
    }
    match &s.peers {
        None => out.push_str("\npeers: none configured\n"),
        Some(p) => {
            let _ = writeln!(out, "\npeers (this gateway: {} on {})", p.name, p.bind);
            let rows: Vec<Vec<String>> = p
                .peers
                .iter()
                .map(|x| {
                    vec![
                        x.name.clone(),
                        x.address.clone(),
                        match x.up {
                            Some(true) => "up",
                            Some(false) => "down",
                            None => "unknown",
                        }
                        .to_string(),
                        x.updates_sent.to_string(),
                        x.updates_received.to_string(),
                    ]
                })
                .collect();
            out.push_str(&table(
                &["PEER", "ADDRESS", "LINK", "SENT", "RECEIVED"],
                &rows,
                "  ",
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_url_from_config() {
        assert_eq!(
            admin_from_toml("[admin]\nbind = \"0.0.0.0:9200\"\n").as_deref(),
            Some("http://127.0.0.1:9200")
        );
        assert_eq!(
            admin_from_toml("[admin]\nbind = \"[::1]:9100\"\n").as_deref(),
            Some("http://[::1]:9100")
        );
        assert_eq!(admin_from_toml("[log]\nlevel = \"info\"\n"), None);
        assert_eq!(admin_from_toml("not toml ["), None);
    }

    #[test]
    fn urls() {
        let a = Api::new("http://127.0.0.1:9100/", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.host, "127.0.0.1:9100");
        assert_eq!(a.prefix, "");
        let a = Api::new("localhost:9100/gw", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (a.host.as_str(), a.prefix.as_str()),
            ("localhost:9100", "/gw")
        );
        let a = Api::new("http://[::1]:9100", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.host, "[::1]:9100");
        let a = Api::new("http://admin.internal", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.host, "admin.internal:80");
        assert!(Api::new("https://x:1", None).is_err());
        assert!(Api::new("ftp://x:1", None).is_err());
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode("dev/1 a"), "dev%2F1%20a");
        assert_eq!(encode("plain-id_1.x"), "plain-id_1.x");
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "LONG"], &[vec!["xxxx".into(), "y".into()]], "  ");
        assert_eq!(t, "  A     LONG\n  xxxx  y\n");
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
