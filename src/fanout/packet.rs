//! The few packet views and encoders a fan-out session needs beyond
//! [`crate::mqtt::subscribe`]: where a PUBLISH's packet identifier sits (to rewrite
//! it in place), whether a v5 PUBLISH carries a Topic Alias, the identifier of the
//! four acknowledgements, topic filter matching, and the acknowledgements mqgate
//! writes itself. Pure: no I/O, no panic on any input.

/// Packet types (the high nibble of byte 0).
pub const CONNECT: u8 = 1;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const UNSUBSCRIBE: u8 = 10;
pub const UNSUBACK: u8 = 11;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

pub const PINGREQ_BYTES: [u8; 2] = [0xC0, 0x00];
pub const PINGRESP_BYTES: [u8; 2] = [0xD0, 0x00];
/// DISCONNECT, normal (MQTT 3.x and 5 alike).
pub const DISCONNECT_BYTES: [u8; 2] = [0xE0, 0x00];

/// Offset of the variable header (after the fixed header) of a complete packet.
fn body_start(p: &[u8]) -> Option<usize> {
    p.iter()
        .take(5)
        .skip(1)
        .position(|b| b & 0x80 == 0)
        .map(|i| i + 2)
}

/// What a session needs to know of a PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    pub qos: u8,
    pub topic: &'a str,
    /// Offset of the packet identifier (QoS 1/2), for [`set_id`].
    pub id_at: Option<usize>,
    pub id: u16,
    /// v5: the PUBLISH carries a Topic Alias property.
    pub alias: bool,
}

/// A complete PUBLISH, read as far as a session needs. `None`: malformed (QoS 3, a
/// topic or property block past the end, identifier 0, bad UTF-8).
pub fn publish(p: &[u8], v5: bool) -> Option<Publish<'_>> {
    let b0 = *p.first()?;
    if b0 >> 4 != PUBLISH {
        return None;
    }
    let qos = (b0 >> 1) & 0x03;
    if qos == 3 {
        return None;
    }
    let mut at = body_start(p)?;
    let tlen = usize::from(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]));
    let topic = std::str::from_utf8(p.get(at + 2..at + 2 + tlen)?).ok()?;
    at += 2 + tlen;
    let (id_at, id) = if qos > 0 {
        let id = u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]);
        if id == 0 {
            return None;
        }
        at += 2;
        (Some(at - 2), id)
    } else {
        (None, 0)
    };
    let alias = if v5 { has_alias(p.get(at..)?)? } else { false };
    Some(Publish {
        qos,
        topic,
        id_at,
        id,
        alias,
    })
}

/// Walk a PUBLISH property block (at the start of `b`); `Some(true)` when it holds a
/// Topic Alias (0x23). `None`: malformed.
fn has_alias(b: &[u8]) -> Option<bool> {
    let (len, n) = varint(b)?;
    let mut r = b.get(n..n + len)?;
    let mut alias = false;
    while let Some((&id, rest)) = r.split_first() {
        let skip = match id {
            0x01 => 1,
            0x02 => 4,
            0x23 => {
                alias = true;
                2
            }
            0x03 | 0x08 | 0x09 => {
                2 + usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]))
            }
            0x0B => varint(rest)?.1,
            0x26 => {
                let k = 2 + usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
                let v = rest.get(k..)?;
                k + 2 + usize::from(u16::from_be_bytes([*v.first()?, *v.get(1)?]))
            }
            _ => return None,
        };
        r = rest.get(skip..)?;
    }
    Some(alias)
}

fn varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut v = 0usize;
    for i in 0..4 {
        let x = *b.get(i)?;
        v |= usize::from(x & 0x7F) << (7 * i);
        if x & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Overwrite the packet identifier at `at` (from [`publish`] or 2 for short acks).
pub fn set_id(p: &mut [u8], at: usize, id: u16) {
    if let Some(s) = p.get_mut(at..at + 2) {
        s.copy_from_slice(&id.to_be_bytes());
    }
}

/// The packet identifier of a PUBACK/PUBREC/PUBREL/PUBCOMP/SUBACK/UNSUBACK/SUBSCRIBE/
/// UNSUBSCRIBE and where it sits.
pub fn ack_id(p: &[u8]) -> Option<(u16, usize)> {
    let at = body_start(p)?;
    let id = u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]);
    Some((id, at))
}

/// The v5 reason code of an acknowledgement (0 when absent, as MQTT 5 says).
pub fn ack_reason(p: &[u8], v5: bool) -> u8 {
    if !v5 {
        return 0;
    }
    body_start(p)
        .and_then(|at| p.get(at + 2).copied())
        .unwrap_or(0)
}

/// The reason code of a DISCONNECT (0 when absent: MQTT 3.x, or v5 "normal").
pub fn disconnect_reason(p: &[u8]) -> u8 {
    body_start(p).and_then(|at| p.get(at).copied()).unwrap_or(0)
}

/// A PUBACK/PUBREC/PUBREL/PUBCOMP of `kind` written by mqgate: v5 with a reason code
/// when it is not 0.
pub fn ack(kind: u8, id: u16, v5: bool, reason: u8) -> Vec<u8> {
    let b0 = (kind << 4) | if kind == PUBREL { 0x02 } else { 0 };
    let [hi, lo] = id.to_be_bytes();
    if v5 && reason != 0 {
        vec![b0, 3, hi, lo, reason]
    } else {
        vec![b0, 2, hi, lo]
    }
}

/// Does `topic` match the topic filter `filter` (`+`, `#`; `$` topics only by filters
/// that name their first level)?
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pub_packet(qos: u8, topic: &str, id: u16, props: Option<&[u8]>) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&id.to_be_bytes());
        }
        if let Some(p) = props {
            body.push(p.len() as u8);
            body.extend_from_slice(p);
        }
        body.extend_from_slice(b"payload");
        let mut out = vec![0x30 | (qos << 1), body.len() as u8];
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn disconnect_reasons() {
        assert_eq!(disconnect_reason(&[0xE0, 0x02, 0x8E, 0x00]), 0x8E);
        assert_eq!(disconnect_reason(&[0xE0, 0x01, 0x8E]), 0x8E);
        // MQTT 3.x, or v5 "normal" with no reason byte.
        assert_eq!(disconnect_reason(&DISCONNECT_BYTES), 0);
        assert_eq!(disconnect_reason(&[0xE0]), 0);
    }

    #[test]
    fn publish_views_and_id_rewrite() {
        let mut p = pub_packet(1, "t/a", 7, None);
        let v = publish(&p, false).expect("view");
        assert_eq!((v.qos, v.topic, v.id, v.alias), (1, "t/a", 7, false));
        let at = v.id_at.expect("id");
        set_id(&mut p, at, 4242);
        assert_eq!(publish(&p, false).map(|v| v.id), Some(4242));
        let q0 = pub_packet(0, "x", 0, None);
        assert_eq!(publish(&q0, false).map(|v| v.id_at), Some(None));
        assert!(
            publish(&pub_packet(1, "t", 0, None), false).is_none(),
            "id 0"
        );
        assert!(publish(&[0x36, 0x00], false).is_none(), "QoS 3");
        assert!(
            publish(&[0x32, 0x03, 0x00, 0x09, b'a'], false).is_none(),
            "cut short"
        );
    }

    #[test]
    fn v5_topic_alias_found_among_other_properties() {
        let with = pub_packet(1, "t", 1, Some(&[0x01, 0x01, 0x23, 0x00, 0x05]));
        assert_eq!(publish(&with, true).map(|v| v.alias), Some(true));
        let user = [0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v'];
        let without = pub_packet(2, "t", 1, Some(&user));
        assert_eq!(publish(&without, true).map(|v| v.alias), Some(false));
        let bad = pub_packet(0, "t", 0, Some(&[0x7F]));
        assert!(publish(&bad, true).is_none());
    }

    #[test]
    fn acks() {
        assert_eq!(ack(PUBACK, 0x0102, false, 0x80), vec![0x40, 2, 1, 2]);
        assert_eq!(ack(PUBREL, 5, true, 0x92), vec![0x62, 3, 0, 5, 0x92]);
        assert_eq!(ack_id(&[0x50, 2, 0, 9]), Some((9, 2)));
        assert_eq!(ack_reason(&[0x40, 3, 0, 9, 0x10], true), 0x10);
        assert_eq!(ack_reason(&[0x40, 2, 0, 9], true), 0);
        assert_eq!(ack_id(&[0x40, 1]), None);
    }

    #[test]
    fn filters() {
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(topic_matches("cmd/x", "cmd/x"));
        assert!(!topic_matches("cmd/x", "cmd/y"));
    }
}
