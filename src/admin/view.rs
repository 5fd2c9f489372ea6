//! The status snapshot shared by `/api/v1/status` (JSON), `/status` (HTML) and the
//! `mqgate status` command (which deserializes the same types).
//!
//! It is read from the live state only: clusters and nodes, with their own counters
//! (connections relayed, CONNACK failures), from the current
//! [`Runtime`](crate::runtime::Runtime); peer links from the board the peers service
//! keeps on the host handle ([`crate::host::PeerBoard`]), the same counters it reports
//! to Prometheus, read as typed values.

use crate::cluster::{Cluster, Health};
use crate::host::Host;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    /// This gateway's name (`[peers] name`, else the host name).
    pub instance: String,
    pub version: String,
    /// Every cluster can take a client (the same as `/readyz`).
    pub ready: bool,
    /// Unix time of the last successful configuration load.
    pub config_loaded_at: i64,
    pub config_file: String,
    pub clusters: Vec<ClusterView>,
    pub listeners: Vec<ListenerView>,
    pub peers: Option<PeersView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    pub name: String,
    /// `full-sync` | `dynsec`
    pub mode: String,
    pub balance: String,
    pub ready: bool,
    /// full-sync: the current leader (none while no node is up).
    pub leader: Option<String>,
    pub sticky_entries: usize,
    /// Persistent clients' subscriptions stored for replay (`[sessions]`).
    #[serde(default)]
    pub subscriptions: usize,
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub address: String,
    /// `up` | `down` | `unknown` (not probed yet)
    pub health: String,
    /// `ready` | `drain` | `maint`
    pub admin_state: String,
    pub leader: bool,
    pub active_connections: usize,
    pub connections_total: u64,
    /// CONNACKs with a non-zero return/reason code (or unreadable) from this node.
    pub connack_failures: u64,
    /// Lanes of sessions a running paced close (evacuation) has still to close; 0 when
    /// none runs (`crate::pacing`).
    #[serde(default)]
    pub paced_close_lanes_left: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerView {
    pub name: String,
    pub bind: String,
    pub cluster: String,
    pub tls: bool,
    /// `tcp` | `tls` | `ws` | `wss`
    #[serde(default)]
    pub transport: String,
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersView {
    pub name: String,
    pub bind: String,
    pub peers: Vec<PeerView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    pub name: String,
    pub address: String,
    /// `mqgate_peer_up` of the link; `None` while the peers service does not know it.
    pub up: Option<bool>,
    pub updates_sent: u64,
    pub updates_received: u64,
}

fn cluster_view(c: &Cluster) -> ClusterView {
    let cfg = c.config();
    let leader = c.leader();
    let nodes = c
        .nodes()
        .iter()
        .map(|n| NodeView {
            name: n.name.clone(),
            address: n.address().to_string(),
            health: n.health().as_str().to_string(),
            admin_state: n.admin_state().as_str().to_string(),
            leader: leader
                .as_ref()
                .map(|l| std::sync::Arc::ptr_eq(l, n))
                .unwrap_or(false),
            active_connections: n.active(),
            connections_total: n.relayed(),
            connack_failures: n.connack_failures(),
            paced_close_lanes_left: n.pacing.lanes_left(),
        })
        .collect();
    ClusterView {
        name: c.name.clone(),
        mode: cfg.mode.as_str().to_string(),
        balance: cfg.balance.as_str().to_string(),
        ready: c.ready(),
        leader: leader.map(|l| l.name.clone()),
        sticky_entries: c.sticky.len(),
        subscriptions: c.subs.total(),
        nodes,
    }
}

/// Take a snapshot of the gateway's state.
pub fn gather_status(host: &Host) -> StatusView {
    let rt = host.runtime();
    // Config order, so that the page and the table read like the file.
    let clusters: Vec<ClusterView> = rt
        .config
        .clusters
        .iter()
        .filter_map(|cc| rt.clusters.get(&cc.name))
        .map(|c| cluster_view(c))
        .collect();
    let listeners = rt
        .config
        .listeners
        .iter()
        .map(|l| ListenerView {
            name: l.name.clone(),
            bind: rt
                .listeners
                .get(&l.name)
                .map(|x| x.local_addr)
                .unwrap_or(l.bind)
                .to_string(),
            cluster: l.cluster.clone(),
            tls: l.tls.is_some(),
            transport: l.transport().to_string(),
            proxy_protocol: l.proxy_protocol,
        })
        .collect();
    let peers = rt.config.peers.as_ref().map(|p| PeersView {
        name: p.name.clone(),
        bind: p.bind.to_string(),
        peers: host
            .peer_board
            .list()
            .into_iter()
            .map(|(name, s)| PeerView {
                name,
                address: s.address,
                up: Some(s.up.get() > 0),
                updates_sent: s.sent.get(),
                updates_received: s.received.get(),
            })
            .collect(),
    });
    StatusView {
        instance: host.instance.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ready: clusters.iter().all(|c| c.ready) && !host.stopping(),
        config_loaded_at: host.metrics.config_last_reload_success.get(),
        config_file: rt.config.source.display().to_string(),
        clusters,
        listeners,
        peers,
    }
}

impl NodeView {
    /// Health as the cluster code sees it.
    pub fn is_up(&self) -> bool {
        self.health == Health::Up.as_str()
    }
}
