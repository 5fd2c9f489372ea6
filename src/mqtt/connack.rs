//! The broker's CONNACK, seen in passing, and the CONNACKs mqgate sends itself.
//!
//! While relaying, mqgate looks at the broker's first packet without changing it to
//! count return codes and CONNECT→CONNACK latency per node (SPEC section 3, step 5):
//! [`observe_connack`] answers as soon as the return code is readable, without
//! waiting for the v5 properties. When mqgate refuses a client itself (unsupported
//! protocol, busy, no node) it answers with [`connack_reply`]. The health check
//! closes its session politely with [`CONNECT_DISCONNECT`].

use super::wire::Header;
use super::Parse;

/// What the broker answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnackInfo {
    /// Return code (v3.x) or reason code (v5); 0 = accepted.
    pub code: u8,
    pub session_present: bool,
    /// Total packet length (fixed header + remaining length).
    pub len: usize,
}

/// Packet type CONNACK, with the fixed-header flags that must be zero.
const CONNACK_BYTE: u8 = 0x20;

/// Observe the broker's first packet at the start of `buf`.
///
/// `Ok(Complete(info))` once the fixed header and the 2 bytes of variable header
/// (acknowledge flags, return code) are there — v5 properties need not have arrived
/// yet; `info.len` is computed from the Remaining Length. `Ok(Incomplete)` before
/// that. `Err(())` if it is not a CONNACK (byte 0 != 0x20) or is malformed (5-byte
/// Remaining Length, Remaining Length < 2, reserved acknowledge flags set).
///
/// There is nothing to report beyond "not a CONNACK": the caller just stops
/// observing and keeps relaying, so the error carries no data.
#[allow(clippy::result_unit_err)]
pub fn observe_connack(buf: &[u8]) -> Result<Parse<ConnackInfo>, ()> {
    match buf.first() {
        None => return Ok(Parse::Incomplete),
        Some(&CONNACK_BYTE) => {}
        Some(_) => return Err(()),
    }
    let (header_len, remaining) = match Header::read(buf) {
        Header::Complete {
            header_len,
            remaining,
        } => (header_len, remaining),
        Header::Incomplete => return Ok(Parse::Incomplete),
        Header::TooLong => return Err(()),
    };
    if remaining < 2 {
        return Err(());
    }
    let Some(&[ack_flags, code]) = buf.get(header_len..header_len + 2) else {
        return Ok(Parse::Incomplete);
    };
    // Bits 7..1 of the Connect Acknowledge Flags are reserved and must be 0.
    if ack_flags & 0xFE != 0 {
        return Err(());
    }
    Ok(Parse::Complete(ConnackInfo {
        code,
        session_present: ack_flags & 0x01 != 0,
        len: header_len + remaining,
    }))
}

/// The CONNACK mqgate sends itself, refusing a client with `code`
/// (session present 0): v3.x `[0x20, 0x02, 0x00, code]`, v5
/// `[0x20, 0x03, 0x00, code, 0x00]` (empty property block).
/// Returns the bytes and how many of them to send: `&reply.0[..reply.1]`.
pub fn connack_reply(v5: bool, code: u8) -> ([u8; 5], usize) {
    if v5 {
        ([CONNACK_BYTE, 0x03, 0x00, code, 0x00], 5)
    } else {
        ([CONNACK_BYTE, 0x02, 0x00, code, 0x00], 4)
    }
}

/// An MQTT 5 CONNACK refusing a client with `code` and a reason string property
/// (0x1F), for people reading a client's log. `reason` is cut to 100 bytes (at a
/// character boundary) so that every length fits one byte.
pub fn connack_reply_v5_with_reason(code: u8, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(100);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let props = 3 + reason.len();
    let mut out = Vec::with_capacity(5 + props);
    out.extend_from_slice(&[CONNACK_BYTE, (3 + props) as u8, 0x00, code, props as u8]);
    out.push(0x1F);
    out.extend_from_slice(&(reason.len() as u16).to_be_bytes());
    out.extend_from_slice(reason);
    out
}

/// The CONNACK "server unavailable" mqgate sends itself: return code 0x03 (3.x), or
/// reason code 0x88 with `reason` as its reason string (MQTT 5).
pub fn unavailable_reply(v5: bool, reason: &str) -> Vec<u8> {
    if v5 {
        connack_reply_v5_with_reason(0x88, reason)
    } else {
        let (b, n) = connack_reply(false, 0x03);
        b[..n].to_vec()
    }
}

/// A DISCONNECT packet (v3.x; also valid v5, reason "normal disconnection").
pub const CONNECT_DISCONNECT: [u8; 2] = [0xE0, 0x00];

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed every prefix of `packet`: Incomplete until `ready` bytes, then `want`.
    fn split_everywhere(packet: &[u8], ready: usize, want: ConnackInfo) {
        for n in 0..=packet.len() {
            let got = observe_connack(&packet[..n]);
            if n < ready {
                assert_eq!(got, Ok(Parse::Incomplete), "{n} bytes");
            } else {
                assert_eq!(got, Ok(Parse::Complete(want)), "{n} bytes");
            }
        }
    }

    #[test]
    fn v5_refusal_with_reason_string_is_read_back_by_the_observer() {
        let p = connack_reply_v5_with_reason(0x88, "no broker node available");
        assert_eq!(p[1] as usize, p.len() - 2, "remaining length");
        assert_eq!(&p[5..8], &[0x1F, 0x00, 24]);
        assert_eq!(&p[8..], b"no broker node available");
        let got = observe_connack(&p);
        assert!(
            matches!(got, Ok(Parse::Complete(ConnackInfo { code: 0x88, .. }))),
            "{got:?}"
        );
        let long = "é".repeat(80);
        let p = connack_reply_v5_with_reason(0x88, &long);
        assert_eq!(p[7], 100, "cut to 100 bytes at a character boundary");
        assert!(std::str::from_utf8(&p[8..]).is_ok());
    }

    #[test]
    fn v3_accepted_split_at_each_byte() {
        let p = [0x20, 0x02, 0x00, 0x00];
        let want = ConnackInfo {
            code: 0,
            session_present: false,
            len: 4,
        };
        split_everywhere(&p, 4, want);
    }

    #[test]
    fn v3_refused_and_session_present() {
        for (p, code, sp) in [
            ([0x20, 0x02, 0x01, 0x00], 0, true),
            ([0x20, 0x02, 0x00, 0x05], 5, false),
        ] {
            let want = ConnackInfo {
                code,
                session_present: sp,
                len: 4,
            };
            split_everywhere(&p, 4, want);
        }
    }

    #[test]
    fn followed_by_other_packets() {
        // CONNACK, then a PUBLISH already in the same read
        let p = [0x20, 0x02, 0x01, 0x00, 0x30, 0x03, 0x00, 0x01, b't'];
        assert_eq!(
            observe_connack(&p),
            Ok(Parse::Complete(ConnackInfo {
                code: 0,
                session_present: true,
                len: 4
            }))
        );
    }

    #[test]
    fn v5_with_properties_split_at_each_byte() {
        // session present, reason 0, properties: receive maximum, assigned client id
        let mut p = vec![0x20, 0x00, 0x01, 0x00];
        let props = [0x21, 0x00, 0x0A, 0x12, 0x00, 0x03, b'a', b'b', b'c'];
        p.push(u8::try_from(props.len()).unwrap());
        p.extend_from_slice(&props);
        p[1] = u8::try_from(p.len() - 2).unwrap();
        let want = ConnackInfo {
            code: 0,
            session_present: true,
            len: p.len(),
        };
        // complete from 4 bytes on: properties are not waited for
        split_everywhere(&p, 4, want);
    }

    #[test]
    fn v5_two_byte_remaining_length() {
        // reason 0x87 (not authorized), 200 bytes of reason string
        let mut props = vec![0x1F, 0x00, 200];
        props.extend_from_slice(&[b'r'; 200]);
        let mut p = vec![0x20];
        let remaining = 2 + 2 + props.len(); // flags, code, 2-byte property length
        p.extend_from_slice(&[0x80 | (remaining % 128) as u8, (remaining / 128) as u8]);
        p.extend_from_slice(&[0x00, 0x87]);
        p.extend_from_slice(&[0x80 | (props.len() % 128) as u8, (props.len() / 128) as u8]);
        p.extend_from_slice(&props);
        assert_eq!(p.len(), 3 + remaining);
        let want = ConnackInfo {
            code: 0x87,
            session_present: false,
            len: p.len(),
        };
        split_everywhere(&p, 5, want);
    }

    #[test]
    fn not_a_connack() {
        let cases: &[&[u8]] = &[
            &[0x10, 0x02, 0x00, 0x00],   // CONNECT
            &[0x21, 0x02, 0x00, 0x00],   // CONNACK type with flags
            &[0x30, 0x02, 0x00, 0x00],   // PUBLISH
            &[0xE0, 0x00],               // DISCONNECT
            b"HTTP/1.1 400 Bad Request", // not MQTT
            &[0x20, 0x01, 0x00],         // remaining length too short
            &[0x20, 0x00],
            &[0x20, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], // 5-byte remaining length
            &[0x20, 0x02, 0x02, 0x00],             // reserved acknowledge flag
            &[0x20, 0x02, 0x80, 0x00],
        ];
        for p in cases {
            assert_eq!(observe_connack(p), Err(()), "{p:02x?}");
        }
        assert_eq!(observe_connack(&[0x21]), Err(()));
        assert_eq!(observe_connack(&[]), Ok(Parse::Incomplete));
    }

    #[test]
    fn replies() {
        let (bytes, len) = connack_reply(false, 0x01);
        assert_eq!(&bytes[..len], &[0x20, 0x02, 0x00, 0x01]);
        let (bytes, len) = connack_reply(true, 0x89);
        assert_eq!(&bytes[..len], &[0x20, 0x03, 0x00, 0x89, 0x00]);
        for v5 in [false, true] {
            for code in [0x00, 0x01, 0x03, 0x88, 0x89] {
                let (bytes, len) = connack_reply(v5, code);
                assert_eq!(
                    observe_connack(&bytes[..len]),
                    Ok(Parse::Complete(ConnackInfo {
                        code,
                        session_present: false,
                        len
                    }))
                );
            }
        }
        assert_eq!(CONNECT_DISCONNECT, [0xE0, 0x00]);
    }
}
