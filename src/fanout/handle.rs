//! The fan-out session's packet handlers: what the client sends (to every node, to
//! one, or answered here) and what each node sends (merged into the client
//! connection under the session's own packet identifiers).

use super::batch::packet_len;
use super::merge::{AckMerge, PubMerge, Stage};
use super::packet::{self as pk, ack, ack_id, ack_reason, publish, set_id};
use super::session::{End, In, LinkState, Out, Session, Stored, MAX_STORED};
use crate::config::FanoutPublish;
use crate::mqtt::subscribe::{parse_suback, parse_subscribe, parse_unsuback, parse_unsubscribe};
use std::hash::{Hash, Hasher};

impl Session {
    fn v5(&self) -> bool {
        self.start.v5
    }

    fn ups(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|i| self.slots[*i].state == LinkState::Up)
            .collect()
    }

    fn malformed(&mut self, what: &str) {
        tracing::debug!(
            reason = "malformed",
            "fan-out client sent a malformed {what}: closed"
        );
        self.end = Some(End::Malformed);
    }

    fn send_node(&mut self, idx: usize, bytes: &[u8]) {
        if let Some(io) = self.slots[idx].io.as_mut() {
            io.out.push(bytes);
        }
    }

    /// Is the node connection that sent `i` still the current, up one?
    fn live(&self, i: &In) -> bool {
        self.slots
            .get(i.idx)
            .is_some_and(|s| s.gen == i.gen && s.state == LinkState::Up)
    }

    /// One whole packet from the client.
    pub(super) fn on_client(&mut self, p: Vec<u8>) {
        let v5 = self.v5();
        let kind = p[0] >> 4;
        match kind {
            pk::PUBLISH => self.client_publish(p),
            pk::PUBACK | pk::PUBREC | pk::PUBCOMP => {
                let Some((id, at)) = ack_id(&p) else {
                    return self.malformed("acknowledgement");
                };
                let Some(i) = self.inbound.get(id).copied() else {
                    return;
                };
                let live = self.live(&i);
                if kind == pk::PUBREC {
                    if live {
                        self.slots[i.idx].rel.insert(i.nid, id);
                    } else {
                        // The node is gone: finish the client's side of the flow.
                        self.queue_client(ack(pk::PUBREL, id, v5, 0));
                        return;
                    }
                } else {
                    self.inbound.free(id);
                    if kind == pk::PUBCOMP && live {
                        self.slots[i.idx].rel.remove(&i.nid);
                    }
                }
                if live {
                    let mut b = p;
                    set_id(&mut b, at, i.nid);
                    self.send_node(i.idx, &b);
                }
            }
            pk::PUBREL => {
                let Some((id, _)) = ack_id(&p) else {
                    return self.malformed("PUBREL");
                };
                let Some(m) = self.pubs.get_mut(&id) else {
                    self.queue_client(ack(pk::PUBCOMP, id, v5, 0x92));
                    return;
                };
                if m.stage != Stage::Released {
                    return;
                }
                let to = std::mem::take(&mut m.received);
                let mut waiting = Vec::new();
                for (idx, nid) in to {
                    if self.slots[idx].state == LinkState::Up {
                        self.send_node(idx, &ack(pk::PUBREL, nid, v5, 0));
                        waiting.push((idx, nid));
                    }
                }
                if let Some(m) = self.pubs.get_mut(&id) {
                    m.next(Stage::Comp, waiting);
                }
                self.settle_pub(id);
            }
            pk::SUBSCRIBE => self.client_subscribe(p),
            pk::UNSUBSCRIBE => self.client_unsubscribe(p),
            pk::PINGREQ => self.queue_client(pk::PINGRESP_BYTES),
            pk::DISCONNECT => {
                for idx in self.ups() {
                    self.send_node(idx, &p);
                }
                tracing::debug!("fan-out client disconnected; DISCONNECT passed to every node");
                self.end = Some(End::Disconnect);
            }
            _ => {
                tracing::debug!(
                    reason = "protocol",
                    kind,
                    "fan-out client sent a packet a client may not send here: closed"
                );
                self.end = Some(End::Protocol);
            }
        }
    }

    /// The node a `publish = "one"` PUBLISH goes to: the highest hash of (client id,
    /// node name) among the connected nodes (stable while they stay up).
    fn pick(&self, ups: &[usize]) -> Option<usize> {
        ups.iter().copied().max_by_key(|i| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.start.client_id.hash(&mut h);
            self.slots[*i].node.name.hash(&mut h);
            h.finish()
        })
    }

    fn client_publish(&mut self, p: Vec<u8>) {
        let Some(v) = publish(&p, self.v5()) else {
            return self.malformed("PUBLISH");
        };
        let ups = self.ups();
        let to_all = self.start.rule.publish == FanoutPublish::All
            || self
                .start
                .rule
                .publish_all_topics
                .iter()
                .any(|f| pk::topic_matches(f, v.topic));
        let targets = if to_all {
            ups
        } else {
            self.pick(&ups).into_iter().collect()
        };
        let Some(at) = v.id_at else {
            for t in targets {
                self.slots[t].to_node.inc();
                self.send_node(t, &p);
            }
            return;
        };
        let cid = v.id;
        if self.pubs.contains_key(&cid) {
            // A retransmission of one still in flight: the nodes have it already.
            return;
        }
        let mut waiting = Vec::with_capacity(targets.len());
        for t in targets {
            let Ok(nid) = self.slots[t].out.alloc(Out::Pub(cid)) else {
                tracing::debug!(node = %self.slots[t].node.name, "fan-out: no packet identifier free towards the node; PUBLISH not sent there");
                continue;
            };
            let mut b = p.clone();
            set_id(&mut b, at, nid);
            self.slots[t].to_node.inc();
            self.send_node(t, &b);
            waiting.push((t, nid));
        }
        self.pubs.insert(cid, PubMerge::new(v.qos, waiting));
        self.settle_pub(cid);
    }

    fn client_subscribe(&mut self, p: Vec<u8>) {
        let v5 = self.v5();
        let (cid, filters, props) = match parse_subscribe(&p, v5) {
            Ok(s) => (
                s.id,
                s.filters()
                    .map(|f| (f.topic.to_string(), f.options))
                    .collect::<Vec<_>>(),
                s.properties.to_vec(),
            ),
            Err(e) => {
                tracing::debug!(error = %e, "fan-out SUBSCRIBE");
                return self.malformed("SUBSCRIBE");
            }
        };
        for (filter, options) in &filters {
            let kept = self.stored.len();
            match self.stored.iter_mut().find(|s| s.filter == *filter) {
                Some(s) => {
                    s.options = *options;
                    s.props.clone_from(&props);
                }
                None if kept < MAX_STORED => self.stored.push(Stored {
                    filter: filter.clone(),
                    options: *options,
                    props: props.clone(),
                }),
                None => tracing::debug!(
                    "fan-out: {MAX_STORED} subscriptions kept already; this one is not replayed"
                ),
            }
        }
        self.fan_ack(p, cid, filters.len(), true);
    }

    fn client_unsubscribe(&mut self, p: Vec<u8>) {
        let (cid, filters) = match parse_unsubscribe(&p, self.v5()) {
            Ok(u) => (u.id, u.filters().map(str::to_string).collect::<Vec<_>>()),
            Err(e) => {
                tracing::debug!(error = %e, "fan-out UNSUBSCRIBE");
                return self.malformed("UNSUBSCRIBE");
            }
        };
        self.stored.retain(|s| !filters.contains(&s.filter));
        self.fan_ack(p, cid, filters.len(), false);
    }

    /// Send a SUBSCRIBE / UNSUBSCRIBE to every connected node with its own id.
    fn fan_ack(&mut self, p: Vec<u8>, cid: u16, filters: usize, sub: bool) {
        let Some((_, at)) = ack_id(&p) else { return };
        let mut waiting = Vec::new();
        for t in self.ups() {
            let o = if sub { Out::Sub(cid) } else { Out::Unsub(cid) };
            let Ok(nid) = self.slots[t].out.alloc(o) else {
                continue;
            };
            let mut b = p.clone();
            set_id(&mut b, at, nid);
            self.send_node(t, &b);
            waiting.push(t);
        }
        self.subs.insert(cid, AckMerge::new(sub, filters, waiting));
        self.settle_sub(cid);
    }

    /// Answer the client once every node answered (or went away).
    pub(super) fn settle_sub(&mut self, cid: u16) {
        if self.subs.get(&cid).is_some_and(AckMerge::done) {
            if let Some(m) = self.subs.remove(&cid) {
                self.queue_client(m.encode(cid, self.v5()));
            }
        }
    }

    /// Answer the client's PUBLISH stage once every node answered (or went away).
    pub(super) fn settle_pub(&mut self, cid: u16) {
        let v5 = self.v5();
        let Some(m) = self.pubs.get_mut(&cid) else {
            return;
        };
        if !m.done() {
            return;
        }
        let reason = m.reason();
        match m.stage {
            Stage::Ack => {
                self.pubs.remove(&cid);
                self.queue_client(ack(pk::PUBACK, cid, v5, reason));
            }
            Stage::Rec => {
                if reason >= 0x80 {
                    self.pubs.remove(&cid);
                } else {
                    m.next(Stage::Released, Vec::new());
                }
                self.queue_client(ack(pk::PUBREC, cid, v5, reason));
            }
            Stage::Comp => {
                self.pubs.remove(&cid);
                self.queue_client(ack(pk::PUBCOMP, cid, v5, 0));
            }
            Stage::Released => {}
        }
    }

    /// One whole packet from node `idx` (connection `gen`), after its CONNACK.
    pub(super) fn on_node(&mut self, idx: usize, gen: u32, p: &mut [u8]) {
        let v5 = self.v5();
        let kind = p[0] >> 4;
        if kind == pk::PUBLISH {
            return self.node_publish(idx, gen, p);
        }
        if matches!(kind, pk::PINGRESP) {
            return;
        }
        if kind == pk::DISCONNECT {
            let reason = super::packet::disconnect_reason(p);
            tracing::debug!(node = %self.slots[idx].node.name, reason, "fan-out: the node sent DISCONNECT");
            if reason == crate::relay::polite::SESSION_TAKEN_OVER && self.end.is_none() {
                // Another connection took the client id on that node: connecting
                // again would take it back, and so on. The session ends.
                self.end = Some(End::TakenOver);
            }
            let pause = self.retry_pause(idx);
            return self.lost(idx, pause);
        }
        let Some((nid, _)) = ack_id(p) else {
            tracing::debug!(kind, "fan-out: malformed packet from a node; ignored");
            return;
        };
        match kind {
            pk::PUBACK | pk::PUBCOMP => {
                if let Some(Out::Pub(cid)) = self.slots[idx].out.free(nid) {
                    if let Some(m) = self.pubs.get_mut(&cid) {
                        m.answer(idx, ack_reason(p, v5));
                    }
                    self.settle_pub(cid);
                }
            }
            pk::PUBREC => {
                if let Some(Out::Pub(cid)) = self.slots[idx].out.get(nid).copied() {
                    let reason = ack_reason(p, v5);
                    if reason >= 0x80 {
                        self.slots[idx].out.free(nid);
                    }
                    if let Some(m) = self.pubs.get_mut(&cid) {
                        m.answer(idx, reason);
                    }
                    self.settle_pub(cid);
                }
            }
            pk::PUBREL => match self.slots[idx].rel.get(&nid).copied() {
                Some(cid) => self.queue_client(ack(pk::PUBREL, cid, v5, 0)),
                None => self.send_node(idx, &ack(pk::PUBCOMP, nid, v5, 0x92)),
            },
            pk::SUBACK | pk::UNSUBACK => {
                let parsed = if kind == pk::SUBACK {
                    parse_suback(p, v5)
                } else {
                    parse_unsuback(p, v5)
                };
                let answer = match parsed {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(error = %e, "fan-out: malformed SUBACK/UNSUBACK from a node; ignored");
                        return;
                    }
                };
                match self.slots[idx].out.free(nid) {
                    Some(Out::Sub(cid)) | Some(Out::Unsub(cid)) => {
                        let props = if v5 {
                            let start = ack_id(p).map(|(_, at)| at + 2).unwrap_or(p.len());
                            p.get(start..p.len() - answer.codes.len()).unwrap_or(&[])
                        } else {
                            &[]
                        };
                        if let Some(m) = self.subs.get_mut(&cid) {
                            m.answer(idx, answer.codes, props);
                        }
                        self.settle_sub(cid);
                    }
                    Some(Out::Replay) if answer.codes.iter().any(|c| *c >= 0x80) => {
                        tracing::debug!(node = %self.slots[idx].node.name, "fan-out: a replayed subscription was refused");
                    }
                    _ => {}
                }
            }
            _ => tracing::debug!(kind, "fan-out: unexpected packet from a node; ignored"),
        }
    }

    fn node_publish(&mut self, idx: usize, gen: u32, p: &mut [u8]) {
        let v5 = self.v5();
        let Some(v) = publish(p, v5) else {
            tracing::debug!(node = %self.slots[idx].node.name, "fan-out: malformed PUBLISH from a node; dropped");
            return;
        };
        if v.alias {
            // Topic aliases are per connection: one node's alias means nothing on the
            // merged connection. Acknowledged to the node, not passed on.
            tracing::debug!(node = %self.slots[idx].node.name, "fan-out: PUBLISH with a topic alias from a node; dropped");
            match v.qos {
                1 => self.send_node(idx, &ack(pk::PUBACK, v.id, v5, 0)),
                2 => self.send_node(idx, &ack(pk::PUBREC, v.id, v5, 0)),
                _ => {}
            }
            return;
        }
        self.slots[idx].to_client.inc();
        let Some(at) = v.id_at else {
            self.queue_client(&*p);
            return;
        };
        match self.inbound.alloc(In {
            idx,
            gen,
            nid: v.id,
        }) {
            Ok(cid) => {
                set_id(p, at, cid);
                self.queue_client(&*p);
            }
            Err(_) => {
                // Not reached: the loop reads the nodes only while an id is free.
                tracing::debug!("fan-out: no client-side packet identifier free; PUBLISH dropped");
            }
        }
    }
}

impl Session {
    /// Handle held node packets, oldest first, until none is left, the client can
    /// take no more, or the session ends.
    pub(super) fn handle_held(&mut self) {
        while self.end.is_none() && self.nodes_readable() {
            let Some(b) = self.held.front_mut() else {
                return;
            };
            let (idx, gen, at) = (b.idx, b.gen, b.at);
            let live = self
                .slots
                .get(idx)
                .is_some_and(|s| s.gen == gen && s.state == LinkState::Up);
            let len = if live {
                packet_len(&b.bytes[at..])
            } else {
                None
            };
            let Some(len) = len else {
                // Done, or from a node connection that is gone: the rest is dropped.
                self.held.pop_front();
                continue;
            };
            b.at += len;
            // The packet is handled in place; the batch goes back to its place after.
            let mut bytes = std::mem::take(&mut b.bytes);
            self.on_node(idx, gen, &mut bytes[at..at + len]);
            if let Some(b) = self.held.front_mut() {
                b.bytes = bytes;
            }
        }
    }
}
