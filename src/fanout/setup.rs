//! Setting a fan-out session up: connect to every usable node, answer the client's
//! CONNECT once they answered (docs/fanout.md "CONNECT"), and take each node's CONNACK
//! — at set-up and whenever a node is connected again later, when the session's
//! subscriptions are replayed there before anything else is sent to it.

use super::batch::Batch;
use super::link::{NodeIo, Up};
use super::session::{End, LinkState, Out, Session};
use crate::hold::{Gone, Hold};
use std::time::Duration;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio::time::Instant;

impl Session {
    /// `queue_timeout`: while no node of the cluster is usable, hold the client as
    /// any client is held (`crate::hold`: counted in `queue_max`, woken by every
    /// change of the cluster); then connect as usual. Past the deadline, or with
    /// `queue_max` clients held, the refusal of a client no node takes.
    pub(super) async fn hold<S: AsyncRead + Unpin>(&mut self, client: &mut S) -> Result<(), End> {
        let lst = self.start.lst.clone();
        let cfg = self.start.cfg.clone();
        let mut queue = Hold::new(&lst, &cfg, self.start.rule.max_packet_size);
        let mut rest = std::mem::take(&mut self.start.rest);
        let ended = loop {
            // Created before the nodes are looked at: no change in between is missed.
            let changed = lst.cluster.changed();
            tokio::pin!(changed);
            if lst.cluster.nodes().iter().any(|n| Session::usable(n)) {
                if queue.is_held() {
                    tracing::debug!(waited = ?queue.began.elapsed(), "held fan-out client: a node is usable");
                    queue.end("routed");
                }
                break Ok(());
            }
            if queue.expired() {
                queue.end("timeout");
                let why = if cfg.queue_timeout.is_zero() {
                    "no node is up".to_string()
                } else {
                    format!(
                        "no node is up after holding the client for {:?}",
                        cfg.queue_timeout
                    )
                };
                break Err(self.refuse_no_node(&why));
            }
            if let Err(why) = queue.enter("no node is up") {
                break Err(self.refuse_no_node(&why));
            }
            let before = rest.len();
            let waited = queue.wait(changed, false, client, &mut rest).await;
            self.from_client += (rest.len() - before) as u64;
            match waited {
                Ok(()) => {}
                Err(Gone::ListenerClosed) => {
                    tracing::debug!("listener closed while the fan-out client was held");
                    break Err(End::Shutdown);
                }
                Err(Gone::Client(why)) => {
                    tracing::debug!(%why, "fan-out client gone while held");
                    self.client_failed = true;
                    break Err(End::ClientClosed);
                }
            }
        };
        self.start.rest = rest;
        ended
    }

    /// No node took the client: `no_node_reply` as for any client (counted in
    /// `mqgate_connections_rejected_total{reason="no_node"}`).
    fn refuse_no_node(&mut self, why: &str) -> End {
        let v5 = self.start.v5;
        tracing::debug!(reason = "no_node", "refused: {why}");
        let lname = self.start.lst.config.name.clone();
        self.start
            .data
            .metrics
            .reject(&lname, crate::metrics::Reject::NoNode);
        if self.start.cfg.no_node_reply.connack_for(v5) {
            self.connack_sent = Some(if v5 { 0x88 } else { 0x03 });
            self.queue_client(crate::mqtt::unavailable_reply(
                v5,
                &format!("mqgate: {why}"),
            ));
        }
        End::NoNode
    }
    /// Connect to every usable node and answer the client's CONNECT.
    pub(super) async fn connect_all(&mut self, up_rx: &mut mpsc::Receiver<Up>) -> Result<(), End> {
        self.reconcile();
        let cfg = self.start.cfg.clone();
        let wait = cfg.connect_timeout
            + if cfg.connack_timeout.is_zero() {
                Duration::from_secs(10)
            } else {
                cfg.connack_timeout
            };
        let deadline = Instant::now() + wait;
        let mut accepted: Option<Vec<u8>> = None;
        let mut present = true;
        let mut refusal: Option<Vec<u8>> = None;
        // Packets that came with a node's CONNACK wait in `held` (handled once the
        // client's CONNACK is queued: the loop handles `held` first).
        while self.slots.iter().any(|s| s.state == LinkState::Connecting) {
            let ev = tokio::select! {
                ev = up_rx.recv() => ev,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            let Some(ev) = ev else { break };
            match ev {
                Up::Connack {
                    idx,
                    gen,
                    bytes,
                    io,
                } if self.current(idx, gen) => match self.connack(idx, &bytes, io) {
                    Some(sp) => {
                        present &= sp;
                        if accepted.is_none() {
                            accepted = Some(bytes);
                        }
                    }
                    None => {
                        if refusal.is_none() {
                            refusal = Some(bytes);
                        }
                    }
                },
                ev => self.on_up(ev),
            }
        }
        // Nodes still connecting answer later, like nodes that come up.
        let Some(mut ack) = accepted else {
            for slot in &mut self.slots {
                if let Some(stop) = slot.connecting.take() {
                    stop.cancel();
                }
            }
            return match refusal {
                Some(bytes) => {
                    tracing::debug!(
                        "fan-out: every node refused the CONNECT; the first refusal is passed on"
                    );
                    self.connack_sent = match crate::mqtt::observe_connack(&bytes) {
                        Ok(crate::mqtt::Parse::Complete(i)) => Some(i.code),
                        _ => None,
                    };
                    self.queue_client(bytes);
                    Err(End::Refused)
                }
                None => {
                    Err(self.refuse_no_node("no node of the cluster accepted the fan-out session"))
                }
            };
        };
        if let Some(at) = super::packet::ack_id(&ack).map(|(_, at)| at) {
            if let Some(f) = ack.get_mut(at) {
                *f = (*f & !1) | u8::from(present);
            }
        }
        self.connack_sent = Some(0);
        self.queue_client(ack);
        Ok(())
    }

    /// A node's CONNACK: `Some(session_present)` if it accepted (its connection is
    /// then up, the stored subscriptions are replayed and `io` is the session's),
    /// else `None` (`io` is dropped; retried later).
    pub fn connack(&mut self, idx: usize, bytes: &[u8], mut io: Box<NodeIo>) -> Option<bool> {
        let info = match crate::mqtt::observe_connack(bytes) {
            Ok(crate::mqtt::Parse::Complete(i)) => Some(i),
            _ => None,
        };
        let node = self.slots[idx].node.name.clone();
        let code = info.map(|i| i.code).unwrap_or(0xFF);
        self.start
            .data
            .metrics
            .connack
            .with_label_values(&[&self.cluster, &node, crate::metrics::code_label(code)])
            .inc();
        match info {
            Some(i) if i.code == 0 => {
                let early = std::mem::take(&mut io.early);
                let s = &mut self.slots[idx];
                s.state = LinkState::Up;
                s.connecting = None;
                s.io = Some(io);
                s.up_since = Instant::now();
                s.upstreams.inc();
                if !self.joined.contains(&node) {
                    self.joined.push(node.clone());
                }
                if !early.is_empty() {
                    // Handled after the replay is queued, and (at set-up) after the
                    // client's CONNACK: the loop handles `held` first.
                    let gen = s.gen;
                    self.held.push(Batch {
                        idx,
                        gen,
                        bytes: early,
                        at: 0,
                    });
                }
                tracing::debug!(node = %node, session_present = i.session_present, "fan-out: node accepted");
                self.replay(idx);
                Some(i.session_present)
            }
            _ => {
                tracing::debug!(node = %node, code, "fan-out: node refused the CONNECT; retried later");
                let pause = self.retry_pause(idx);
                self.lost(idx, pause);
                None
            }
        }
    }

    /// Send the stored subscriptions to a node that just accepted, before anything
    /// else; their SUBACKs are consumed here.
    fn replay(&mut self, idx: usize) {
        let v5 = self.start.v5;
        let s = &mut self.slots[idx];
        let mut out = Vec::new();
        for st in &self.stored {
            let Ok(nid) = s.out.alloc(Out::Replay) else {
                break;
            };
            out.extend(crate::mqtt::subscribe::encode_subscribe(
                nid, v5, &st.props, &st.filter, st.options,
            ));
        }
        if !out.is_empty() {
            tracing::debug!(node = %s.node.name, filters = self.stored.len(), "fan-out: subscriptions replayed");
            if let Some(io) = s.io.as_mut() {
                io.out.push(&out);
            }
        }
    }
}
