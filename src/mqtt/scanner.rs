//! Packet boundaries in a byte stream, without buffering what is not needed.
//!
//! The packet-aware relay forwards bytes as they come, like the byte relay, but it
//! must know where each MQTT packet starts to pick out the few it learns from
//! (SUBSCRIBE, UNSUBSCRIBE, SUBACK, UNSUBACK, CONNACK). A [`Scanner`] follows the
//! fixed headers (type byte and Remaining Length) across reads of any size and
//! reports, in stream order:
//! - [`Scanned::Pass`]: bytes of packets of no interest, as soon as they arrive;
//! - [`Scanned::Whole`]: a complete packet of interest, once all of it has arrived
//!   (copied into the scanner only when it spans reads);
//! - [`Scanned::Oversized`]: a packet of interest larger than the cap: it is passed
//!   on like any other and not looked at;
//! - [`Scanned::Lost`]: a Remaining Length with a fifth byte. The broker closes such a
//!   connection; everything after it is passed on unread.
//!
//! Memory is bounded by the cap (plus 5 header bytes), whatever the input. Pure: no
//! I/O, no panic on any input; the fuzz target `scanner` feeds it arbitrary splits.

use super::wire::Header;

/// One step of a scan; see the module comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanned<'a> {
    Pass(&'a [u8]),
    Whole(&'a [u8]),
    Oversized { kind: u8, len: usize },
    Lost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a fixed header (its bytes so far are in `hdr`).
    Header,
    /// Passing on this many more bytes of a packet of no interest.
    Skip(usize),
    /// Collecting a packet of interest of this total length into `held`.
    Collect(usize),
    /// Framing lost: everything passes.
    Lost,
}

/// Follows packet boundaries in one direction of a connection.
#[derive(Debug, Clone)]
pub struct Scanner {
    /// Bit `t` set: packets of type `t` are reported whole.
    mask: u16,
    cap: usize,
    state: State,
    hdr: [u8; 5],
    hdr_len: u8,
    held: Vec<u8>,
}

/// Capacity kept by `held` between packets; a larger buffer is freed.
const KEEP: usize = 1024;

impl Scanner {
    /// A scanner reporting whole packets of the given types (up to `cap` bytes each).
    pub fn new(types: &[u8], cap: usize) -> Self {
        let mask = types.iter().fold(0u16, |m, t| m | (1 << (t & 0x0F)));
        Scanner {
            mask,
            cap,
            state: State::Header,
            hdr: [0; 5],
            hdr_len: 0,
            held: Vec::new(),
        }
    }

    /// Change which packet types are reported from the next packet on.
    pub fn set_types(&mut self, types: &[u8]) {
        self.mask = types.iter().fold(0u16, |m, t| m | (1 << (t & 0x0F)));
    }

    /// Bytes received but not yet reported (a fixed header cut short, or a packet
    /// of interest being collected): what a caller that forwards only reported
    /// bytes must still send if it stops scanning now.
    pub fn held(&self) -> &[u8] {
        match self.state {
            State::Header => &self.hdr[..usize::from(self.hdr_len)],
            State::Collect(_) => &self.held,
            State::Skip(_) | State::Lost => &[],
        }
    }

    /// True while bytes of a packet of no interest are being passed on (or framing is
    /// lost): a caller that forwards only what is reported is then in the middle of a
    /// packet. Held bytes (a fixed header cut short, a packet being collected) have not
    /// been reported yet.
    pub fn passing(&self) -> bool {
        matches!(self.state, State::Skip(_) | State::Lost)
    }

    /// True at a packet boundary (nothing held, nothing left to skip).
    pub fn at_boundary(&self) -> bool {
        self.state == State::Header && self.hdr_len == 0
    }

    /// Scan `data`, the next bytes of the stream, reporting to `f` in order.
    pub fn feed<F: FnMut(Scanned<'_>)>(&mut self, mut data: &[u8], mut f: F) {
        while !data.is_empty() {
            match self.state {
                State::Lost => {
                    f(Scanned::Pass(data));
                    return;
                }
                State::Skip(left) => {
                    let n = left.min(data.len());
                    f(Scanned::Pass(&data[..n]));
                    data = &data[n..];
                    self.state = if n == left {
                        State::Header
                    } else {
                        State::Skip(left - n)
                    };
                }
                State::Collect(total) => {
                    let n = (total - self.held.len()).min(data.len());
                    self.held.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.held.len() == total {
                        f(Scanned::Whole(&self.held));
                        self.held.clear();
                        if self.held.capacity() > KEEP {
                            self.held = Vec::new();
                        }
                        self.state = State::Header;
                    }
                }
                State::Header if self.hdr_len == 0 => {
                    // Fast path: the whole fixed header is in `data`.
                    match Header::read(data) {
                        Header::Complete {
                            header_len,
                            remaining,
                        } => {
                            data = self.start(data[0], header_len, remaining, data, &mut f);
                        }
                        Header::TooLong => {
                            self.state = State::Lost;
                            f(Scanned::Lost);
                        }
                        Header::Incomplete => {
                            self.hdr[..data.len()].copy_from_slice(data);
                            self.hdr_len = data.len() as u8;
                            return;
                        }
                    }
                }
                State::Header => {
                    let have = usize::from(self.hdr_len);
                    self.hdr[have] = data[0];
                    self.hdr_len += 1;
                    data = &data[1..];
                    let hdr = self.hdr;
                    let len = usize::from(self.hdr_len);
                    match Header::read(&hdr[..len]) {
                        Header::Complete { remaining, .. } => {
                            self.hdr_len = 0;
                            // Continue as if the header had arrived in one piece:
                            // report it, then the body from `data`.
                            self.begin(hdr[0], len, remaining, &hdr[..len], &mut f);
                        }
                        Header::TooLong => {
                            self.hdr_len = 0;
                            f(Scanned::Pass(&hdr[..len]));
                            self.state = State::Lost;
                            f(Scanned::Lost);
                        }
                        Header::Incomplete => {}
                    }
                }
            }
        }
    }

    /// A fixed header found at the start of `data` (fast path); returns what follows
    /// the part of `data` this consumed.
    fn start<'d, F: FnMut(Scanned<'_>)>(
        &mut self,
        b0: u8,
        header_len: usize,
        remaining: usize,
        data: &'d [u8],
        f: &mut F,
    ) -> &'d [u8] {
        let total = header_len.saturating_add(remaining);
        if self.wanted(b0) {
            if total > self.cap {
                f(Scanned::Oversized {
                    kind: b0 >> 4,
                    len: total,
                });
            } else if data.len() >= total {
                f(Scanned::Whole(&data[..total]));
                return &data[total..];
            } else {
                self.held.clear();
                self.held.extend_from_slice(data);
                self.state = State::Collect(total);
                return &[];
            }
        }
        let n = total.min(data.len());
        f(Scanned::Pass(&data[..n]));
        self.state = if n == total {
            State::Header
        } else {
            State::Skip(total - n)
        };
        &data[n..]
    }

    /// A fixed header assembled across reads (`hdr`); the body follows in the stream.
    fn begin<F: FnMut(Scanned<'_>)>(
        &mut self,
        b0: u8,
        header_len: usize,
        remaining: usize,
        hdr: &[u8],
        f: &mut F,
    ) {
        let total = header_len + remaining;
        if self.wanted(b0) && total <= self.cap {
            if remaining == 0 {
                f(Scanned::Whole(hdr));
                self.state = State::Header;
            } else {
                self.held.clear();
                self.held.extend_from_slice(hdr);
                self.state = State::Collect(total);
            }
            return;
        }
        if self.wanted(b0) {
            f(Scanned::Oversized {
                kind: b0 >> 4,
                len: total,
            });
        }
        f(Scanned::Pass(hdr));
        self.state = if remaining == 0 {
            State::Header
        } else {
            State::Skip(remaining)
        };
    }

    fn wanted(&self, b0: u8) -> bool {
        self.mask & (1 << (b0 >> 4)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(s: &mut Scanner, parts: &[&[u8]]) -> (Vec<u8>, Vec<Vec<u8>>, usize) {
        let mut passed = Vec::new();
        let mut whole = Vec::new();
        let mut other = 0;
        for p in parts {
            s.feed(p, |ev| match ev {
                Scanned::Pass(b) => passed.extend_from_slice(b),
                Scanned::Whole(b) => whole.push(b.to_vec()),
                _ => other += 1,
            });
        }
        (passed, whole, other)
    }

    const SUB: &[u8] = &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x01];
    const PUB: &[u8] = &[0x30, 0x04, 0x00, 0x01, b't', b'x'];
    const PING: &[u8] = &[0xC0, 0x00];

    #[test]
    fn reports_packets_of_interest_whole_at_every_split() {
        let stream: Vec<u8> = [PUB, SUB, PING, SUB, PUB].concat();
        for a in 0..=stream.len() {
            for b in a..=stream.len() {
                let mut s = Scanner::new(&[8], 64);
                let (passed, whole, other) =
                    scan_all(&mut s, &[&stream[..a], &stream[a..b], &stream[b..]]);
                assert_eq!(passed, [PUB, PING, PUB].concat(), "split {a} {b}");
                assert_eq!(whole, vec![SUB.to_vec(), SUB.to_vec()]);
                assert_eq!(other, 0);
                assert!(s.at_boundary());
            }
        }
    }

    #[test]
    fn oversized_packets_of_interest_pass() {
        let mut s = Scanner::new(&[8], 4);
        let (passed, whole, other) = scan_all(&mut s, &[&SUB[..3], &SUB[3..]]);
        assert_eq!(passed, SUB);
        assert!(whole.is_empty());
        assert_eq!(other, 1);
    }

    #[test]
    fn a_five_byte_length_loses_framing_and_passes_the_rest() {
        let bad = [0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x02];
        for cut in 0..bad.len() {
            let mut s = Scanner::new(&[8], 64);
            let (passed, whole, other) = scan_all(&mut s, &[&bad[..cut], &bad[cut..]]);
            assert_eq!(passed, bad);
            assert!(whole.is_empty());
            assert_eq!(other, 1);
        }
    }

    #[test]
    fn held_is_what_was_not_reported() {
        let mut s = Scanner::new(&[8], 64);
        let (passed, _, _) = scan_all(&mut s, &[&[PUB, &SUB[..4]].concat()]);
        assert_eq!(passed, PUB);
        assert_eq!(s.held(), &SUB[..4]);
        let mut s = Scanner::new(&[8], 64);
        scan_all(&mut s, &[&SUB[..1]]);
        assert_eq!(s.held(), &SUB[..1]);
    }
}
