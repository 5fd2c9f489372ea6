//! The node packets a fan-out session holds: each node read arrives as one message of
//! whole packets back to back ([`super::link::Up::Packets`]); the session handles them
//! one by one while the client can take more (queue under its bound, a client-side
//! packet identifier free) and keeps the rest here, in arrival order, until it can.
//! The node channel is not read while anything is held, so what is held is at most
//! one batch per channel message taken (one node read, at most the read buffer plus
//! one packet of `max_packet_size`).

use super::session::{LinkState, Session};
use std::collections::VecDeque;

/// Whole packets of one node read, from `at` on not handled yet.
pub(super) struct Batch {
    pub idx: usize,
    pub gen: u32,
    pub bytes: Vec<u8>,
    pub at: usize,
}

/// Batches taken from the node channel and not (completely) handled yet.
#[derive(Default)]
pub(super) struct Held(VecDeque<Batch>);

impl Held {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The length of the whole packet at the start of `p` (fixed header included), if
/// its length field is complete and all of it is there.
pub(super) fn packet_len(p: &[u8]) -> Option<usize> {
    let mut rem = 0usize;
    for i in 0..4 {
        let b = *p.get(1 + i)?;
        rem |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            let total = 2 + i + rem;
            return (total <= p.len()).then_some(total);
        }
    }
    None
}

impl Session {
    /// Take a batch of node packets and handle what the bounds allow now.
    pub(super) fn on_batch(&mut self, b: Batch) {
        self.held.0.push_back(b);
        self.handle_held();
    }

    /// Handle held node packets, oldest first, until none is left, the client can
    /// take no more, or the session ends.
    pub(super) fn handle_held(&mut self) {
        while self.end.is_none() && self.nodes_readable() {
            let Some(b) = self.held.0.front_mut() else {
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
                self.held.0.pop_front();
                continue;
            };
            b.at += len;
            // The packet is handled in place; the batch goes back to its place after.
            let mut bytes = std::mem::take(&mut b.bytes);
            self.on_node(idx, gen, &mut bytes[at..at + len]);
            if let Some(b) = self.held.0.front_mut() {
                b.bytes = bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::packet_len;

    #[test]
    fn packet_lengths_are_read_from_the_fixed_header() {
        assert_eq!(packet_len(&[0x40, 2, 0, 1]), Some(4));
        assert_eq!(packet_len(&[0x40, 2, 0, 1, 0x40]), Some(4));
        assert_eq!(packet_len(&[0x40, 2, 0]), None);
        assert_eq!(packet_len(&[]), None);
        let mut big = vec![0x30, 0x80, 0x01];
        big.resize(3 + 128, 0);
        assert_eq!(packet_len(&big), Some(131));
        assert_eq!(packet_len(&[0x30, 0x80]), None);
    }
}
