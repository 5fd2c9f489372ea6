//! Configuration: the TOML file of SPEC section 2, parsed (`raw`), validated into
//! typed values ([`Config`]) so that nothing downstream re-validates, and every error
//! located by file, line and key ([`ConfigError`]). `mqgate check`, start-up and every
//! reload go through [`load`] / [`parse`], so they accept and refuse exactly the same files.

mod address;
mod checker;
mod errors;
mod fanout;

pub use errors::line_of_key;
use errors::serde_errors;
mod ops;
mod peers_discovery;
mod raw;
mod sessions;
mod shaping;
mod single_live;
mod splice;
mod tls_checks;
mod validate;
mod websocket;

pub use address::host_name;
pub use checker::bounds;
pub use checker::parse_duration;
pub use ops::{AccessTarget, CertField, IdentityPolicy};
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
    /// Accepted but worth telling the operator (an old key name): printed by
    /// `mqgate check`, logged at start-up and on reload ([`Config::warning_lines`]).
    pub warnings: Vec<ConfigError>,
}

impl Config {
    pub fn cluster(&self, name: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// Each warning as one line: `FILE:LINE: warning: key `K`: MESSAGE (hint: HINT)`.
    pub fn warning_lines(&self) -> Vec<String> {
        self.warnings
            .iter()
            .map(|w| one_line(&self.source, w, "warning: "))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
    /// Where the access log goes (`crate::access`); off by default.
    pub access: AccessTarget,
    pub access_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_connections: usize,
    /// `[limits] connect_packet_timeout` (old name `connect_timeout`): the time a client
    /// has to deliver its complete CONNECT. Not the broker connect timeout
    /// ([`ClusterConfig::connect_timeout`]).
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
    /// splice(2) for large flows between plain-TCP sockets (`crate::relay::splice`).
    pub splice: Splice,
    /// Pipes open at most for splice (two descriptors each); `None`: what the
    /// open-file limit leaves beside `max_connections` (`crate::fdlimit::pipe_budget`).
    pub max_pipes: Option<usize>,
}

/// `[limits] splice`: whether large flows of the byte relay between a plain-TCP client
/// and a plain-TCP broker move with splice(2) (`auto`, HAProxy's `option splice-auto`)
/// or are always copied (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Splice {
    Auto,
    Off,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    pub token: Option<Secret>,
    /// Extra host names changes may name in `Host` / `Origin`, lower-case, no port
    /// (the admin address and `localhost` are always allowed).
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub cluster: String,
    pub proxy_protocol: bool,
    pub trusted_proxies: Vec<IpNet>,
    /// This listener's own connection limit, within `limits.max_connections`.
    pub max_connections: Option<usize>,
    pub tls: Option<TlsConfig>,
    /// MQTT over WebSocket on this listener (`[listeners.websocket]`).
    pub websocket: Option<WebSocketConfig>,
}

/// `[listeners.websocket]`, checked by `websocket::typed`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebSocketConfig {
    /// The request path upgrades are accepted on (others: 404).
    pub path: String,
    /// Lower-case `scheme://host[:port]` origins; empty: any origin, and none.
    pub allowed_origins: Vec<String>,
}

impl ListenerConfig {
    /// What clients speak on this listener: `tcp`, `tls`, `ws` or `wss` (the
    /// `transport` label of `mqgate_listener_info`, the status page).
    pub fn transport(&self) -> &'static str {
        match (self.tls.is_some(), self.websocket.is_some()) {
            (false, false) => "tcp",
            (true, false) => "tls",
            (false, true) => "ws",
            (true, true) => "wss",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub min_version: TlsVersion,
    /// Certificate revocation lists for client certificates (PEM or DER files).
    pub crl: Vec<PathBuf>,
    /// Username / client id from the client certificate (rewritten or checked).
    pub identity: IdentityPolicy,
}

/// `[clusters.X.tls]`: mqgate connects to the cluster's brokers over TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerTlsConfig {
    /// CA certificates the brokers' certificates must chain to.
    pub ca: PathBuf,
    /// mqgate's client certificate and key (both or neither).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the brokers' certificates must be valid for; default: each node's host.
    pub server_name: Option<String>,
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

/// What a client gets when no node could take it within `queue_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoNodeReply {
    /// A plain TCP close at every protocol level (what HAProxy does): mosquitto_sub,
    /// MQTT.js and paho reconnect after a close but end on a refusing CONNACK.
    Close,
    /// MQTT 5 clients get CONNACK 0x88 "server unavailable" with a reason string;
    /// MQTT 3.x clients a plain close.
    ConnackV5,
    /// CONNACK 0x03 (3.x) / 0x88 with a reason string (5.0), the pre-0.2 behaviour.
    Connack,
}

impl NoNodeReply {
    pub fn as_str(self) -> &'static str {
        match self {
            NoNodeReply::Close => "close",
            NoNodeReply::ConnackV5 => "connack-v5",
            NoNodeReply::Connack => "connack",
        }
    }

    /// Does a client of this protocol level get a CONNACK (else a plain close)?
    pub fn connack_for(self, v5: bool) -> bool {
        match self {
            NoNodeReply::Close => false,
            NoNodeReply::ConnackV5 => v5,
            NoNodeReply::Connack => true,
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
    /// How long a client is held while no node can take it (full-sync: between
    /// leaders; dynsec: every node down) before it gets `no_node_reply`. Zero: at once.
    pub queue_timeout: Duration,
    /// Clients held at once in this cluster; more get `no_node_reply` at once.
    pub queue_max: usize,
    pub no_node_reply: NoNodeReply,
    /// How long the broker has to answer a forwarded CONNECT; zero: no deadline.
    pub connack_timeout: Duration,
    pub send_proxy_protocol: ProxyProtocolOut,
    pub dns_refresh: Duration,
    pub nodes: Vec<NodeConfig>,
    pub health: HealthConfig,
    pub sticky: StickyConfig,
    /// TLS to the brokers (`[clusters.X.tls]`); `None`: plain TCP.
    pub tls: Option<BrokerTlsConfig>,
    pub sessions: SessionsConfig,
    pub shaping: ShapingConfig,
    /// `[[clusters.X.fanout]]` rules, in file order (the first match wins).
    pub fanout: Vec<FanoutRule>,
}

pub use fanout::{glob_match, FanoutMatch, FanoutPublish, FanoutRule};

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
    /// MQTT 3.1.1 CONNECT, CONNACK 0 expected.
    Mqtt,
    /// MQTT 5.0 CONNECT, CONNACK reason code 0 expected.
    Mqtt5,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Mqtt => "mqtt",
            CheckKind::Mqtt5 => "mqtt5",
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
    /// The health check's client id is this prefix and 8 random hex digits.
    pub client_id_prefix: String,
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

/// `[clusters.X.shaping]`: CONNECT admission rates (`crate::shaping`); 0 = no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShapingConfig {
    /// CONNECTs admitted per second in the cluster (bursts of one second's worth).
    pub connect_rate: u32,
    /// CONNECTs admitted per second per node.
    pub node_connect_rate: u32,
    /// Sessions closed per second per node when it goes to maint or loses leadership
    /// while its broker still serves (`crate::cluster::pacing`); 0 = all at once.
    pub close_rate: u32,
}

/// `[clusters.X.sessions]`: packet-aware sessions of a dynsec cluster
/// (`crate::relay::packets`). All off by default.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionsConfig {
    /// Learn persistent clients' subscriptions and replay them on a node that
    /// answers session-present 0.
    pub restore_subscriptions: bool,
    /// Remove the session a client left on a node it no longer uses.
    pub clean_orphans: bool,
    /// Subscriptions stored per client; more are forwarded but not stored.
    pub max_per_client: usize,
    /// Bytes of topic filters and v5 properties stored per client.
    pub max_bytes_per_client: usize,
    /// Subscriptions stored in the cluster, all clients together.
    pub max_total: usize,
    /// How long the new node has to answer the replayed SUBSCRIBEs.
    pub replay_timeout: Duration,
    /// One live session per client id across the gateways (`crate::live`).
    pub single_live: SingleLiveConfig,
}

/// `single_live` and its damping (`[clusters.X.sessions]`, checked in `single_live.rs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SingleLiveConfig {
    pub enabled: bool,
    /// Takeovers from different source addresses tolerated within `window`.
    pub limit: u32,
    pub window: Duration,
    /// How long an id over `limit` is refused.
    pub holddown: Duration,
}

impl Default for SingleLiveConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            limit: 5,
            window: Duration::from_secs(10),
            holddown: Duration::from_secs(60),
        }
    }
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            restore_subscriptions: false,
            clean_orphans: false,
            max_per_client: 100,
            max_bytes_per_client: 16 * 1024,
            max_total: 1_000_000,
            replay_timeout: Duration::from_secs(10),
            single_live: SingleLiveConfig::default(),
        }
    }
}

impl SessionsConfig {
    /// Does this cluster send persistent clients through the packet-aware relay?
    pub fn packet_aware(&self) -> bool {
        self.restore_subscriptions || self.clean_orphans
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeersConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub secret: Secret,
    pub peers: Vec<PeerConfig>,
    pub snapshot: Option<PathBuf>,
    pub tls: Option<PeerTlsConfig>,
    /// Peers found through DNS, besides (or instead of) `peers`.
    pub discover: Option<PeerDiscovery>,
}

/// `[peers] discover`: every address the name resolves to, except this instance's own,
/// is a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDiscovery {
    /// The name looked up (without the port).
    pub name: String,
    /// `Some(port)`: A/AAAA records, this port. `None`: SRV records (their ports).
    pub port: Option<u16>,
    /// Looked up again this often (and when a discovered link fails).
    pub interval: Duration,
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

/// `FILE:LINE: {kind}key `K`: MESSAGE (hint: HINT)`.
fn one_line(file: &Path, e: &ConfigError, kind: &str) -> String {
    let mut s = file.display().to_string();
    if let Some(line) = e.line {
        s.push_str(&format!(":{line}"));
    }
    if e.key.is_empty() {
        s.push_str(&format!(": {kind}{}", e.message));
    } else {
        s.push_str(&format!(": {kind}key `{}`: {}", e.key, e.message));
    }
    if let Some(h) = &e.hint {
        s.push_str(&format!(" (hint: {h})"));
    }
    s
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            f.write_str(&one_line(&self.file, e, ""))?;
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
    let locate = |errs: &mut Vec<ConfigError>| {
        for e in errs {
            if e.line.is_none() {
                e.line = line_of_key(text, &e.key);
            }
        }
    };
    match validate(path, &raw) {
        Ok(mut cfg) => {
            locate(&mut cfg.warnings);
            Ok(cfg)
        }
        Err(mut errs) => {
            locate(&mut errs);
            Err(fail(errs))
        }
    }
}

#[cfg(test)]
mod tests;
