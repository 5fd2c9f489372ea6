//! The operator-facing side of the binary: `check`'s summary, `version`, and the
//! commands that talk to a running gateway's admin API (`status`, `node`, `sticky`).
//!
//! The client commands find the admin API from `--admin URL`, or from the `[admin]`
//! table of `-c FILE` (bind address and token), or `./mqgate.toml`, or else the default
//! address — the last two said on stderr ([`target`]).
//!
//! The client commands send one HTTP/1.1 request with hyper's client, on a
//! current-thread tokio runtime of their own, and print readable tables. Every failure
//! is one line on stderr and a non-zero exit: the gateway is not running, the token is
//! wrong or missing, the cluster/node/key is unknown. Below [`client`] (which prints)
//! failures are typed: [`TargetError`] for finding the API and its token,
//! [`ClientError`] for talking to it; each message is one complete line.

use crate::admin::{ClusterView, StatusView};
use crate::config::{Config, Mode};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request as HttpRequest};
use hyper_util::rt::TokioIo;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Where the admin API is when neither `--admin` nor `./mqgate.toml` says.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9100";
/// Environment variable holding the bearer token for mutating commands.
pub const TOKEN_ENV: &str = "MQGATE_ADMIN_TOKEN";
/// How long a TCP connect to one address of the admin API may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the admin API may take to answer: the request sent and the answer's head
/// read, then its body read, each within this.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (a status of hundreds of nodes is a few hundred KB).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// Why the admin API or its token could not be found from the flags and config file.
/// Each message is one line that names the file, its cause included.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{} is not valid TOML ({message}); `mqgate check -c {}` says more",
        path.display(),
        path.display()
    )]
    Toml { path: PathBuf, message: String },
    #[error("{}: [admin] bind = {bind:?} is not IP:PORT", path.display())]
    Bind { path: PathBuf, bind: String },
    #[error(
        "cannot read the token file {} ([admin] token_file): {error}; run as a user who may \
         read it, or set {TOKEN_ENV}",
        path.display()
    )]
    TokenFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the token file {} is not UTF-8 text; set {TOKEN_ENV}", path.display())]
    TokenNotText { path: PathBuf },
    #[error("[admin] token_env names {var}, which is not set here; set it or {TOKEN_ENV}")]
    TokenEnv { var: String },
}

/// Why a client command failed once it knew where the admin API is. Each message is
/// one complete line, its cause included (not a `source`), as the CLI prints it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "{base}: the admin API speaks plain HTTP; use http:// (put a TLS proxy in front for \
         remote access)"
    )]
    Https { base: String },
    #[error("{base}: not an http:// URL")]
    NotHttpUrl { base: String },
    #[error("{base}: no host in the admin URL")]
    NoHost { base: String },
    #[error("cannot make a request to {base}{target}: {error}")]
    BadRequest {
        base: String,
        target: String,
        error: hyper::http::Error,
    },
    #[error(
        "the admin token is not a valid HTTP header value (a control character?); check \
         {TOKEN_ENV} or the token file"
    )]
    BadToken,
    #[error(
        "cannot reach the admin API at {base} ({error}); is mqgate running? (name it with \
         -c FILE or --admin URL)"
    )]
    Unreachable { base: String, error: std::io::Error },
    #[error("{base} did not answer with HTTP")]
    NotHttp { base: String },
    #[error("talking to the admin API at {base}: {}", chain(error))]
    Http { base: String, error: hyper::Error },
    #[error("talking to the admin API at {base}: {}", chain(&**error))]
    Body {
        base: String,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "talking to the admin API at {base}: no answer within {:?}",
        ANSWER_TIMEOUT
    )]
    Timeout { base: String },
    #[error(
        "talking to the admin API at {base}: the answer is longer than {} MiB",
        MAX_ANSWER >> 20
    )]
    TooLong { base: String },
    #[error("unexpected answer from {base}: {error}")]
    Unexpected {
        base: String,
        error: serde_json::Error,
    },
    /// 401 without a token, and the config's token could not be read.
    #[error("the admin API needs a token: {problem}")]
    TokenUnavailable { problem: String },
    /// 401 without a token, and none configured.
    #[error(
        "the admin API needs a token: set {TOKEN_ENV} to the content of [admin] token_file, \
         or give -c FILE"
    )]
    TokenNeeded,
    /// 401 with a token.
    #[error("the admin API refused the token in {TOKEN_ENV}: {message}")]
    TokenRefused { message: String },
    /// 403.
    #[error("the admin API refused the change: {message}")]
    Refused { message: String },
    /// Any other status outside 2xx: the first line of the API's error.
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("cannot start the async runtime for the request: {error}")]
    Runtime { error: std::io::Error },
    #[error("the client commands run their own runtime: call them outside an async context")]
    NestedRuntime,
}

/// An error and its sources on one line, each said once (hyper's `Display` leaves the
/// cause to `source`).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        next = cause.source();
    }
    out
}

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
    /// `mqgate cluster rebalance CLUSTER [--rate N] [--tolerance F]`.
    Rebalance {
        cluster: String,
        rate: Option<u32>,
        tolerance: f64,
    },
    /// `mqgate node evacuate CLUSTER NODE [--rate N] [--cancel]` (`crate::admin::evacuate`).
    Evacuate {
        cluster: String,
        node: String,
        rate: Option<u32>,
        cancel: bool,
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
    match run_request(&req, &t.base, t.token.as_deref(), t.token_problem.as_ref()) {
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
#[derive(Debug)]
pub struct Target {
    /// `http://HOST:PORT`.
    pub base: String,
    pub token: Option<String>,
    /// Why the config's token could not be read (said if the API asks for one).
    pub token_problem: Option<TargetError>,
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
) -> Result<Target, TargetError> {
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
    fn read(path: &Path) -> Result<AdminSection, TargetError> {
        let text = std::fs::read_to_string(path).map_err(|error| TargetError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let v: toml::Value = toml::from_str(&text).map_err(|e| TargetError::Toml {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        let admin = v.get("admin");
        let field = |k: &str| admin.and_then(|a| a.get(k)).and_then(|x| x.as_str());
        let url = match field("bind") {
            Some(bind) => admin_url(bind).ok_or_else(|| TargetError::Bind {
                path: path.to_path_buf(),
                bind: bind.to_string(),
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
    fn token(&self) -> Result<Option<String>, TargetError> {
        if let Some(f) = &self.token_file {
            let bytes = std::fs::read(f).map_err(|error| TargetError::TokenFile {
                path: f.clone(),
                error,
            })?;
            let text = String::from_utf8(bytes)
                .map_err(|_| TargetError::TokenNotText { path: f.clone() })?;
            return Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()));
        }
        if let Some(var) = &self.token_env {
            return match std::env::var(var) {
                Ok(t) if !t.is_empty() => Ok(Some(t)),
                _ => Err(TargetError::TokenEnv { var: var.clone() }),
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

/// Everything but the printing, so that it can be tested. Runs its own current-thread
/// runtime: call it outside an async context.
pub fn run_client(req: &Request, base: &str, token: Option<&str>) -> Result<String, ClientError> {
    run_request(req, base, token, None)
}

/// [`run_client`]; `token_problem` says why there is no token, if the API wants one.
fn run_request(
    req: &Request,
    base: &str,
    token: Option<&str>,
    token_problem: Option<&TargetError>,
) -> Result<String, ClientError> {
    let mut api = Api::new(base, token)?;
    api.token_problem = token_problem;
    // `block_on` inside another runtime would panic.
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(ClientError::NestedRuntime);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| ClientError::Runtime { error })?;
    rt.block_on(api.run(req))
}

/// One request to the admin API with hyper's HTTP/1.1 client.
struct Api<'a> {
    /// `http://HOST:PORT[/PREFIX]`, for messages.
    base: String,
    /// `HOST:PORT` (port 80 if the URL has none): where to connect, and the `Host`.
    host: String,
    /// The URL's path, put before every API path.
    prefix: String,
    token: Option<&'a str>,
    token_problem: Option<&'a TargetError>,
}

impl<'a> Api<'a> {
    fn new(base: &str, token: Option<&'a str>) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/');
        let rest = if let Some(r) = base.strip_prefix("http://") {
            r
        } else if base.starts_with("https://") {
            return Err(ClientError::Https { base: base.into() });
        } else if base.contains("://") {
            return Err(ClientError::NotHttpUrl { base: base.into() });
        } else {
            base
        };
        let (host, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if host.is_empty() {
            return Err(ClientError::NoHost { base: base.into() });
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
            base: format!("http://{host}{prefix}"),
            host,
            prefix: prefix.to_string(),
            token,
            token_problem: None,
        })
    }

    /// Send `req` and make its answer readable.
    async fn run(&self, req: &Request) -> Result<String, ClientError> {
        match req {
            Request::Status => {
                let body = self.call(Method::GET, "/api/v1/status", None).await?;
                let s: StatusView = self.parse(&body)?;
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
                let out = self.call(Method::PUT, &path, Some(body)).await?;
                let a: crate::admin::NodeStateAnswer = self.parse(&out)?;
                let mut s = format!(
                    "cluster {} node {}: {} -> {}",
                    a.cluster, a.node, a.previous, a.state
                );
                match a.state.as_str() {
                    "drain" => {
                        s.push_str(" (new clients avoid it; sticky clients still land there)")
                    }
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
                let delete = action == "del";
                let method = if delete { Method::DELETE } else { Method::GET };
                let out = self.call(method, &path, None).await?;
                let a: crate::admin::StickyAnswer = self.parse(&out)?;
                if delete {
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
            Request::Rebalance {
                cluster,
                rate,
                tolerance,
            } => {
                let path = format!("/api/v1/clusters/{}/rebalance", encode(cluster));
                let mut body = serde_json::json!({ "tolerance": tolerance });
                if let Some(r) = rate {
                    body["rate"] = serde_json::json!(r);
                }
                let out = self
                    .call(Method::POST, &path, Some(body.to_string()))
                    .await?;
                let a: crate::admin::RebalanceAnswer = self.parse(&out)?;
                let mut s = format!("cluster {}: ", a.cluster);
                if a.moves.is_empty() {
                    s.push_str("balanced within the tolerance; nothing to move\n");
                } else {
                    let _ = writeln!(
                        s,
                        "moving clients at {}/s per node from {}",
                        a.rate,
                        a.moves
                            .iter()
                            .map(|m| format!("{} (~{})", m.node, m.sessions))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                Ok(s)
            }
            Request::Evacuate {
                cluster,
                node,
                rate,
                cancel,
            } => {
                let path = format!(
                    "/api/v1/clusters/{}/nodes/{}/evacuate",
                    encode(cluster),
                    encode(node)
                );
                let (method, body) = if *cancel {
                    (Method::DELETE, None)
                } else {
                    let body = match rate {
                        Some(r) => serde_json::json!({ "rate": r }),
                        None => serde_json::json!({}),
                    };
                    (Method::POST, Some(body.to_string()))
                };
                let out = self.call(method, &path, body).await?;
                let a: crate::admin::EvacuateAnswer = self.parse(&out)?;
                Ok(if *cancel {
                    format!(
                        "cluster {} node {}: evacuation {}; {} session(s) left on it\n",
                        a.cluster,
                        a.node,
                        if a.cancelled {
                            "cancelled, node ready again"
                        } else {
                            "was not running"
                        },
                        a.sessions
                    )
                } else {
                    format!(
                        "cluster {} node {}: maint, closing {} session(s) at {}/s (progress: mqgate status)\n",
                        a.cluster, a.node, a.sessions, a.rate
                    )
                })
            }
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, body: &str) -> Result<T, ClientError> {
        serde_json::from_str(body).map_err(|error| ClientError::Unexpected {
            base: self.base.clone(),
            error,
        })
    }

    /// Send one request; `Ok(body)` for 2xx, else why not.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<String, ClientError> {
        let request = self.request(method, path, body)?;
        let stream = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.http_error(e))?;
        // The connection's errors reach us through `send_request` and the body.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| self.timeout())?
            .map_err(|e| self.http_error(e))?;
        let status = answer.status().as_u16();
        let body = tokio::time::timeout(
            ANSWER_TIMEOUT,
            Limited::new(answer.into_body(), MAX_ANSWER).collect(),
        )
        .await
        .map_err(|_| self.timeout())?
        .map_err(|error| {
            if error.is::<LengthLimitError>() {
                ClientError::TooLong {
                    base: self.base.clone(),
                }
            } else {
                ClientError::Body {
                    base: self.base.clone(),
                    error,
                }
            }
        })?
        .to_bytes();
        let payload = String::from_utf8_lossy(&body).into_owned();
        if (200..300).contains(&status) {
            return Ok(payload);
        }
        Err(self.refusal(status, &payload))
    }

    /// The request: `Host` as in the URL, `Connection: close`, the bearer token if
    /// any, and a JSON body for everything but GET.
    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<HttpRequest<Full<Bytes>>, ClientError> {
        let target = format!("{}{path}", self.prefix);
        let body = body.unwrap_or_default();
        let mut b = HttpRequest::builder()
            .uri(target.as_str())
            .header(header::HOST, self.host.as_str())
            .header(header::CONNECTION, "close")
            .header(
                header::USER_AGENT,
                concat!("mqgate/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::ACCEPT, "application/json");
        if let Some(t) = self.token {
            let mut v =
                HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| ClientError::BadToken)?;
            v.set_sensitive(true);
            b = b.header(header::AUTHORIZATION, v);
        }
        if method != Method::GET {
            b = b
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, body.len());
        }
        b.method(method)
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| ClientError::BadRequest {
                base: self.base.clone(),
                target,
                error,
            })
    }

    /// A TCP connection to the first address of the host that takes one within
    /// [`CONNECT_TIMEOUT`].
    async fn connect(&self) -> Result<tokio::net::TcpStream, ClientError> {
        let unreachable = |error| ClientError::Unreachable {
            base: self.base.clone(),
            error,
        };
        let addrs = tokio::net::lookup_host(self.host.as_str())
            .await
            .map_err(unreachable)?;
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        for a in addrs {
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(a)).await {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection to {a} within {CONNECT_TIMEOUT:?}"),
                    )
                }
            }
        }
        Err(unreachable(last))
    }

    /// An answer that is not HTTP (or none at all) says so; other errors as they are.
    fn http_error(&self, error: hyper::Error) -> ClientError {
        if error.is_parse() || error.is_incomplete_message() {
            ClientError::NotHttp {
                base: self.base.clone(),
            }
        } else {
            ClientError::Http {
                base: self.base.clone(),
                error,
            }
        }
    }

    fn timeout(&self) -> ClientError {
        ClientError::Timeout {
            base: self.base.clone(),
        }
    }

    /// A status outside 2xx: what the API's JSON `error` (else its text) says, with
    /// what to do about a missing or refused token.
    fn refusal(&self, status: u16, payload: &str) -> ClientError {
        let message = serde_json::from_str::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| payload.trim().to_string());
        match status {
            401 if self.token.is_none() => match self.token_problem {
                Some(p) => ClientError::TokenUnavailable {
                    problem: p.to_string(),
                },
                None => ClientError::TokenNeeded,
            },
            401 => ClientError::TokenRefused { message },
            403 => ClientError::Refused { message },
            _ => ClientError::Api {
                status,
                message: message.lines().next().unwrap_or("").to_string(),
            },
        }
    }
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
                crate::pacing::state_label(&n.admin_state, n.paced_close_lanes_left),
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
            .map(|p| p.to_string())
            .is_some_and(|p| p.contains("missing.token") && p.contains(TOKEN_ENV)));
        // A -c FILE that is missing or broken is an error naming it.
        let e = target(None, Some(&dir.join("nope.toml")), None).map_err(|e| e.to_string());
        assert!(e.err().is_some_and(|e| e.contains("nope.toml")));
        std::fs::write(&cfg, "[admin\n").unwrap_or_else(|e| panic!("{e}"));
        let e = target(None, Some(&cfg), None).map_err(|e| e.to_string());
        assert!(e
            .err()
            .is_some_and(|e| e.contains("gw.toml") && e.contains("not valid TOML")));
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

    /// A one-shot HTTP server on loopback: answers the first request with `answer`
    /// and returns that request (head and body) as it arrived.
    fn fake_api(answer: &'static str) -> (String, std::thread::JoinHandle<String>) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let base = format!(
            "http://{}",
            l.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap_or_else(|e| panic!("{e}"));
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap_or_else(|e| panic!("{e}"));
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // The head, then as many body bytes as it announces.
            let complete = |got: &[u8]| {
                let text = String::from_utf8_lossy(got);
                text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_string)
                        })
                        .and_then(|n| n.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    body.len() >= len
                })
            };
            while !complete(&got) {
                let n = s.read(&mut buf).unwrap_or_else(|e| panic!("{e}"));
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
            String::from_utf8_lossy(&got).into_owned()
        });
        (base, server)
    }

    fn sticky_get() -> Request {
        Request::Sticky {
            action: "get".into(),
            cluster: "brokers".into(),
            key: "dev/1".into(),
        }
    }

    #[test]
    fn chunked_answers_and_the_request_sent() {
        let (base, server) = fake_api(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
             10\r\n{\"key\":\"dev/1\",\"\r\n\
             1e\r\nnode\":\"node2\",\"expires_in_secs\r\n\
             5\r\n\":42}\r\n0\r\n\r\n",
        );
        let out = run_client(&sticky_get(), &format!("{base}/gw/"), Some("s3cret"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, "KEY    NODE   EXPIRES IN\ndev/1  node2  42s\n");
        let req = server.join().unwrap_or_else(|_| panic!("server"));
        let host = base.trim_start_matches("http://");
        assert!(
            req.starts_with("GET /gw/api/v1/clusters/brokers/sticky/dev%2F1 HTTP/1.1\r\n"),
            "{req}"
        );
        let req = req.to_ascii_lowercase();
        for h in [
            format!("host: {host}\r\n"),
            "connection: close\r\n".to_string(),
            "authorization: bearer s3cret\r\n".to_string(),
            "accept: application/json\r\n".to_string(),
            format!("user-agent: mqgate/{}\r\n", env!("CARGO_PKG_VERSION")),
        ] {
            assert!(req.contains(&h), "{h:?} missing in {req}");
        }
        assert!(!req.contains("content-type"), "{req}");
    }

    #[test]
    fn changes_send_json() {
        let (base, server) = fake_api(
            "HTTP/1.1 200 OK\r\nContent-Length: 88\r\n\r\n\
             {\"cluster\":\"brokers\",\"node\":\"n1\",\"state\":\"maint\",\"previous\":\"ready\",\"sessions_closed\":3}",
        );
        let req = Request::Node {
            state: "maint".into(),
            cluster: "brokers".into(),
            node: "n1".into(),
        };
        let out = run_client(&req, &base, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            out,
            "cluster brokers node n1: ready -> maint (takes no clients; closed 3 session(s))\n"
        );
        let req = server.join().unwrap_or_else(|_| panic!("server"));
        assert!(req.starts_with("PUT /api/v1/clusters/brokers/nodes/n1/state HTTP/1.1\r\n"));
        let lower = req.to_ascii_lowercase();
        assert!(
            lower.contains("content-type: application/json\r\n"),
            "{req}"
        );
        assert!(!lower.contains("authorization"), "{req}");
        assert!(req.ends_with("\r\n\r\n{\"state\":\"maint\"}"), "{req}");
    }

    #[test]
    fn refusals_are_one_line() {
        let cases: [(&'static str, Option<&str>, &str); 5] = [
            (
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: 26\r\n\r\n{\"error\":\"Bearer needed\"}\n",
                None,
                "the admin API needs a token: set MQGATE_ADMIN_TOKEN",
            ),
            (
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: 25\r\n\r\n{\"error\":\"wrong token\"}\r\n",
                Some("x"),
                "the admin API refused the token in MQGATE_ADMIN_TOKEN: wrong token",
            ),
            (
                "HTTP/1.1 403 Forbidden\r\nContent-Length: 21\r\n\r\n{\"error\":\"bad Host\"}\n",
                Some("x"),
                "the admin API refused the change: bad Host",
            ),
            (
                "HTTP/1.1 404 Not Found\r\nContent-Length: 33\r\n\r\n{\"error\":\"no sticky entry\\nmore\"}",
                Some("x"),
                "no sticky entry",
            ),
            ("SSH-2.0-OpenSSH_9.2\r\n", Some("x"), " did not answer with HTTP"),
        ];
        for (answer, token, want) in cases {
            let (base, server) = fake_api(answer);
            let e = run_client(&sticky_get(), &base, token)
                .err()
                .map(|e| e.to_string());
            let _ = server.join();
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.contains(want) && !e.contains('\n')),
                "{e:?}: {want}"
            );
        }
        // The config's token could not be read: that is what the 401 says.
        let (base, server) = fake_api("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n");
        let problem = TargetError::TokenEnv {
            var: "GW_TOKEN".into(),
        };
        let e = run_request(&sticky_get(), &base, None, Some(&problem)).err();
        let _ = server.join();
        assert!(e.is_some_and(|e| e.to_string()
            == format!("the admin API needs a token: [admin] token_env names GW_TOKEN, which is not set here; set it or {TOKEN_ENV}")));
    }

    #[test]
    fn nobody_listening() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        drop(l);
        let e = run_client(&Request::Status, &format!("http://{addr}"), None)
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e
                .starts_with(&format!("cannot reach the admin API at http://{addr} ("))
                && e.contains("is mqgate running?")
                && !e.contains('\n')),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn not_inside_a_runtime() {
        let e = run_client(&Request::Status, "http://127.0.0.1:1", None).err();
        assert!(matches!(e, Some(ClientError::NestedRuntime)), "{e:?}");
    }
}
