//! The TOML file as written: serde structs with `deny_unknown_fields` and the defaults
//! of SPEC section 2. Values that need checking (durations, addresses, enums) stay
//! strings here so that validation can name the key that is wrong; `validate.rs` turns
//! this into the typed [`super::Config`] the rest of the gateway uses.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub clusters: BTreeMap<String, RawCluster>,
    pub peers: Option<RawPeers>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    #[serde(default = "d_log_level")]
    pub level: String,
    #[serde(default = "d_log_format")]
    pub format: String,
    /// Access log target: "off", "stderr", "syslog" or a file path (`crate::access`).
    #[serde(default = "d_off")]
    pub access: String,
    #[serde(default = "d_log_format")]
    pub access_format: String,
    /// The local syslog socket (`access = "syslog"`); tests point it elsewhere.
    #[serde(default = "d_syslog_socket")]
    pub access_syslog_socket: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: d_log_level(),
            format: d_log_format(),
            access: d_off(),
            access_format: d_log_format(),
            access_syslog_socket: d_syslog_socket(),
        }
    }
}

fn d_syslog_socket() -> String {
    "/dev/log".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default = "d_max_connections")]
    pub max_connections: i64,
    /// Time for a client's complete CONNECT packet (SPEC's `[limits] connect_timeout`,
    /// renamed so that it is not taken for `[clusters.X] connect_timeout`); unset: 10s.
    pub connect_packet_timeout: Option<String>,
    /// The old name of `connect_packet_timeout`: still accepted, with a warning.
    pub connect_timeout: Option<String>,
    #[serde(default = "d_max_connect_size")]
    pub max_connect_size: i64,
    #[serde(default = "d_10s")]
    pub tls_handshake_timeout: String,
    #[serde(default)]
    pub per_ip_connect_rate: i64,
    #[serde(default = "d_30s")]
    pub shutdown_grace: String,
    #[serde(default)]
    pub threads: Option<i64>,
    /// `"auto"` | `"off"`; unset: off (`config::splice`).
    #[serde(default)]
    pub splice: Option<String>,
    /// Pipes at most for splice; unset: from the open-file limit.
    #[serde(default)]
    pub max_pipes: Option<i64>,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_connections: d_max_connections(),
            connect_packet_timeout: None,
            connect_timeout: None,
            max_connect_size: d_max_connect_size(),
            tls_handshake_timeout: d_10s(),
            per_ip_connect_rate: 0,
            shutdown_grace: d_30s(),
            threads: None,
            splice: None,
            max_pipes: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default = "d_admin_bind")]
    pub bind: String,
    pub token_file: Option<String>,
    /// Extension: name of an environment variable holding the token.
    pub token_env: Option<String>,
    /// Extension: host names (besides the admin address and `localhost`) that changes
    /// may arrive under (`Host` / `Origin`).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            bind: d_admin_bind(),
            token_file: None,
            token_env: None,
            allowed_hosts: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub bind: String,
    pub cluster: String,
    #[serde(default)]
    pub proxy_protocol: bool,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// This listener's own connection limit (besides `[limits] max_connections`).
    pub max_connections: Option<i64>,
    pub tls: Option<RawTls>,
    pub websocket: Option<RawWebSocket>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebSocket {
    #[serde(default = "d_ws_path")]
    pub path: String,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

fn d_ws_path() -> String {
    "/mqtt".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
    pub client_ca: Option<String>,
    #[serde(default = "d_tls_min")]
    pub min_version: String,
    /// Certificate revocation lists (PEM or DER): one path or a list of paths.
    pub crl: Option<RawPaths>,
    /// Client-certificate identity (`crate::identity`): "cn", "subject", "san_dns",
    /// "san_email".
    pub username_from: Option<String>,
    pub client_id_from: Option<String>,
    pub require_username_match: Option<String>,
    pub require_client_id_match: Option<String>,
}

/// One path, or a list of paths.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawPaths {
    One(String),
    Many(Vec<String>),
}

impl RawPaths {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            RawPaths::One(p) => vec![p.clone()],
            RawPaths::Many(v) => v.clone(),
        }
    }
}

/// `[clusters.X.tls]`: TLS from mqgate to the cluster's brokers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBrokerTls {
    pub ca: String,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub server_name: Option<String>,
    #[serde(default = "d_tls_min")]
    pub min_version: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    #[serde(default = "d_mode")]
    pub mode: String,
    #[serde(default = "d_balance")]
    pub balance: String,
    #[serde(default = "d_3s")]
    pub connect_timeout: String,
    #[serde(default = "d_retries")]
    pub retries: i64,
    #[serde(default = "d_on_node_down")]
    pub on_node_down: String,
    #[serde(default = "d_5s")]
    pub queue_timeout: String,
    #[serde(default = "d_queue_max")]
    pub queue_max: i64,
    #[serde(default = "d_no_node_reply")]
    pub no_node_reply: String,
    #[serde(default = "d_10s")]
    pub connack_timeout: String,
    #[serde(default = "d_off")]
    pub send_proxy_protocol: String,
    #[serde(default = "d_30s")]
    pub dns_refresh: String,
    #[serde(default)]
    pub nodes: Vec<RawNode>,
    #[serde(default)]
    pub health: RawHealth,
    pub sticky: Option<RawSticky>,
    pub tls: Option<RawBrokerTls>,
    pub sessions: Option<RawSessions>,
    pub shaping: Option<RawShaping>,
    /// `[[clusters.X.fanout]]` rules (dynsec only; `crate::fanout`).
    #[serde(default)]
    pub fanout: Vec<RawFanout>,
}

/// `[[clusters.X.fanout]]`: clients connected to every up node at once.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFanout {
    pub clients: Option<String>,
    pub username: Option<String>,
    #[serde(default = "d_fanout_publish")]
    pub publish: String,
    #[serde(default)]
    pub publish_all_topics: Vec<String>,
    #[serde(default = "d_fanout_max_sessions")]
    pub max_sessions: i64,
    #[serde(default = "d_fanout_max_inflight")]
    pub max_inflight: i64,
    #[serde(default = "d_fanout_max_packet_size")]
    pub max_packet_size: i64,
}

fn d_fanout_publish() -> String {
    "all".into()
}

fn d_fanout_max_sessions() -> i64 {
    1000
}

fn d_fanout_max_inflight() -> i64 {
    65535
}

fn d_fanout_max_packet_size() -> i64 {
    1024 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    #[serde(default = "d_check")]
    pub check: String,
    #[serde(default = "d_2s")]
    pub interval: String,
    #[serde(default = "d_250ms")]
    pub fast_interval: String,
    #[serde(default = "d_2s")]
    pub down_interval: String,
    #[serde(default = "d_1s")]
    pub timeout: String,
    #[serde(default = "d_rise")]
    pub rise: i64,
    #[serde(default = "d_fall")]
    pub fall: i64,
    pub username: Option<String>,
    pub password_file: Option<String>,
    /// Extension: name of an environment variable holding the password.
    pub password_env: Option<String>,
    #[serde(default = "d_hc_prefix")]
    pub client_id_prefix: String,
}

impl Default for RawHealth {
    fn default() -> Self {
        Self {
            check: d_check(),
            interval: d_2s(),
            fast_interval: d_250ms(),
            down_interval: d_2s(),
            timeout: d_1s(),
            rise: d_rise(),
            fall: d_fall(),
            username: None,
            password_file: None,
            password_env: None,
            client_id_prefix: d_hc_prefix(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    #[serde(default = "d_sticky_key")]
    pub key: String,
    #[serde(default = "d_sessions")]
    pub sessions: String,
    #[serde(default = "d_24h")]
    pub expire: String,
    #[serde(default = "d_capacity")]
    pub capacity: i64,
}

impl Default for RawSticky {
    fn default() -> Self {
        Self {
            key: d_sticky_key(),
            sessions: d_sessions(),
            expire: d_24h(),
            capacity: d_capacity(),
        }
    }
}

/// `[clusters.X.shaping]`: reconnect-storm shaping (0 = no limit).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShaping {
    #[serde(default)]
    pub connect_rate: i64,
    #[serde(default)]
    pub node_connect_rate: i64,
    #[serde(default)]
    pub close_rate: i64,
}

/// `[clusters.X.sessions]` (dynsec only): packet-aware sessions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSessions {
    #[serde(default)]
    pub restore_subscriptions: bool,
    #[serde(default)]
    pub clean_orphans: bool,
    #[serde(default = "d_max_subs")]
    pub max_subscriptions_per_client: i64,
    #[serde(default = "d_max_sub_bytes")]
    pub max_subscription_bytes_per_client: i64,
    #[serde(default = "d_max_subs_total")]
    pub max_subscriptions_total: i64,
    #[serde(default = "d_10s")]
    pub replay_timeout: String,
    #[serde(default)]
    pub single_live: bool,
    #[serde(default = "d_takeover_limit")]
    pub takeover_limit: i64,
    #[serde(default = "d_10s")]
    pub takeover_window: String,
    #[serde(default = "d_60s_holddown")]
    pub takeover_holddown: String,
}

impl Default for RawSessions {
    fn default() -> Self {
        Self {
            restore_subscriptions: false,
            clean_orphans: false,
            max_subscriptions_per_client: d_max_subs(),
            max_subscription_bytes_per_client: d_max_sub_bytes(),
            max_subscriptions_total: d_max_subs_total(),
            replay_timeout: d_10s(),
            single_live: false,
            takeover_limit: d_takeover_limit(),
            takeover_window: d_10s(),
            takeover_holddown: d_60s_holddown(),
        }
    }
}

fn d_takeover_limit() -> i64 {
    5
}

fn d_60s_holddown() -> String {
    "60s".into()
}

fn d_max_subs() -> i64 {
    100
}
fn d_max_sub_bytes() -> i64 {
    16 * 1024
}
fn d_max_subs_total() -> i64 {
    1_000_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeers {
    /// Required unless `name_env` names it.
    #[serde(default)]
    pub name: String,
    /// Extension: name of an environment variable holding this instance's name (a pod name).
    pub name_env: Option<String>,
    pub bind: String,
    pub secret_file: Option<String>,
    /// Extension: name of an environment variable holding the shared secret.
    pub secret_env: Option<String>,
    #[serde(default)]
    pub peers: Vec<RawPeer>,
    pub snapshot: Option<String>,
    pub tls: Option<RawPeerTls>,
    /// Extension: peers found through DNS (`host:port` for A/AAAA, `_service._proto.host` for SRV).
    pub discover: Option<String>,
    pub discover_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeer {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeerTls {
    pub cert: String,
    pub key: String,
    pub ca: String,
}

fn d_log_level() -> String {
    "info".into()
}
fn d_log_format() -> String {
    "text".into()
}
fn d_max_connections() -> i64 {
    50_000
}
fn d_max_connect_size() -> i64 {
    65_536
}
fn d_admin_bind() -> String {
    "127.0.0.1:9100".into()
}
fn d_tls_min() -> String {
    "1.2".into()
}
fn d_mode() -> String {
    "dynsec".into()
}
fn d_balance() -> String {
    "hash".into()
}
fn d_retries() -> i64 {
    2
}
fn d_on_node_down() -> String {
    "disconnect".into()
}
fn d_hc_prefix() -> String {
    "mqgate-hc-".into()
}
fn d_5s() -> String {
    "5s".into()
}
fn d_queue_max() -> i64 {
    10_000
}
fn d_no_node_reply() -> String {
    "close".into()
}
fn d_off() -> String {
    "off".into()
}
fn d_check() -> String {
    "mqtt".into()
}
fn d_rise() -> i64 {
    2
}
fn d_fall() -> i64 {
    3
}
fn d_sticky_key() -> String {
    "client_id".into()
}
fn d_sessions() -> String {
    "persistent".into()
}
fn d_capacity() -> i64 {
    1_000_000
}
fn d_250ms() -> String {
    "250ms".into()
}
fn d_1s() -> String {
    "1s".into()
}
fn d_2s() -> String {
    "2s".into()
}
fn d_3s() -> String {
    "3s".into()
}
fn d_10s() -> String {
    "10s".into()
}
fn d_30s() -> String {
    "30s".into()
}
fn d_24h() -> String {
    "24h".into()
}
