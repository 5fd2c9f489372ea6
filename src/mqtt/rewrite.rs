//! Re-encode a CONNECT with another client id and/or username (client-certificate
//! identity, `crate::identity`). Everything else — protocol name and level, flags,
//! keep alive, v5 properties, will, password — is copied byte for byte; the field
//! lengths and the remaining length are re-encoded. MQTT 3.1, 3.1.1 and 5.0 alike.
//!
//! Pure: works on the packet and the view [`super::parse_connect`] made of it.

use super::connect::Connect;
use super::wire::put_varint;

/// Largest remaining length of an MQTT packet.
const MAX_REMAINING: usize = 268_435_455;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error("a new {0} of {1} bytes does not fit a CONNECT field (at most 65535)")]
    FieldTooLong(&'static str, usize),
    #[error("the rewritten CONNECT would be larger than an MQTT packet can be")]
    PacketTooLarge,
    #[error("the CONNECT view does not belong to this packet")]
    NotThisPacket,
}

/// Byte offset of `part` inside `whole`, if it lies there.
fn offset(whole: &[u8], part: &[u8]) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (start + part.len() <= whole.len()).then_some(start)
}

fn put_field(out: &mut Vec<u8>, what: &'static str, v: &[u8]) -> Result<(), RewriteError> {
    let len = u16::try_from(v.len()).map_err(|_| RewriteError::FieldTooLong(what, v.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(v);
    Ok(())
}

/// `packet` (exactly the CONNECT, as parsed into `c`) with its client id replaced by
/// `client_id` and its username by `username` (`None`: keep the field as it is). A
/// username the CONNECT did not carry is added, with the username flag set.
pub fn rewrite_connect(
    packet: &[u8],
    c: &Connect<'_>,
    client_id: Option<&str>,
    username: Option<&str>,
) -> Result<Vec<u8>, RewriteError> {
    let id_at = offset(packet, c.client_id.as_bytes()).ok_or(RewriteError::NotThisPacket)?;
    // The variable header (and v5 properties) run up to the client id's length prefix.
    let body_start = fixed_header_len(packet).ok_or(RewriteError::NotThisPacket)?;
    let id_prefix = id_at.checked_sub(2).ok_or(RewriteError::NotThisPacket)?;
    // The connect flags byte: after the protocol name (2 + len) and the level.
    let name_len = usize::from(u16::from_be_bytes([
        *packet.get(body_start).ok_or(RewriteError::NotThisPacket)?,
        *packet
            .get(body_start + 1)
            .ok_or(RewriteError::NotThisPacket)?,
    ]));
    let flags_at = body_start + 2 + name_len + 1;
    if flags_at >= id_prefix {
        return Err(RewriteError::NotThisPacket);
    }
    let id_end = id_at + c.client_id.len();
    // Where the username is, or goes: before the password, else at the end.
    let (user_start, user_end) = match c.username {
        Some(u) => {
            let at = offset(packet, u.as_bytes()).ok_or(RewriteError::NotThisPacket)?;
            (at - 2, at + u.len())
        }
        None => {
            let at = match c.password {
                Some(p) => offset(packet, p).ok_or(RewriteError::NotThisPacket)? - 2,
                None => packet.len(),
            };
            (at, at)
        }
    };
    if user_start < id_end {
        return Err(RewriteError::NotThisPacket);
    }

    let mut body = Vec::with_capacity(packet.len() + 64);
    body.extend_from_slice(&packet[body_start..id_prefix]);
    match client_id {
        Some(id) => put_field(&mut body, "client id", id.as_bytes())?,
        None => body.extend_from_slice(&packet[id_prefix..id_end]),
    }
    body.extend_from_slice(&packet[id_end..user_start]); // the will, if any
    match (username, c.username) {
        (Some(u), _) => {
            put_field(&mut body, "username", u.as_bytes())?;
            body[flags_at - body_start] |= 0x80;
        }
        (None, _) => body.extend_from_slice(&packet[user_start..user_end]),
    }
    body.extend_from_slice(&packet[user_end..]); // the password, if any
    if body.len() > MAX_REMAINING {
        return Err(RewriteError::PacketTooLarge);
    }
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(packet[0]);
    put_varint(&mut out, body.len());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Length of the fixed header (type byte and remaining length) of a framed packet.
fn fixed_header_len(packet: &[u8]) -> Option<usize> {
    for i in 1..=4 {
        if packet.get(i)? & 0x80 == 0 {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::parse_connect;

    fn s(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }

    fn packet(name: &[u8], level: u8, flags: u8, props: Option<&[u8]>, rest: &[&[u8]]) -> Vec<u8> {
        let mut body = s(name);
        body.push(level);
        body.push(flags);
        body.extend_from_slice(&[0, 60]);
        if let Some(p) = props {
            body.extend_from_slice(p);
        }
        for r in rest {
            body.extend_from_slice(r);
        }
        let mut out = vec![0x10];
        put_varint(&mut out, body.len());
        out.extend(body);
        out
    }

    #[test]
    fn username_replaced_keeps_will_and_password_v311() {
        let p = packet(
            b"MQTT",
            4,
            0x80 | 0x40 | 0x04,
            None,
            &[&s(b"c1"), &s(b"wt"), &s(b"wp"), &s(b"dev2"), &s(b"pw")],
        );
        let c = parse_connect(&p).unwrap();
        let out = rewrite_connect(&p, &c, None, Some("device-number-1")).unwrap();
        let n = parse_connect(&out).unwrap();
        assert_eq!(n.username, Some("device-number-1"));
        assert_eq!(n.client_id, "c1");
        assert_eq!(n.password, Some(&b"pw"[..]));
        assert_eq!(n.will.unwrap().topic, "wt");
    }

    #[test]
    fn username_added_before_password_v5_and_at_end_v31() {
        // v5 allows a password without a username.
        let p = packet(
            b"MQTT",
            5,
            0x40 | 0x02,
            Some(&[5, 0x11, 0, 0, 0, 9]),
            &[&s(b"id"), &s(b"pw")],
        );
        let c = parse_connect(&p).unwrap();
        let out = rewrite_connect(&p, &c, Some("dev1"), Some("dev1")).unwrap();
        let n = parse_connect(&out).unwrap();
        assert_eq!((n.client_id, n.username), ("dev1", Some("dev1")));
        assert_eq!(n.password, Some(&b"pw"[..]));
        assert_eq!(n.session_expiry, Some(9));
        let p = packet(b"MQIsdp", 3, 0x02, None, &[&s(b"old")]);
        let c = parse_connect(&p).unwrap();
        let out = rewrite_connect(&p, &c, None, Some("dev1")).unwrap();
        let n = parse_connect(&out).unwrap();
        assert_eq!((n.client_id, n.username), ("old", Some("dev1")));
    }

    #[test]
    fn long_values_grow_the_remaining_length() {
        let p = packet(b"MQTT", 4, 0x02, None, &[&s(b"x")]);
        let c = parse_connect(&p).unwrap();
        let long = "d".repeat(300);
        let out = rewrite_connect(&p, &c, Some(&long), None).unwrap();
        let n = parse_connect(&out).unwrap();
        assert_eq!(n.client_id, long);
        let huge = "d".repeat(70_000);
        assert!(matches!(
            rewrite_connect(&p, &c, None, Some(&huge)),
            Err(RewriteError::FieldTooLong("username", 70_000))
        ));
    }
}
