//! Configuration: the TOML file of SPEC section 2, parsed ([`raw`]), validated into
//! typed values ([`Config`]) so that nothing downstream re-validates, and every error
//! located by file, line and key ([`ConfigError`]). `mqgate check`, start-up and every
//! reload go through [`load`] / [`parse`], so they accept and refuse exactly the same files.

mod raw;
mod validate;

pub use raw::RawConfig;
pub use validate::validate;

use ipnet::IpNet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A validated configuration. Cheap to clone pieces out of; held in an `Arc`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub source: PathBuf,
    pub log: LogConfig,
    pub limits: Limits,
    pub admin: AdminConfig,
    pub listeners: Vec<ListenerConfig>,
    pub clusters: Vec<ClusterConfig>,
    pub peers: Option<PeersConfig>,
}

impl Config {
    pub fn cluster(&self, name: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_connections: usize,
    pub connect_timeout: Duration,
    pub max_connect_size: usize,
    pub tls_handshake_timeout: Duration,
    /// New connections per second from one source IP; 0 = unlimited.
    pub per_ip_connect_rate: u32,
    pub shutdown_grace: Duration,
    /// Connection threads (`crate::workers`); `None`: one per CPU less one per broker
    /// node on this host, at least one (`crate::workers::thread_count`); 0: none,
    /// connections run on the gateway's own runtime. Read at start-up only.
    pub threads: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub cluster: String,
    pub proxy_protocol: bool,
    pub trusted_proxies: Vec<IpNet>,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub min_version: TlsVersion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    FullSync,
    Dynsec,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::FullSync => "full-sync",
            Mode::Dynsec => "dynsec",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    Hash,
    LeastConn,
    RoundRobin,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::Hash => "hash",
            Balance::LeastConn => "least-conn",
            Balance::RoundRobin => "round-robin",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnNodeDown {
    Disconnect,
    Keep,
}

impl OnNodeDown {
    pub fn as_str(self) -> &'static str {
        match self {
            OnNodeDown::Disconnect => "disconnect",
            OnNodeDown::Keep => "keep",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocolOut {
    Off,
    V1,
    V2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub name: String,
    pub mode: Mode,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub on_node_down: OnNodeDown,
    pub send_proxy_protocol: ProxyProtocolOut,
    pub dns_refresh: Duration,
    pub nodes: Vec<NodeConfig>,
    pub health: HealthConfig,
    pub sticky: StickyConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeConfig {
    pub name: String,
    pub address: NodeAddress,
}

/// `host:port` where host is an IP literal or a DNS name (re-resolved every `dns_refresh`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddress {
    pub host: String,
    pub port: u16,
}

impl NodeAddress {
    /// The socket address when the host is an IP literal.
    pub fn literal(&self) -> Option<SocketAddr> {
        self.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') && !self.host.starts_with('[') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    Tcp,
    Mqtt,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Mqtt => "mqtt",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub check: CheckKind,
    pub interval: Duration,
    pub fast_interval: Duration,
    pub down_interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickyKey {
    ClientId,
    Username,
}

impl StickyKey {
    pub fn as_str(self) -> &'static str {
        match self {
            StickyKey::ClientId => "client_id",
            StickyKey::Username => "username",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickySessions {
    Persistent,
    All,
}

impl StickySessions {
    pub fn as_str(self) -> &'static str {
        match self {
            StickySessions::Persistent => "persistent",
            StickySessions::All => "all",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StickyConfig {
    pub key: StickyKey,
    pub sessions: StickySessions,
    pub expire: Duration,
    pub capacity: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeersConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub secret: Secret,
    pub peers: Vec<PeerConfig>,
    pub snapshot: Option<PathBuf>,
    pub tls: Option<PeerTlsConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A secret value (token, password, shared secret). Binary-safe; `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(Arc::from(bytes.into().into_boxed_slice()))
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One problem in a config file, located by line and dotted key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

/// Every problem found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some(line) = e.line {
                write!(f, ":{line}")?;
            }
            if e.key.is_empty() {
                write!(f, ": {}", e.message)?;
            } else {
                write!(f, ": key `{}`: {}", e.key, e.message)?;
            }
            if let Some(h) = &e.hint {
                write!(f, " (hint: {h})")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Read and validate a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: path.to_path_buf(),
        errors: vec![ConfigError {
            line: None,
            key: String::new(),
            message: format!("cannot read file: {e}"),
            hint: None,
        }],
    })?;
    parse(path, &text)
}

/// Parse and validate config text; `path` names the file in errors and anchors
/// relative paths inside it.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        file: path.to_path_buf(),
        errors,
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => return Err(fail(serde_errors(text, e))),
    };
    validate(path, &raw).map_err(|mut errs| {
        for e in &mut errs {
            if e.line.is_none() {
                e.line = line_of_key(text, &e.key);
            }
        }
        fail(errs)
    })
}

/// Serde stops at the first problem. To report every bad key at once, blank the
/// offending `key = value` line and parse again, a bounded number of times; stop at
/// the first error that is not on such a line (syntax errors, multi-line values).
fn serde_errors(text: &str, first: toml::de::Error) -> Vec<ConfigError> {
    let mut errors = vec![serde_error(text, &first)];
    let mut work = text.to_string();
    let mut err = first;
    for _ in 0..32 {
        let Some(line_no) = err.span().map(|s| line_at(&work, s.start)) else {
            break;
        };
        let lines: Vec<&str> = work.lines().collect();
        let Some(line) = lines.get(line_no - 1) else {
            break;
        };
        let single = line.contains('=')
            && !line.trim_start().starts_with('[')
            && toml::from_str::<toml::Table>(line).is_ok();
        if !single {
            break;
        }
        let mut next: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        next[line_no - 1] = String::new();
        work = next.join("\n");
        match toml::from_str::<RawConfig>(&work) {
            Ok(_) => break,
            Err(e) => {
                let ce = serde_error(&work, &e);
                if errors.contains(&ce) {
                    break;
                }
                errors.push(ce);
                err = e;
            }
        }
    }
    errors
}

fn serde_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| line_at(text, s.start));
    let key = line
        .and_then(|l| text.lines().nth(l - 1))
        .map(|l| l.split('=').next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    let message = e.message().to_string();
    let hint = if message.starts_with("unknown field") {
        Some("check the spelling against the configuration reference".to_string())
    } else {
        None
    };
    ConfigError {
        line,
        key,
        message,
        hint,
    }
}

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Find the line of a dotted key path such as `clusters.brokers.nodes[1].address`.
/// Falls back to the deepest part of the path that exists.
pub fn line_of_key(text: &str, key: &str) -> Option<usize> {
    use toml_edit::TableLike;
    let doc = toml_edit::ImDocument::parse(text.to_string()).ok()?;
    let mut table: Option<&dyn TableLike> = Some(doc.as_table());
    let mut span = None;
    for part in key.split('.') {
        let Some(t) = table else { break };
        let (name, index) = match part.find('[') {
            Some(p) => (
                &part[..p],
                part[p + 1..].trim_end_matches(']').parse::<usize>().ok(),
            ),
            None => (part, None),
        };
        let Some((k, v)) = t.get_key_value(name) else {
            break;
        };
        span = k.span().or(span);
        table = v.as_table_like();
        if let Some(i) = index {
            table = None;
            if let Some(aot) = v.as_array_of_tables() {
                if let Some(el) = aot.get(i) {
                    span = el.span().or(span);
                    table = Some(el as &dyn TableLike);
                }
            } else if let Some(arr) = v.as_array() {
                if let Some(el) = arr.get(i) {
                    span = el.span().or(span);
                    table = el.as_inline_table().map(|x| x as &dyn TableLike);
                }
            }
        }
    }
    span.map(|s| line_at(text, s.start))
}

#[cfg(test)]
mod tests;
