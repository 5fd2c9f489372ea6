//! The status snapshot shared by `/api/v1/status` (JSON), `/status` (HTML) and the
//! `mqgate status` command (which deserializes the same types).
//!
//! It is read from the live state only: clusters and nodes, with their own counters
//! (connections relayed, CONNACK failures), from the current
//! [`Runtime`](crate::runtime::Runtime); peer link state from the metrics registry,
//! which keeps this module independent of the peers implementation: whatever sets
//! `mqgate_peer_up` shows up here.

use crate::cluster::{Cluster, Health};
use crate::host::Host;
use crate::metrics::names;
use prometheus::proto::MetricFamily;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

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
    /// From `mqgate_peer_up`; `None` until the peer link has reported anything.
    pub up: Option<bool>,
    pub updates_sent: u64,
    pub updates_received: u64,
}

/// Samples of the registry this view needs (peer links report there), keyed by
/// label values.
#[derive(Default)]
struct Counters {
    peer_up: HashMap<String, bool>,
    /// (peer, direction) → updates.
    peer_updates: HashMap<(String, String), u64>,
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    m.get_label()
        .iter()
        .find(|l| l.get_name() == name)
        .map(|l| l.get_value())
        .unwrap_or("")
}

fn read_counters(families: &[MetricFamily]) -> Counters {
    let mut c = Counters::default();
    for f in families {
        match f.get_name() {
            names::PEER_UP => {
                for m in f.get_metric() {
                    c.peer_up
                        .insert(label(m, "peer").into(), m.get_gauge().get_value() > 0.0);
                }
            }
            names::PEER_UPDATES_TOTAL => {
                for m in f.get_metric() {
                    c.peer_updates.insert(
                        (label(m, "peer").into(), label(m, "direction").into()),
                        m.get_counter().get_value() as u64,
                    );
                }
            }
            _ => {}
        }
    }
    c
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
    let counters = read_counters(&host.metrics.registry.gather());
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
            proxy_protocol: l.proxy_protocol,
        })
        .collect();
    let peers = rt.config.peers.as_ref().map(|p| PeersView {
        name: p.name.clone(),
        bind: p.bind.to_string(),
        peers: p
            .peers
            .iter()
            .map(|peer| PeerView {
                name: peer.name.clone(),
                address: peer.address.clone(),
                up: counters.peer_up.get(&peer.name).copied(),
                updates_sent: updates(&counters, &peer.name, "sent"),
                updates_received: updates(&counters, &peer.name, "received"),
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

fn updates(c: &Counters, peer: &str, dir: &str) -> u64 {
    c.peer_updates
        .get(&(peer.to_string(), dir.to_string()))
        .copied()
        .unwrap_or(0)
}

impl NodeView {
    /// Health as the cluster code sees it.
    pub fn is_up(&self) -> bool {
        self.health == Health::Up.as_str()
    }
}
