//! Every metric of SPEC section 8, named once, registered in one registry.
//!
//! The data path never looks labels up per byte: a connection resolves its per-node
//! handles ([`NodeMetrics`]) once when it is routed, then increments plain atomics.

mod splice;
pub use splice::SpliceMetrics;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub mod names {
    pub const BUILD_INFO: &str = "mqgate_build_info";
    pub const CONNECTIONS_ACTIVE: &str = "mqgate_connections_active";
    pub const CONNECTIONS_TOTAL: &str = "mqgate_connections_total";
    pub const CONNECTIONS_REJECTED_TOTAL: &str = "mqgate_connections_rejected_total";
    pub const CONNECT_PACKETS_TOTAL: &str = "mqgate_connect_packets_total";
    pub const BYTES_TOTAL: &str = "mqgate_bytes_total";
    pub const CONNACK_TOTAL: &str = "mqgate_connack_total";
    pub const CONNACK_LATENCY_SECONDS: &str = "mqgate_connack_latency_seconds";
    pub const NODE_UP: &str = "mqgate_node_up";
    pub const NODE_ADMIN_STATE: &str = "mqgate_node_admin_state";
    pub const NODE_LEADER: &str = "mqgate_node_leader";
    pub const LEADER_CHANGES_TOTAL: &str = "mqgate_leader_changes_total";
    pub const HEALTH_CHECKS_TOTAL: &str = "mqgate_health_checks_total";
    pub const HEALTH_CHECK_DURATION_SECONDS: &str = "mqgate_health_check_duration_seconds";
    pub const NODE_STATE_CHANGES_TOTAL: &str = "mqgate_node_state_changes_total";
    pub const STICKY_ENTRIES: &str = "mqgate_sticky_entries";
    pub const STICKY_LOOKUPS_TOTAL: &str = "mqgate_sticky_lookups_total";
    pub const SESSION_SUBSCRIPTIONS: &str = "mqgate_session_subscriptions";
    pub const SESSION_SUBSCRIPTIONS_DROPPED_TOTAL: &str =
        "mqgate_session_subscriptions_dropped_total";
    pub const SESSION_REPLAYS_TOTAL: &str = "mqgate_session_replays_total";
    pub const SESSION_ORPHANS_TOTAL: &str = "mqgate_session_orphans_total";
    pub const SESSION_TAKEOVERS_TOTAL: &str = "mqgate_session_takeovers_total";
    pub const SESSION_ID_HOLDDOWNS_TOTAL: &str = "mqgate_session_id_holddowns_total";
    pub const SESSION_PACKETS_MALFORMED_TOTAL: &str = "mqgate_session_packets_malformed_total";
    pub const RELAY_CONNECTIONS_TOTAL: &str = "mqgate_relay_connections_total";
    pub const FANOUT_SESSIONS: &str = "mqgate_fanout_sessions";
    pub const FANOUT_UPSTREAMS: &str = "mqgate_fanout_upstreams";
    pub const FANOUT_MESSAGES_TOTAL: &str = "mqgate_fanout_messages_total";
    pub const FANOUT_CLOSES_TOTAL: &str = "mqgate_fanout_closes_total";
    pub const PEER_UP: &str = "mqgate_peer_up";
    pub const PEER_UPDATES_TOTAL: &str = "mqgate_peer_updates_total";
    pub const PEER_UPDATES_DROPPED_TOTAL: &str = "mqgate_peer_updates_dropped_total";
    pub const PEER_FRAMES_REJECTED_TOTAL: &str = "mqgate_peer_frames_rejected_total";
    pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "mqgate_tls_handshake_failures_total";
    pub const LISTENER_INFO: &str = "mqgate_listener_info";
    pub const CONFIG_RELOADS_TOTAL: &str = "mqgate_config_reloads_total";
    pub const QUEUED_CONNECTIONS: &str = "mqgate_queued_connections";
    pub const QUEUE_TOTAL: &str = "mqgate_queue_total";
    pub const ACCESS_LOG_DROPPED_TOTAL: &str = "mqgate_access_log_dropped_total";
    pub const IDENTITY_REWRITES_TOTAL: &str = "mqgate_identity_rewrites_total";
    pub const ADMISSIONS_REFUSED_TOTAL: &str = "mqgate_admissions_refused_total";
    pub const PACED_CLOSE_LANES_LEFT: &str = "mqgate_paced_close_lanes_left";
    pub const DISCONNECTS_SENT_TOTAL: &str = "mqgate_disconnects_sent_total";
    pub const SPLICE_PIPES_IN_USE: &str = "mqgate_splice_pipes_in_use";
    pub const SPLICE_PIPES_OPEN: &str = "mqgate_splice_pipes_open";
    pub const SPLICE_PIPES_UNAVAILABLE_TOTAL: &str = "mqgate_splice_pipes_unavailable_total";
    pub const SPLICED_BYTES_TOTAL: &str = "mqgate_spliced_bytes_total";
    pub const CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS: &str =
        "mqgate_config_last_reload_success_timestamp_seconds";
}

/// How a held client's wait ended (`mqgate_queue_total{cluster,result}`): routed to a
/// node, answered after `queue_timeout`, refused at once because `queue_max` clients
/// were held, or the client left while held.
pub const QUEUE_RESULTS: [&str; 4] = ["routed", "timeout", "full", "closed"];

/// The reasons only WebSocket listeners count.
pub const WS_REJECTS: [Reject; 7] = [
    Reject::WsRequest,
    Reject::WsUpgrade,
    Reject::WsPath,
    Reject::WsOrigin,
    Reject::WsSubprotocol,
    Reject::WsFrame,
    Reject::WsText,
];

/// Why a client connection was refused (`reason` label of the rejected counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Invalid,
    Malformed,
    Protocol,
    Timeout,
    TooLarge,
    Busy,
    NoNode,
    Tls,
    /// Over `per_ip_connect_rate`.
    Rate,
    /// PROXY header missing, malformed, or from an untrusted source.
    Proxy,
    /// The client went away (or its socket failed) before a complete CONNECT.
    Closed,
    /// WebSocket listeners (`src/ws/`): a malformed HTTP request (400).
    WsRequest,
    /// Not a WebSocket upgrade, or not version 13 (426).
    WsUpgrade,
    /// Upgrade to another path than `websocket.path` (404).
    WsPath,
    /// `Origin` not in `websocket.allowed_origins` (403).
    WsOrigin,
    /// `Sec-WebSocket-Protocol` does not offer `mqtt` / `mqttv3.1` (400).
    WsSubprotocol,
    /// A frame RFC 6455 forbids (unmasked, reserved bits, unknown opcode, bad
    /// fragmentation) before the CONNECT: close frame 1002.
    WsFrame,
    /// A text frame before the CONNECT: close frame 1003.
    WsText,
    /// The CONNECT claims another identity than the client certificate's
    /// (`require_username_match` / `require_client_id_match`), or the certificate
    /// lacks the field the listener takes the identity from.
    Identity,
    /// Over the cluster's `connect_rate` or its nodes' `node_connect_rate`.
    ConnectRate,
    /// A client id in hold-down after an id fight (`single_live`).
    IdFight,
}

impl Reject {
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Invalid => "invalid",
            Reject::Malformed => "malformed",
            Reject::Protocol => "protocol",
            Reject::Timeout => "timeout",
            Reject::TooLarge => "too_large",
            Reject::Busy => "busy",
            Reject::NoNode => "no_node",
            Reject::Tls => "tls",
            Reject::Rate => "rate",
            Reject::Proxy => "proxy",
            Reject::Closed => "closed",
            Reject::WsRequest => "ws_request",
            Reject::WsUpgrade => "ws_upgrade",
            Reject::WsPath => "ws_path",
            Reject::WsOrigin => "ws_origin",
            Reject::WsSubprotocol => "ws_subprotocol",
            Reject::WsFrame => "ws_frame",
            Reject::WsText => "ws_text",
            Reject::Identity => "identity",
            Reject::ConnectRate => "connect_rate",
            Reject::IdFight => "id_fight",
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub shaping: ShapingMetrics,
    pub fanout: FanoutMetrics,
    pub splice: SpliceMetrics,
    pub build_info: IntGaugeVec,
    pub connections_active: IntGaugeVec,
    pub connections_total: IntCounterVec,
    pub connections_rejected: IntCounterVec,
    pub connect_packets: IntCounterVec,
    pub bytes: IntCounterVec,
    pub connack: IntCounterVec,
    pub connack_latency: HistogramVec,
    pub node_up: IntGaugeVec,
    pub node_admin_state: IntGaugeVec,
    pub node_leader: IntGaugeVec,
    pub leader_changes: IntCounterVec,
    pub health_checks: IntCounterVec,
    pub health_check_duration: HistogramVec,
    pub node_state_changes: IntCounterVec,
    pub sticky_entries: IntGaugeVec,
    pub sticky_lookups: IntCounterVec,
    pub session_subscriptions: IntGaugeVec,
    pub session_subscriptions_dropped: IntCounterVec,
    pub session_replays: IntCounterVec,
    pub session_orphans: IntCounterVec,
    pub session_takeovers: IntCounterVec,
    pub session_id_holddowns: IntCounterVec,
    pub session_packets_malformed: IntCounterVec,
    pub relay_connections: IntCounterVec,
    pub peer_up: IntGaugeVec,
    pub peer_updates: IntCounterVec,
    pub peer_updates_dropped: IntCounterVec,
    pub peer_frames_rejected: IntCounterVec,
    pub tls_handshake_failures: IntCounterVec,
    pub listener_info: IntGaugeVec,
    pub queued: IntGaugeVec,
    pub queue_results: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_success: IntGauge,
    /// Access-log lines lost because the writer fell behind or its target failed.
    pub access_log_dropped: IntCounter,
    /// CONNECTs whose username / client id mqgate rewrote from the client certificate.
    pub identity_rewrites: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter_one(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge_one(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric definition");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Metrics {
    pub fn new() -> Self {
        use names::*;
        let r = Registry::new();
        let lat = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let m = Metrics {
            shaping: ShapingMetrics::new(&r),
            fanout: FanoutMetrics::new(&r),
            splice: SpliceMetrics::new(&r),
            build_info: gauge(
                &r,
                BUILD_INFO,
                "Build information of this mqgate binary.",
                &["version"],
            ),
            connections_active: gauge(
                &r,
                CONNECTIONS_ACTIVE,
                "Client connections currently relayed.",
                &["listener", "cluster", "node"],
            ),
            connections_total: counter(
                &r,
                CONNECTIONS_TOTAL,
                "Client connections relayed to a broker node.",
                &["listener", "cluster", "node"],
            ),
            connections_rejected: counter(
                &r,
                CONNECTIONS_REJECTED_TOTAL,
                "Client connections refused, by reason.",
                &["listener", "reason"],
            ),
            connect_packets: counter(
                &r,
                CONNECT_PACKETS_TOTAL,
                "Well-formed CONNECT packets read, by protocol version.",
                &["listener", "protocol"],
            ),
            bytes: counter(
                &r,
                BYTES_TOTAL,
                "Bytes relayed, by direction.",
                &["cluster", "direction"],
            ),
            connack: counter(
                &r,
                CONNACK_TOTAL,
                "CONNACK packets seen from brokers, by return/reason code.",
                &["cluster", "node", "code"],
            ),
            connack_latency: histogram(
                &r,
                CONNACK_LATENCY_SECONDS,
                "Time from forwarding CONNECT to seeing the broker's CONNACK.",
                &["cluster", "node"],
                lat.clone(),
            ),
            node_up: gauge(
                &r,
                NODE_UP,
                "1 when the node passes health checks.",
                &["cluster", "node"],
            ),
            node_admin_state: gauge(
                &r,
                NODE_ADMIN_STATE,
                "1 for the node's current admin state.",
                &["cluster", "node", "state"],
            ),
            node_leader: gauge(
                &r,
                NODE_LEADER,
                "1 for the current leader of a full-sync cluster.",
                &["cluster", "node"],
            ),
            leader_changes: counter(
                &r,
                LEADER_CHANGES_TOTAL,
                "Leader changes of a full-sync cluster.",
                &["cluster"],
            ),
            health_checks: counter(
                &r,
                HEALTH_CHECKS_TOTAL,
                "Health check probes, by result.",
                &["cluster", "node", "result"],
            ),
            health_check_duration: histogram(
                &r,
                HEALTH_CHECK_DURATION_SECONDS,
                "Duration of health check probes.",
                &["cluster", "node"],
                lat,
            ),
            node_state_changes: counter(
                &r,
                NODE_STATE_CHANGES_TOTAL,
                "Health state changes of a node decided by its checks, by new state.",
                &["cluster", "node", "state"],
            ),
            sticky_entries: gauge(
                &r,
                STICKY_ENTRIES,
                "Entries in the sticky table.",
                &["cluster"],
            ),
            sticky_lookups: counter(
                &r,
                STICKY_LOOKUPS_TOTAL,
                "Sticky table lookups, by result.",
                &["cluster", "result"],
            ),
            session_subscriptions: gauge(
                &r,
                SESSION_SUBSCRIPTIONS,
                "Subscriptions of persistent clients stored for replay.",
                &["cluster"],
            ),
            session_subscriptions_dropped: counter(
                &r,
                SESSION_SUBSCRIPTIONS_DROPPED_TOTAL,
                "Granted subscriptions not stored because a bound was reached, by bound.",
                &["cluster", "reason"],
            ),
            session_replays: counter(
                &r,
                SESSION_REPLAYS_TOTAL,
                "Subscription replays on a node that had no session, by result.",
                &["cluster", "result"],
            ),
            session_takeovers: counter(
                &r,
                SESSION_TAKEOVERS_TOTAL,
                "Live connections closed because a newer connection with their client id went live (single_live).",
                &["cluster"],
            ),
            session_id_holddowns: counter(
                &r,
                SESSION_ID_HOLDDOWNS_TOTAL,
                "Client ids put in hold-down after too many takeovers from different addresses (single_live).",
                &["cluster"],
            ),
            session_orphans: counter(
                &r,
                SESSION_ORPHANS_TOTAL,
                "Attempts to remove the session a client left on its previous node, by result.",
                &["cluster", "result"],
            ),
            session_packets_malformed: counter(
                &r,
                SESSION_PACKETS_MALFORMED_TOTAL,
                "SUBSCRIBE/UNSUBSCRIBE/SUBACK/UNSUBACK that did not parse (passed on unlearnt), by packet.",
                &["cluster", "packet"],
            ),
            relay_connections: counter(
                &r,
                RELAY_CONNECTIONS_TOTAL,
                "Connections relayed, by relay mode (byte or packet).",
                &["cluster", "mode"],
            ),
            peer_up: gauge(
                &r,
                PEER_UP,
                "1 while the link to a peer gateway is established.",
                &["peer"],
            ),
            peer_updates: counter(
                &r,
                PEER_UPDATES_TOTAL,
                "Sticky updates exchanged with a peer.",
                &["peer", "direction"],
            ),
            peer_updates_dropped: counter(
                &r,
                PEER_UPDATES_DROPPED_TOTAL,
                "Sticky updates from a peer that were dropped: for a cluster or a node this gateway does not have.",
                &["peer", "reason"],
            ),
            peer_frames_rejected: counter(
                &r,
                PEER_FRAMES_REJECTED_TOTAL,
                "Frames from an authenticated peer that closed its link: failed integrity check (mac) or undecodable (malformed).",
                &["peer", "reason"],
            ),
            tls_handshake_failures: counter(
                &r,
                TLS_HANDSHAKE_FAILURES_TOTAL,
                "TLS handshakes that failed or timed out.",
                &["listener"],
            ),
            listener_info: gauge(
                &r,
                LISTENER_INFO,
                "1 per listener; transport: what clients speak there (tcp, tls, ws, wss).",
                &["listener", "transport"],
            ),
            queued: gauge(
                &r,
                QUEUED_CONNECTIONS,
                "Clients held right now because no node of the cluster can take them (queue_timeout).",
                &["cluster"],
            ),
            queue_results: counter(
                &r,
                QUEUE_TOTAL,
                "Clients that were held while no node could take them, by how the wait ended.",
                &["cluster", "result"],
            ),
            config_reloads: counter(
                &r,
                CONFIG_RELOADS_TOTAL,
                "Configuration reloads, by result.",
                &["result"],
            ),
            config_last_reload_success: gauge_one(
                &r,
                CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS,
                "Unix time of the last successful configuration load.",
            ),
            access_log_dropped: counter_one(
                &r,
                ACCESS_LOG_DROPPED_TOTAL,
                "Access-log lines dropped (writer behind, or its target failing).",
            ),
            identity_rewrites: counter(
                &r,
                IDENTITY_REWRITES_TOTAL,
                "CONNECT fields rewritten from the client certificate, by field.",
                &["listener", "field"],
            ),
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for result in ["ok", "error"] {
            m.config_reloads.with_label_values(&[result]);
        }
        m
    }

    /// Pre-create the reject counters of a listener so that they show as 0, and set
    /// its `mqgate_listener_info` (`transport`: [`crate::config::ListenerConfig::transport`]).
    pub fn init_listener(&self, listener: &str, transport: &str) {
        if transport == "tls" || transport == "wss" {
            self.tls_handshake_failures.with_label_values(&[listener]);
        }
        self.forget_listener(listener, transport);
        self.listener_info
            .with_label_values(&[listener, transport])
            .set(1);
        let ws: &[Reject] = if transport.starts_with("ws") {
            &WS_REJECTS
        } else {
            &[]
        };
        for &r in [
            Reject::Invalid,
            Reject::Malformed,
            Reject::Protocol,
            Reject::Timeout,
            Reject::TooLarge,
            Reject::Busy,
            Reject::NoNode,
            Reject::Tls,
        ]
        .iter()
        .chain(ws)
        {
            self.connections_rejected
                .with_label_values(&[listener, r.as_str()]);
        }
    }

    /// Drop a listener's `mqgate_listener_info` series (all but `keep`).
    pub fn forget_listener(&self, listener: &str, keep: &str) {
        for t in ["tcp", "tls", "ws", "wss"] {
            if t != keep {
                let _ = self.listener_info.remove_label_values(&[listener, t]);
            }
        }
    }

    pub fn reject(&self, listener: &str, reason: Reject) {
        self.connections_rejected
            .with_label_values(&[listener, reason.as_str()])
            .inc();
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// Handles for one node, resolved once per connection (or once per node).
    pub fn node(&self, cluster: &str, node: &str) -> NodeMetrics {
        NodeMetrics {
            to_broker: self.bytes.with_label_values(&[cluster, "to_broker"]),
            to_client: self.bytes.with_label_values(&[cluster, "to_client"]),
            connack_latency: self.connack_latency.with_label_values(&[cluster, node]),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-node handles the relay increments without label lookups.
#[derive(Clone)]
pub struct NodeMetrics {
    pub to_broker: IntCounter,
    pub to_client: IntCounter,
    pub connack_latency: Histogram,
}

/// `code` label of a CONNACK return/reason code, without allocating.
pub fn code_label(code: u8) -> &'static str {
    CODE_LABELS[code as usize]
}

#[rustfmt::skip]
static CODE_LABELS: [&str; 256] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16", "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31", "32", "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46", "47", "48", "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59", "60", "61", "62", "63", "64", "65", "66", "67", "68", "69", "70", "71", "72", "73", "74", "75", "76", "77", "78", "79", "80", "81", "82", "83", "84", "85", "86", "87", "88", "89", "90", "91", "92", "93", "94", "95", "96", "97", "98", "99", "100", "101", "102", "103", "104", "105", "106", "107", "108", "109", "110", "111", "112", "113", "114", "115", "116", "117", "118", "119", "120", "121", "122", "123", "124", "125", "126", "127", "128", "129", "130", "131", "132", "133", "134", "135", "136", "137", "138", "139", "140", "141", "142", "143", "144", "145", "146", "147", "148", "149", "150", "151", "152", "153", "154", "155", "156", "157", "158", "159", "160", "161", "162", "163", "164", "165", "166", "167", "168", "169", "170", "171", "172", "173", "174", "175", "176", "177", "178", "179", "180", "181", "182", "183", "184", "185", "186", "187", "188", "189", "190", "191", "192", "193", "194", "195", "196", "197", "198", "199", "200", "201", "202", "203", "204", "205", "206", "207", "208", "209", "210", "211", "212", "213", "214", "215", "216", "217", "218", "219", "220", "221", "222", "223", "224", "225", "226", "227", "228", "229", "230", "231", "232", "233", "234", "235", "236", "237", "238", "239", "240", "241", "242", "243", "244", "245", "246", "247", "248", "249", "250", "251", "252", "253", "254", "255"];

/// The shaping metrics, registered with the process's other metrics.
pub struct ShapingMetrics {
    pub admissions_refused: IntCounterVec,
    /// `mqgate_paced_close_lanes_left{cluster,node}`: lanes of sessions a running paced
    /// close (evacuation, maint, leader change) has still to close; 0 when none runs.
    pub paced_lanes_left: IntGaugeVec,
    /// `mqgate_disconnects_sent_total{cluster,reason}`: DISCONNECTs sent to MQTT 5
    /// clients before a close by the gateway.
    pub disconnects_sent: IntCounterVec,
}

impl ShapingMetrics {
    pub fn new(r: &Registry) -> Self {
        let admissions_refused = IntCounterVec::new(
            Opts::new(
                names::ADMISSIONS_REFUSED_TOTAL,
                "CONNECTs refused with \"server busy\" by the admission rates, by reason.",
            ),
            &["cluster", "reason"],
        )
        .expect("valid metric definition");
        r.register(Box::new(admissions_refused.clone()))
            .expect("metric registered once");
        let paced_lanes_left = IntGaugeVec::new(
            Opts::new(
                names::PACED_CLOSE_LANES_LEFT,
                "Lanes of sessions a running paced close has still to close (64 per node and listener).",
            ),
            &["cluster", "node"],
        )
        .expect("valid metric definition");
        r.register(Box::new(paced_lanes_left.clone()))
            .expect("metric registered once");
        let disconnects_sent = IntCounterVec::new(
            Opts::new(
                names::DISCONNECTS_SENT_TOTAL,
                "DISCONNECTs sent to MQTT 5 clients before a close by the gateway, by reason.",
            ),
            &["cluster", "reason"],
        )
        .expect("valid metric definition");
        r.register(Box::new(disconnects_sent.clone()))
            .expect("metric registered once");
        ShapingMetrics {
            admissions_refused,
            paced_lanes_left,
            disconnects_sent,
        }
    }

    /// A CONNECT refused by an admission rate (`reason`: `cluster_rate`, `node_rate`).
    pub fn refused(&self, cluster: &str, reason: &str) {
        self.admissions_refused
            .with_label_values(&[cluster, reason])
            .inc();
    }
}

/// Fan-out sessions (`crate::fanout`).
pub struct FanoutMetrics {
    /// `mqgate_fanout_sessions{cluster}`: fan-out sessions now.
    pub sessions: IntGaugeVec,
    /// `mqgate_fanout_upstreams{cluster,node}`: fan-out sessions' node connections now.
    pub upstreams: IntGaugeVec,
    /// `mqgate_fanout_messages_total{cluster,node,direction}`: PUBLISHes merged from a
    /// node (`to_client`) or routed to it (`to_node`).
    pub messages: IntCounterVec,
    /// `mqgate_fanout_closes_total{cluster,reason}`: how fan-out sessions ended.
    pub closes: IntCounterVec,
}

impl FanoutMetrics {
    pub fn new(r: &Registry) -> Self {
        FanoutMetrics {
            sessions: gauge(
                r,
                names::FANOUT_SESSIONS,
                "Fan-out sessions (clients connected to every node of a dynsec cluster) now.",
                &["cluster"],
            ),
            upstreams: gauge(
                r,
                names::FANOUT_UPSTREAMS,
                "Node connections of fan-out sessions now, per node.",
                &["cluster", "node"],
            ),
            messages: counter(
                r,
                names::FANOUT_MESSAGES_TOTAL,
                "PUBLISHes of fan-out sessions, merged from a node (to_client) or routed to it (to_node).",
                &["cluster", "node", "direction"],
            ),
            closes: counter(
                r,
                names::FANOUT_CLOSES_TOTAL,
                "Fan-out sessions ended, by reason.",
                &["cluster", "reason"],
            ),
        }
    }
}
