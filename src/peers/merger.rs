//! Updates received on a peer link, merged into the gateway's tables: those for a
//! cluster or a node this gateway does not have are dropped, counted
//! (`mqgate_peer_updates_dropped_total`) and logged (at `warn` once per link and
//! reason, then at `debug`).

use crate::host::Host;

/// Merge updates received for `cluster`, dropping (and counting) those for a cluster
/// or node this gateway does not have.
pub(super) struct Merger<'h> {
    pub host: &'h Host,
    pub peer: &'h str,
    pub unknown_cluster: prometheus::IntCounter,
    pub unknown_node: prometheus::IntCounter,
    // Dropped updates are logged at warn once per link and reason, then at debug.
    pub warned_cluster: bool,
    pub warned_node: bool,
}

impl Merger<'_> {
    pub fn merge<'a>(
        &mut self,
        cluster: &str,
        n: usize,
        updates: impl Iterator<Item = crate::sticky::UpdateRef<'a>>,
    ) {
        let peer = self.peer;
        match self.host.cluster(cluster) {
            Some(c) => {
                let nodes = c.nodes();
                let mut unknown = 0u64;
                c.sticky.merge_many(updates.filter(|u| {
                    let known = match u.node {
                        Some(n) => nodes.iter().any(|x| *x.name == *n),
                        None => true, // a deletion names no node
                    };
                    unknown += u64::from(!known);
                    known
                }));
                if unknown > 0 {
                    self.unknown_node.inc_by(unknown);
                    let msg = "peer sent sticky entries for nodes this gateway's \
                               cluster does not have; dropped";
                    if std::mem::replace(&mut self.warned_node, true) {
                        tracing::debug!(peer, cluster, dropped = unknown, "{msg}");
                    } else {
                        tracing::warn!(peer, cluster, dropped = unknown, "{msg}");
                    }
                }
            }
            None => {
                self.unknown_cluster.inc_by(n as u64);
                let msg = "peer sent sticky entries for a cluster this gateway does \
                           not have; dropped";
                if std::mem::replace(&mut self.warned_cluster, true) {
                    tracing::debug!(peer, cluster, dropped = n, "{msg}");
                } else {
                    tracing::warn!(peer, cluster, dropped = n, "{msg}");
                }
            }
        }
    }
}
