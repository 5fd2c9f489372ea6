//! Byte-level primitives shared by the CONNECT and CONNACK views.
//!
//! Everything that touches raw offsets lives here: the fixed header's Remaining
//! Length (a Variable Byte Integer) and a cursor whose every read is checked against
//! the end of its slice. The packet views above it never index a slice themselves,
//! so a lying length field can only ever produce an error, not a panic or an
//! out-of-bounds read.

use super::error::ConnectError;

/// Reason for any field whose declared length runs past the end of the packet.
pub(crate) const PAST_END: &str = "length past end";

/// Outcome of decoding the fixed header at the start of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// `header_len` = 1 type byte + 1..=4 length bytes; `remaining` = bytes after it.
    Complete { header_len: usize, remaining: usize },
    /// The buffer ends inside the fixed header.
    Incomplete,
    /// The Remaining Length has a continuation bit on its 4th byte (a 5th byte).
    TooLong,
}

impl Header {
    /// Decode the fixed header at the start of `buf` (byte 0 is not inspected).
    pub(crate) fn read(buf: &[u8]) -> Header {
        match buf.get(1..) {
            None => Header::Incomplete,
            Some(rest) => match varint(rest) {
                Varint::Complete { value, len } => Header::Complete {
                    header_len: 1 + len,
                    remaining: value,
                },
                Varint::Incomplete => Header::Incomplete,
                Varint::TooLong => Header::TooLong,
            },
        }
    }
}

/// Outcome of decoding a Variable Byte Integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Varint {
    Complete { value: usize, len: usize },
    Incomplete,
    TooLong,
}

/// Decode an MQTT Variable Byte Integer (at most 4 bytes, value < 2^28) at the start
/// of `buf`. Non-minimal encodings (e.g. `0x80 0x00`) are accepted, as Mosquitto does.
pub(crate) fn varint(buf: &[u8]) -> Varint {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(i) else {
            return Varint::Incomplete;
        };
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Varint::Complete { value, len: i + 1 };
        }
    }
    Varint::TooLong
}

/// Append `value` (< 2^28) as a Variable Byte Integer. Encoder side only.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    loop {
        // `value % 128` always fits in a byte.
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            break;
        }
    }
}

/// Validate an MQTT UTF-8 Encoded String: well-formed UTF-8 (which already excludes
/// the surrogates U+D800..U+DFFF) and no U+0000. `bad` is the error reason.
pub(crate) fn mqtt_str<'a>(bytes: &'a [u8], bad: &'static str) -> Result<&'a str, ConnectError> {
    // In UTF-8 the byte 0x00 only ever encodes U+0000.
    if bytes.contains(&0) {
        return Err(ConnectError::Malformed(bad));
    }
    std::str::from_utf8(bytes).map_err(|_| ConnectError::Malformed(bad))
}

/// A bounds-checked cursor over borrowed bytes.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Everything not read yet.
    pub(crate) fn rest(self) -> &'a [u8] {
        self.buf
    }

    /// The next `n` bytes, or `Malformed("length past end")`.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], ConnectError> {
        if n > self.buf.len() {
            return Err(ConnectError::Malformed(PAST_END));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ConnectError> {
        self.take(N)?
            .try_into()
            .map_err(|_| ConnectError::Malformed(PAST_END))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ConnectError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, ConnectError> {
        self.array::<2>().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ConnectError> {
        self.array::<4>().map(u32::from_be_bytes)
    }

    /// A Variable Byte Integer inside the packet (v5 property lengths and values).
    pub(crate) fn varint(&mut self) -> Result<usize, ConnectError> {
        match varint(self.buf) {
            Varint::Complete { value, len } => {
                self.take(len)?;
                Ok(value)
            }
            Varint::Incomplete => Err(ConnectError::Malformed(PAST_END)),
            Varint::TooLong => Err(ConnectError::Malformed("variable byte integer too long")),
        }
    }

    /// Binary Data: a big-endian u16 length, then that many bytes.
    pub(crate) fn binary(&mut self) -> Result<&'a [u8], ConnectError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 Encoded String; `bad` is the reason given if it is not valid.
    pub(crate) fn utf8(&mut self, bad: &'static str) -> Result<&'a str, ConnectError> {
        let bytes = self.binary()?;
        mqtt_str(bytes, bad)
    }

    /// Split off the next `n` bytes as their own reader.
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader<'a>, ConnectError> {
        self.take(n).map(Reader::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries() {
        for value in [
            0usize,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(
                varint(&out),
                Varint::Complete {
                    value,
                    len: out.len()
                }
            );
            for cut in 0..out.len() {
                assert_eq!(varint(&out[..cut]), Varint::Incomplete);
            }
        }
        assert_eq!(varint(&[0xFF, 0xFF, 0xFF, 0xFF]), Varint::TooLong);
        assert_eq!(varint(&[0x80, 0x00]), Varint::Complete { value: 0, len: 2 });
    }

    #[test]
    fn reader_never_reads_past_end() {
        let mut r = Reader::new(&[0x00, 0x05, b'a', b'b']);
        assert_eq!(r.clone().binary(), Err(ConnectError::Malformed(PAST_END)));
        assert_eq!(r.u16(), Ok(5));
        assert_eq!(r.u32(), Err(ConnectError::Malformed(PAST_END)));
        assert_eq!(r.take(usize::MAX), Err(ConnectError::Malformed(PAST_END)));
        assert_eq!(r.take(2), Ok(&b"ab"[..]));
        assert!(r.is_empty());
        assert_eq!(r.u8(), Err(ConnectError::Malformed(PAST_END)));
        assert_eq!(r.varint(), Err(ConnectError::Malformed(PAST_END)));
    }

    #[test]
    fn mqtt_strings_reject_nul_and_bad_utf8() {
        assert_eq!(mqtt_str("héllo".as_bytes(), "x"), Ok("héllo"));
        assert_eq!(mqtt_str(b"a\0b", "x"), Err(ConnectError::Malformed("x")));
        assert_eq!(
            mqtt_str(&[0xC3, 0x28], "x"),
            Err(ConnectError::Malformed("x"))
        );
        // CESU-style encoded surrogate U+D800
        assert_eq!(
            mqtt_str(&[0xED, 0xA0, 0x80], "x"),
            Err(ConnectError::Malformed("x"))
        );
    }
}
