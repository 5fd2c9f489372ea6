//! SUBSCRIBE, UNSUBSCRIBE, SUBACK and UNSUBACK: borrowed views, and the SUBSCRIBE
//! mqgate sends itself when it restores a client's subscriptions on a new node.
//!
//! The packet-aware relay ([`crate::relay::packets`]) learns a persistent client's
//! subscriptions from the packets it forwards anyway: it parses each complete
//! SUBSCRIBE/UNSUBSCRIBE the client sends and each SUBACK/UNSUBACK the broker answers.
//! Like the CONNECT view these are pure functions over one complete packet (framed
//! by [`super::scanner`]): no I/O, no allocation, no panic on any input. A packet
//! that does not parse is still forwarded unchanged — the broker decides what a
//! malformed packet means — and simply teaches mqgate nothing.
//!
//! MQTT 3.1, 3.1.1 and 5.0 are understood; `v5` selects the property blocks and
//! the v5 subscription options (no local, retain as published, retain handling).

use super::error::ConnectError;
use super::properties::{self, Context};
use super::wire::{put_varint, Header, Reader};

/// Packet types (the high nibble of byte 0).
pub const CONNACK: u8 = 2;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const UNSUBSCRIBE: u8 = 10;
pub const UNSUBACK: u8 = 11;

/// Why a packet is not an acceptable SUBSCRIBE/UNSUBSCRIBE/SUBACK/UNSUBACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Another packet type than the one asked for, or reserved flag bits set.
    #[error("unexpected packet type or flags (byte 0 = {0:#04x})")]
    Type(u8),
    /// Framing or content is malformed (the reason is for the debug log).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

impl From<ConnectError> for PacketError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Malformed(why) => PacketError::Malformed(why),
            _ => PacketError::Malformed("bad field"),
        }
    }
}

/// The packet identifier, the property block (v5; its content without the length)
/// and the payload of one complete packet whose byte 0 must be `first`.
fn open(packet: &[u8], first: u8, v5: bool, ctx: Context) -> Result<Parts<'_>, PacketError> {
    let b0 = packet
        .first()
        .copied()
        .ok_or(PacketError::Malformed("empty"))?;
    if b0 != first {
        return Err(PacketError::Type(b0));
    }
    let (header_len, remaining) = match Header::read(packet) {
        Header::Complete {
            header_len,
            remaining,
        } => (header_len, remaining),
        Header::Incomplete => return Err(PacketError::Malformed("fixed header cut short")),
        Header::TooLong => return Err(PacketError::Malformed("remaining length too long")),
    };
    let body = packet
        .get(header_len..)
        .filter(|b| b.len() == remaining)
        .ok_or(PacketError::Malformed("remaining length does not match"))?;
    let mut r = Reader::new(body);
    let id = r.u16()?;
    let mut props = properties::Props::default();
    let mut raw_props: &[u8] = &[];
    if v5 {
        let mut peek = r.clone();
        let n = peek.varint()?;
        raw_props = peek.take(n)?;
        props = properties::walk(&mut r, ctx)?;
    }
    Ok(Parts {
        id,
        props,
        raw_props,
        payload: r,
    })
}

struct Parts<'a> {
    id: u16,
    props: properties::Props,
    raw_props: &'a [u8],
    payload: Reader<'a>,
}

/// One topic filter of a SUBSCRIBE with its Subscription Options byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter<'a> {
    pub topic: &'a str,
    /// Bits 0-1 QoS; v5: bit 2 No Local, bit 3 Retain As Published, bits 4-5 Retain
    /// Handling.
    pub options: u8,
}

/// A SUBSCRIBE, validated; its filters borrow from the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe<'a> {
    pub id: u16,
    /// v5: the property block's content (Subscription Identifier, User Properties),
    /// kept as bytes so that a replay sends exactly what the client sent.
    pub properties: &'a [u8],
    /// v5 Subscription Identifier.
    pub subscription_id: Option<usize>,
    payload: &'a [u8],
}

impl<'a> Subscribe<'a> {
    /// The topic filters, in order (at least one).
    pub fn filters(&self) -> impl Iterator<Item = Filter<'a>> + 'a {
        let mut r = Reader::new(self.payload);
        std::iter::from_fn(move || {
            if r.is_empty() {
                return None;
            }
            // Validated by `parse_subscribe`: these reads cannot fail.
            let topic = r.utf8("bad UTF-8 in topic filter").ok()?;
            let options = r.u8().ok()?;
            Some(Filter { topic, options })
        })
    }
}

/// Parse one complete SUBSCRIBE (byte 0 = 0x82).
pub fn parse_subscribe(packet: &[u8], v5: bool) -> Result<Subscribe<'_>, PacketError> {
    let p = open(packet, (SUBSCRIBE << 4) | 0x02, v5, Context::Subscribe)?;
    if p.id == 0 {
        return Err(PacketError::Malformed("packet identifier 0"));
    }
    let payload = p.payload.clone().rest();
    let mut r = p.payload;
    if r.is_empty() {
        return Err(PacketError::Malformed("SUBSCRIBE without a topic filter"));
    }
    while !r.is_empty() {
        let topic = r.utf8("bad UTF-8 in topic filter")?;
        if topic.is_empty() {
            return Err(PacketError::Malformed("empty topic filter"));
        }
        let o = r.u8()?;
        let bad = if v5 {
            o & 0xC0 != 0 || o & 0x03 == 3 || (o >> 4) & 0x03 == 3
        } else {
            o & 0xFC != 0 || o & 0x03 == 3
        };
        if bad {
            return Err(PacketError::Malformed("bad subscription options"));
        }
    }
    Ok(Subscribe {
        id: p.id,
        properties: p.raw_props,
        subscription_id: p.props.subscription_id,
        payload,
    })
}

/// An UNSUBSCRIBE, validated; its filters borrow from the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe<'a> {
    pub id: u16,
    payload: &'a [u8],
}

impl<'a> Unsubscribe<'a> {
    /// The topic filters, in order (at least one).
    pub fn filters(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mut r = Reader::new(self.payload);
        std::iter::from_fn(move || {
            if r.is_empty() {
                return None;
            }
            r.utf8("bad UTF-8 in topic filter").ok()
        })
    }
}

/// Parse one complete UNSUBSCRIBE (byte 0 = 0xA2).
pub fn parse_unsubscribe(packet: &[u8], v5: bool) -> Result<Unsubscribe<'_>, PacketError> {
    let p = open(packet, (UNSUBSCRIBE << 4) | 0x02, v5, Context::Unsubscribe)?;
    if p.id == 0 {
        return Err(PacketError::Malformed("packet identifier 0"));
    }
    let payload = p.payload.clone().rest();
    let mut r = p.payload;
    if r.is_empty() {
        return Err(PacketError::Malformed("UNSUBSCRIBE without a topic filter"));
    }
    while !r.is_empty() {
        if r.utf8("bad UTF-8 in topic filter")?.is_empty() {
            return Err(PacketError::Malformed("empty topic filter"));
        }
    }
    Ok(Unsubscribe { id: p.id, payload })
}

/// A SUBACK or UNSUBACK: the packet identifier and one reason code per filter (an
/// MQTT 3.x UNSUBACK carries none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack<'a> {
    pub id: u16,
    pub codes: &'a [u8],
}

/// Parse one complete SUBACK (byte 0 = 0x90). Every code must be one MQTT defines.
pub fn parse_suback(packet: &[u8], v5: bool) -> Result<Ack<'_>, PacketError> {
    let p = open(packet, SUBACK << 4, v5, Context::Ack)?;
    let codes = p.payload.rest();
    if codes.is_empty() {
        return Err(PacketError::Malformed("SUBACK without a reason code"));
    }
    let known = |c: &u8| {
        if v5 {
            matches!(
                c,
                0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
            )
        } else {
            matches!(c, 0x00..=0x02 | 0x80)
        }
    };
    if !codes.iter().all(known) {
        return Err(PacketError::Malformed("unknown SUBACK reason code"));
    }
    Ok(Ack { id: p.id, codes })
}

/// Parse one complete UNSUBACK (byte 0 = 0xB0).
pub fn parse_unsuback(packet: &[u8], v5: bool) -> Result<Ack<'_>, PacketError> {
    let p = open(packet, UNSUBACK << 4, v5, Context::Ack)?;
    let codes = p.payload.rest();
    if v5 && codes.is_empty() {
        return Err(PacketError::Malformed("UNSUBACK without a reason code"));
    }
    if !v5 && !codes.is_empty() {
        return Err(PacketError::Malformed("MQTT 3 UNSUBACK with a payload"));
    }
    Ok(Ack { id: p.id, codes })
}

/// A granted SUBACK code (QoS 0, 1 or 2); 0x80 and above are refusals.
pub fn granted(code: u8) -> bool {
    code < 0x80
}

/// Encode a SUBSCRIBE of one filter: packet identifier `id`, v5 property block
/// content `properties` (ignored for MQTT 3), `options` as the client sent them.
pub fn encode_subscribe(id: u16, v5: bool, properties: &[u8], topic: &str, options: u8) -> Vec<u8> {
    let topic = topic.as_bytes();
    let topic_len = topic.len().min(usize::from(u16::MAX));
    let mut props_len = Vec::new();
    if v5 {
        put_varint(&mut props_len, properties.len());
    }
    let props = if v5 { properties } else { &[] };
    let remaining = 2 + props_len.len() + props.len() + 2 + topic_len + 1;
    let mut out = Vec::with_capacity(remaining + 5);
    out.push((SUBSCRIBE << 4) | 0x02);
    put_varint(&mut out, remaining);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&props_len);
    out.extend_from_slice(props);
    out.extend_from_slice(&(topic_len as u16).to_be_bytes());
    out.extend_from_slice(&topic[..topic_len]);
    out.push(options);
    out
}

#[cfg(test)]
#[path = "subscribe_tests.rs"]
mod tests;
