//! RFC 6455 frame headers: a pure parser for what clients send and an encoder for what
//! mqgate sends. No I/O and no allocation; payloads never pass through here (the
//! stream adapter, [`super::stream`], unmasks them in the reader's own buffer).

/// Opcodes (RFC 6455 section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(b: u8) -> Option<Opcode> {
        Some(match b {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    pub fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A client frame's header, validated as far as it can be alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: Opcode,
    /// Declared payload length (less than 2^63: the top bit must be clear).
    pub len: u64,
    pub mask: [u8; 4],
    /// Bytes the header took.
    pub header_len: usize,
}

/// The longest header: 2 bytes, 8 of extended length, 4 of mask.
pub const MAX_HEADER: usize = 14;
/// Control frames carry at most this many payload bytes (RFC 6455 section 5.5).
pub const MAX_CONTROL: u64 = 125;

/// Why a client frame header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved bits set (no extension was negotiated)")]
    Reserved,
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    #[error("text frame (MQTT is carried in binary frames)")]
    Text,
    #[error("unmasked client frame")]
    Unmasked,
    #[error("fragmented or oversized control frame")]
    Control,
    #[error("payload length not minimally encoded")]
    Length,
    #[error("payload length with the top bit set (2^63 bytes or more)")]
    TooLong,
}

/// Parse a client frame header from the start of `b`: `Ok(None)` when more bytes are
/// needed (at most [`MAX_HEADER`] are ever needed).
pub fn parse_header(b: &[u8]) -> Result<Option<Header>, FrameError> {
    let (&b0, rest) = match b.split_first() {
        Some(x) => x,
        None => return Ok(None),
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::Opcode(b0 & 0x0F))?;
    if opcode == Opcode::Text {
        return Err(FrameError::Text);
    }
    let fin = b0 & 0x80 != 0;
    let Some(&b1) = rest.first() else {
        return Ok(None);
    };
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let short = u64::from(b1 & 0x7F);
    if opcode.is_control() && (!fin || short > MAX_CONTROL) {
        return Err(FrameError::Control);
    }
    let (len, ext) = match short {
        126 => {
            let Some(x) = b.get(2..4) else {
                return Ok(None);
            };
            let n = u64::from(u16::from_be_bytes([x[0], x[1]]));
            if n < 126 {
                return Err(FrameError::Length);
            }
            (n, 2)
        }
        127 => {
            let Some(x) = b.get(2..10) else {
                return Ok(None);
            };
            let mut a = [0u8; 8];
            a.copy_from_slice(x);
            let n = u64::from_be_bytes(a);
            if n >> 63 != 0 {
                return Err(FrameError::TooLong);
            }
            if n <= u64::from(u16::MAX) {
                return Err(FrameError::Length);
            }
            (n, 8)
        }
        n => (n, 0),
    };
    let m = 2 + ext;
    let Some(mask) = b.get(m..m + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        opcode,
        len,
        mask: [mask[0], mask[1], mask[2], mask[3]],
        header_len: m + 4,
    }))
}

/// The header of an unmasked server frame (FIN set) carrying `len` bytes: the bytes
/// are in `out[..n]`, `n` returned.
pub fn encode_header(opcode: Opcode, len: u64, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | opcode.bits();
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= u64::from(u16::MAX) {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&len.to_be_bytes());
        10
    }
}

/// XOR `data` with `mask`, `offset` being the position of `data[0]` in the payload.
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let mut rot = [0u8; 4];
    for (i, r) in rot.iter_mut().enumerate() {
        *r = mask[(offset as usize + i) % 4];
    }
    let word = u32::from_ne_bytes(rot);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= rot[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(b0: u8, len: usize) -> Vec<u8> {
        let mut v = vec![b0];
        if len < 126 {
            v.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            v.push(0x80 | 126);
            v.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            v.push(0x80 | 127);
            v.extend_from_slice(&(len as u64).to_be_bytes());
        }
        v.extend_from_slice(&[1, 2, 3, 4]);
        v
    }

    #[test]
    fn parses_the_three_length_forms_and_needs_more_on_short_input() {
        for len in [0usize, 125, 126, 65535, 65536, 1 << 20] {
            let h = masked(0x82, len);
            for cut in 0..h.len() {
                assert_eq!(parse_header(&h[..cut]), Ok(None), "len {len} cut {cut}");
            }
            let p = parse_header(&h).unwrap().unwrap();
            assert_eq!(
                (p.len, p.header_len, p.mask),
                (len as u64, h.len(), [1, 2, 3, 4])
            );
            assert!(p.fin && p.opcode == Opcode::Binary);
        }
    }

    #[test]
    fn refuses_what_rfc_6455_forbids() {
        assert_eq!(parse_header(&[0x81, 0x80]), Err(FrameError::Text));
        assert_eq!(parse_header(&[0x82, 0x05]), Err(FrameError::Unmasked));
        assert_eq!(parse_header(&[0xC2, 0x80]), Err(FrameError::Reserved));
        assert_eq!(parse_header(&[0x83, 0x80]), Err(FrameError::Opcode(3)));
        assert_eq!(parse_header(&[0x09, 0x80]), Err(FrameError::Control));
        assert_eq!(parse_header(&[0x89, 0xFE]), Err(FrameError::Control));
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(parse_header(&huge), Err(FrameError::TooLong));
        assert_eq!(parse_header(&[0x82, 0xFE, 0, 5]), Err(FrameError::Length));
    }

    #[test]
    fn encodes_server_headers() {
        let mut out = [0u8; 10];
        let n = encode_header(Opcode::Binary, 5, &mut out);
        assert_eq!(&out[..n], &[0x82, 5]);
        let n = encode_header(Opcode::Binary, 300, &mut out);
        assert_eq!(&out[..n], &[0x82, 126, 1, 44]);
        let n = encode_header(Opcode::Close, 70_000, &mut out);
        assert_eq!(&out[..n], &[0x88, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn unmasking_at_any_offset_matches_the_byte_rule() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let plain: Vec<u8> = (0..37u8).collect();
        for split in 0..plain.len() {
            let mut d = plain.clone();
            let (a, b) = d.split_at_mut(split);
            unmask(a, mask, 0);
            unmask(b, mask, split as u64);
            let want: Vec<u8> = plain
                .iter()
                .enumerate()
                .map(|(i, x)| x ^ mask[i % 4])
                .collect();
            assert_eq!(d, want);
        }
    }
}
