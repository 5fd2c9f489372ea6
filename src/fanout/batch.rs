//! The node packets a fan-out session holds: each node read's whole packets, back to
//! back, are one batch (`super::io`); the session handles them one by one while the
//! client can take more (queue under its bound, a client-side packet identifier free)
//! and keeps the rest here, in arrival order, until it can. The nodes are not read
//! while anything is held, so what is held is at most one read per node (the read
//! buffer plus one packet of `max_packet_size` each). The session takes them in
//! `super::handle`.

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

    pub fn push(&mut self, b: Batch) {
        self.0.push_back(b);
    }

    pub fn front_mut(&mut self) -> Option<&mut Batch> {
        self.0.front_mut()
    }

    pub fn pop_front(&mut self) {
        self.0.pop_front();
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
