//! Merging the nodes' answers into the one answer the client gets. Pure, no I/O.
//!
//! - SUBACK / UNSUBACK ([`AckMerge`]): per filter, the best granted QoS among the
//!   nodes that answered (a failure only if every node refused, then the first
//!   node's failure code); v5 properties (reason string, user properties) of the
//!   first node's answer.
//! - PUBACK / PUBREC / PUBCOMP of a client PUBLISH ([`PubMerge`]): one answer once
//!   every node it was sent to has answered or has gone; v5 reason: the lowest
//!   success code if any node accepted, else the first failure.

use crate::mqtt::subscribe::{granted, SUBACK, UNSUBACK};

/// `a` merged with one more node's `b` (SUBACK codes: 0..=2 granted QoS, ≥ 0x80
/// failures; UNSUBACK: 0x00 success, 0x11 no subscription existed, ≥ 0x80 failures).
pub fn best_code(a: Option<u8>, b: u8) -> u8 {
    match a {
        None => b,
        Some(a) => match (granted(a), granted(b)) {
            (true, true) => a.max(b),
            (false, true) => b,
            (true, false) | (false, false) => a,
        },
    }
}

/// An UNSUBACK success merged: 0x00 (removed somewhere) beats 0x11 (nowhere).
fn best_unsub(a: Option<u8>, b: u8) -> u8 {
    match a {
        None => b,
        Some(a) if a < 0x80 && b < 0x80 => a.min(b),
        Some(a) => best_code(Some(a), b),
    }
}

/// One client SUBSCRIBE or UNSUBSCRIBE waiting for the nodes' answers.
#[derive(Debug, Clone)]
pub struct AckMerge {
    /// SUBACK (true) or UNSUBACK.
    pub sub: bool,
    /// Node indexes still to answer.
    pub waiting: Vec<usize>,
    codes: Vec<Option<u8>>,
    /// The first answer's v5 property block (with its length prefix).
    props: Option<Vec<u8>>,
}

impl AckMerge {
    pub fn new(sub: bool, filters: usize, waiting: Vec<usize>) -> Self {
        AckMerge {
            sub,
            waiting,
            codes: vec![None; filters],
            props: None,
        }
    }

    /// Node `node` answered with these codes and v5 properties (block with its length).
    pub fn answer(&mut self, node: usize, codes: &[u8], props: &[u8]) {
        self.waiting.retain(|n| *n != node);
        for (i, c) in codes.iter().enumerate() {
            if let Some(slot) = self.codes.get_mut(i) {
                *slot = Some(if self.sub {
                    best_code(*slot, *c)
                } else {
                    best_unsub(*slot, *c)
                });
            }
        }
        if self.props.is_none() && !props.is_empty() {
            self.props = Some(props.to_vec());
        }
    }

    /// Node `node` went away without answering.
    pub fn gone(&mut self, node: usize) {
        self.waiting.retain(|n| *n != node);
    }

    pub fn done(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The merged SUBACK / UNSUBACK with the client's identifier. A filter no node
    /// answered for (every node went away) is reported as a failure (0x80).
    pub fn encode(&self, id: u16, v5: bool) -> Vec<u8> {
        let mut body = id.to_be_bytes().to_vec();
        if v5 {
            match &self.props {
                Some(p) => body.extend_from_slice(p),
                None => body.push(0),
            }
        }
        if self.sub || v5 {
            body.extend(self.codes.iter().map(|c| c.unwrap_or(0x80)));
        }
        let mut out = vec![(if self.sub { SUBACK } else { UNSUBACK }) << 4];
        let mut n = body.len();
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.push(b);
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(&body);
        out
    }
}

/// Where a client QoS 1/2 PUBLISH stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// QoS 1: waiting for the nodes' PUBACKs.
    Ack,
    /// QoS 2: waiting for the nodes' PUBRECs.
    Rec,
    /// QoS 2: PUBREC sent to the client, waiting for its PUBREL.
    Released,
    /// QoS 2: PUBREL sent to the nodes, waiting for their PUBCOMPs.
    Comp,
}

/// One client QoS 1/2 PUBLISH sent to one or more nodes.
#[derive(Debug, Clone)]
pub struct PubMerge {
    pub stage: Stage,
    /// (node index, the node connection's identifier) still to answer this stage.
    pub waiting: Vec<(usize, u16)>,
    /// QoS 2: the nodes that sent PUBREC (they get the PUBREL).
    pub received: Vec<(usize, u16)>,
    reason: Option<u8>,
}

impl PubMerge {
    pub fn new(qos: u8, waiting: Vec<(usize, u16)>) -> Self {
        PubMerge {
            stage: if qos == 2 { Stage::Rec } else { Stage::Ack },
            waiting,
            received: Vec::new(),
            reason: None,
        }
    }

    /// Node `node` answered this stage with `reason` (v5; 0 for 3.1.1).
    pub fn answer(&mut self, node: usize, reason: u8) {
        let before = self.waiting.len();
        let mut hit = None;
        self.waiting.retain(|(n, id)| {
            if *n == node {
                hit = Some(*id);
                false
            } else {
                true
            }
        });
        if self.waiting.len() == before {
            return;
        }
        if self.stage == Stage::Rec && reason < 0x80 {
            if let Some(id) = hit {
                self.received.push((node, id));
            }
        }
        self.reason = Some(match self.reason {
            None => reason,
            Some(a) if a < 0x80 && reason < 0x80 => a.min(reason),
            Some(a) if a < 0x80 => a,
            Some(a) if reason < 0x80 => reason.min(a),
            Some(a) => a,
        });
    }

    /// Node `node` is gone: it answers nothing more.
    pub fn gone(&mut self, node: usize) {
        self.waiting.retain(|(n, _)| *n != node);
        self.received.retain(|(n, _)| *n != node);
    }

    pub fn done(&self) -> bool {
        self.waiting.is_empty() && self.stage != Stage::Released
    }

    /// The merged reason code (0 when no node answered: the nodes that remained
    /// connected all acknowledged, i.e. none).
    pub fn reason(&self) -> u8 {
        self.reason.unwrap_or(0)
    }

    /// Start a new stage (the reason is per stage).
    pub fn next(&mut self, stage: Stage, waiting: Vec<(usize, u16)>) {
        self.stage = stage;
        self.waiting = waiting;
        self.reason = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_granted_qos_failure_only_if_all_refused() {
        assert_eq!(best_code(None, 0x80), 0x80);
        assert_eq!(best_code(Some(0x80), 1), 1);
        assert_eq!(best_code(Some(1), 0x80), 1);
        assert_eq!(best_code(Some(0), 2), 2);
        assert_eq!(best_code(Some(0x87), 0x80), 0x87, "first failure kept");
    }

    #[test]
    fn suback_merged_over_three_nodes() {
        let mut m = AckMerge::new(true, 2, vec![0, 1, 2]);
        m.answer(1, &[0x80, 1], &[]);
        assert!(!m.done());
        m.answer(0, &[0, 0x80], &[]);
        m.gone(2);
        assert!(m.done());
        assert_eq!(m.encode(0x0A0B, false), vec![0x90, 4, 0x0A, 0x0B, 0, 1]);
        let mut m = AckMerge::new(true, 1, vec![0]);
        m.answer(0, &[2], &[3, 0x1F, 0, 0]);
        assert_eq!(m.encode(1, true), vec![0x90, 7, 0, 1, 3, 0x1F, 0, 0, 2]);
    }

    #[test]
    fn unsuback_v3_has_no_codes_and_v5_prefers_success() {
        let mut m = AckMerge::new(false, 1, vec![0, 1]);
        m.answer(0, &[0x11], &[]);
        m.answer(1, &[0x00], &[]);
        assert_eq!(m.encode(5, true), vec![0xB0, 4, 0, 5, 0, 0]);
        assert_eq!(m.encode(5, false), vec![0xB0, 2, 0, 5]);
        let none = AckMerge::new(true, 1, vec![]);
        assert_eq!(none.encode(1, false), vec![0x90, 3, 0, 1, 0x80]);
    }

    #[test]
    fn publish_acks_wait_for_every_node_or_its_loss() {
        let mut m = PubMerge::new(1, vec![(0, 10), (1, 20), (2, 30)]);
        m.answer(1, 0x10);
        m.answer(1, 0x00); // duplicate answer: ignored
        m.gone(2);
        assert!(!m.done());
        m.answer(0, 0x00);
        assert!(m.done());
        assert_eq!(m.reason(), 0x00);
        let mut q2 = PubMerge::new(2, vec![(0, 1), (1, 2)]);
        q2.answer(0, 0x00);
        q2.answer(1, 0x80);
        assert!(q2.done());
        assert_eq!(q2.received, vec![(0, 1)], "a refusing node gets no PUBREL");
        assert_eq!(q2.reason(), 0x00);
        q2.next(Stage::Released, vec![]);
        assert!(!q2.done(), "waiting for the client's PUBREL");
        let all_refused = {
            let mut m = PubMerge::new(1, vec![(0, 1), (1, 2)]);
            m.answer(0, 0x87);
            m.answer(1, 0x80);
            m.reason()
        };
        assert_eq!(all_refused, 0x87);
    }
}
