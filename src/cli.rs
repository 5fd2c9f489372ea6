//! The operator-facing side of the binary: `check`'s summary, `version`, and the
//! commands that talk to a running gateway's admin API (`status`, `node`, `sticky`).
//!
//! The client commands find the admin API from `--admin URL`, or from the `[admin]`
//! table of `-c FILE` (bind address and token), or `./mqgate.toml`, or else the default
//! address — the last two said on stderr ([`target`]).
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
use std::path::{Path, PathBuf};
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
    if ms >= 3_600_000 && ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms >= 60_000 && ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Run one client command against the admin API named by `--admin URL` or by the
/// `[admin]` section of `-c FILE` (see [`target`]).
pub fn client(req: Request, admin: Option<String>, config: Option<PathBuf>) -> ExitCode {
    let t = match target(admin, config.as_deref(), std::env::var(TOKEN_ENV).ok()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("mqgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(note) = &t.note {
        eprintln!("mqgate: {note}");
    }
    match run_request(
        &req,
        &t.base,
        t.token.as_deref(),
        t.token_problem.as_deref(),
    ) {
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

/// The config file the client commands read when neither `--admin` nor `-c` is given.
pub const LOCAL_CONFIG: &str = "mqgate.toml";

/// Which admin API a client command talks to, and with which token.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    /// `http://HOST:PORT`.
    pub base: String,
    pub token: Option<String>,
    /// Why the config's token could not be read (said if the API asks for one).
    pub token_problem: Option<String>,
    /// Where the address came from, when the user did not name it (printed to stderr).
    pub note: Option<String>,
}

/// Decide the admin URL and token of a client command:
/// - the URL is `--admin`, else the `[admin] bind` of `-c FILE`, else that of
///   `./mqgate.toml` if it exists, else [`DEFAULT_ADMIN`]; the last two are said on
///   stderr ([`Target::note`]). A wildcard bind (`0.0.0.0`, `::`) is reached over
///   loopback; a config without `bind` means the default bind;
/// - the token is `env_token` (`MQGATE_ADMIN_TOKEN`) if set, else the config's
///   `[admin] token_file` (relative to the config file's directory) or `token_env`.
///
/// `-c FILE` that cannot be read or parsed is an error; a broken `./mqgate.toml` is
/// said and skipped.
pub fn target(
    admin: Option<String>,
    config: Option<&Path>,
    env_token: Option<String>,
) -> Result<Target, String> {
    let env_token = env_token.filter(|t| !t.is_empty());
    let mut note = None;
    let admin_cfg = match config {
        Some(path) => Some(AdminSection::read(path)?),
        None if admin.is_none() && Path::new(LOCAL_CONFIG).is_file() => {
            match AdminSection::read(Path::new(LOCAL_CONFIG)) {
                Ok(a) => {
                    note = Some(format!(
                        "using the admin API at {} (the [admin] bind of ./{LOCAL_CONFIG}; -c FILE or --admin URL to choose another)",
                        a.url
                    ));
                    Some(a)
                }
                Err(e) => {
                    note = Some(format!(
                        "ignoring ./{LOCAL_CONFIG} ({e}); using the admin API at {DEFAULT_ADMIN} (-c FILE or --admin URL to choose another)"
                    ));
                    None
                }
            }
        }
        None => None,
    };
    let base = match (&admin, &admin_cfg) {
        (Some(a), _) => a.clone(),
        (None, Some(c)) => c.url.clone(),
        (None, None) => {
            if note.is_none() {
                note = Some(format!(
                    "no --admin URL, -c FILE or ./{LOCAL_CONFIG}: using the admin API at {DEFAULT_ADMIN}"
                ));
            }
            DEFAULT_ADMIN.to_string()
        }
    };
    let (token, token_problem) = match (env_token, admin_cfg) {
        (Some(t), _) => (Some(t), None),
        (None, Some(c)) => match c.token() {
            Ok(t) => (t, None),
            Err(e) => (None, Some(e)),
        },
        (None, None) => (None, None),
    };
    Ok(Target {
        base,
        token,
        token_problem,
        note,
    })
}

/// What the client commands need from a config file's `[admin]` table.
struct AdminSection {
    url: String,
    /// `token_file`, resolved against the config file's directory.
    token_file: Option<PathBuf>,
    token_env: Option<String>,
}

impl AdminSection {
    fn read(path: &Path) -> Result<AdminSection, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let v: toml::Value = toml::from_str(&text).map_err(|e| {
            format!(
                "{} is not valid TOML ({}); `mqgate check -c {}` says more",
                path.display(),
                e.message(),
                path.display()
            )
        })?;
        let admin = v.get("admin");
        let field = |k: &str| admin.and_then(|a| a.get(k)).and_then(|x| x.as_str());
        let url = match field("bind") {
            Some(bind) => admin_url(bind).ok_or_else(|| {
                format!("{}: [admin] bind = {bind:?} is not IP:PORT", path.display())
            })?,
            None => DEFAULT_ADMIN.to_string(),
        };
        let dir = path.parent().unwrap_or(Path::new(""));
        Ok(AdminSection {
            url,
            token_file: field("token_file").map(|f| dir.join(f)),
            token_env: field("token_env").map(str::to_string),
        })
    }

    /// The token the config gives the gateway, if any.
    fn token(&self) -> Result<Option<String>, String> {
        if let Some(f) = &self.token_file {
            let bytes = std::fs::read(f).map_err(|e| {
                format!(
                    "cannot read the token file {} ([admin] token_file): {e}; run as a user who may read it, or set {TOKEN_ENV}",
                    f.display()
                )
            })?;
            let text = String::from_utf8(bytes).map_err(|_| {
                format!(
                    "the token file {} is not UTF-8 text; set {TOKEN_ENV}",
                    f.display()
                )
            })?;
            return Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()));
        }
        if let Some(var) = &self.token_env {
            return match std::env::var(var) {
                Ok(t) if !t.is_empty() => Ok(Some(t)),
                _ => Err(format!(
                    "[admin] token_env names {var}, which is not set here; set it or {TOKEN_ENV}"
                )),
            };
        }
        Ok(None)
    }
}

/// `http://IP:PORT` for an `[admin] bind`; a wildcard bind is reached over loopback.
fn admin_url(bind: &str) -> Option<String> {
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
    run_request(req, base, token, None)
}

/// [`run_client`]; `token_problem` says why there is no token, if the API wants one.
fn run_request(
    req: &Request,
    base: &str,
    token: Option<&str>,
    token_problem: Option<&str>,
) -> Result<String, String> {
    let mut api = Api::new(base, token)?;
    api.token_problem = token_problem;
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
    token_problem: Option<&'a str>,
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
            token_problem: None,
        })
    }

    /// Send one request; `Ok(body)` for 2xx, else a one-line explanation.
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<String, String> {
        let unreachable = |e: std::io::Error| {
            format!(
                "cannot reach the admin API at {} ({e}); is mqgate running? (name it with -c FILE or --admin URL)",
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
            401 if self.token.is_none() => match self.token_problem {
                Some(p) => format!("the admin API needs a token: {p}"),
                None => format!(
                    "the admin API needs a token: set {TOKEN_ENV} to the content of [admin] token_file, or give -c FILE"
                ),
            },
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
            admin_url("0.0.0.0:9200").as_deref(),
            Some("http://127.0.0.1:9200")
        );
        assert_eq!(
            admin_url("[::1]:9100").as_deref(),
            Some("http://[::1]:9100")
        );
        assert_eq!(admin_url("[::]:9100").as_deref(), Some("http://[::1]:9100"));
        assert_eq!(admin_url("localhost"), None);
    }

    #[test]
    fn target_from_flags_config_and_fallback() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path();
        let cfg = dir.join("gw.toml");
        std::fs::write(dir.join("admin.token"), "s3cret\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            &cfg,
            "[admin]\nbind = \"0.0.0.0:9321\"\ntoken_file = \"admin.token\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // -c FILE: its bind, its token file (relative to the file's directory), no note.
        let t = target(None, Some(&cfg), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.base, "http://127.0.0.1:9321");
        assert_eq!(t.token.as_deref(), Some("s3cret"));
        assert_eq!(t.note, None);
        // MQGATE_ADMIN_TOKEN and --admin win.
        let t = target(
            Some("http://10.0.0.1:9100".into()),
            Some(&cfg),
            Some("env".into()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (t.base.as_str(), t.token.as_deref()),
            ("http://10.0.0.1:9100", Some("env"))
        );
        // An unreadable token file is not an error until the API asks for a token.
        std::fs::write(&cfg, "[admin]\ntoken_file = \"missing.token\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let t = target(None, Some(&cfg), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.base, DEFAULT_ADMIN, "no bind: the default bind");
        assert_eq!(t.token, None);
        assert!(t
            .token_problem
            .is_some_and(|p| p.contains("missing.token") && p.contains(TOKEN_ENV)));
        // A -c FILE that is missing or broken is an error naming it.
        let e = target(None, Some(&dir.join("nope.toml")), None).err();
        assert!(e.is_some_and(|e| e.contains("nope.toml")));
        std::fs::write(&cfg, "[admin\n").unwrap_or_else(|e| panic!("{e}"));
        let e = target(None, Some(&cfg), None).err();
        assert!(e.is_some_and(|e| e.contains("gw.toml") && e.contains("not valid TOML")));
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
