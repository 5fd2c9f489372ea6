//! MQTT 5 properties: walked and validated, but not kept.
//!
//! A v5 CONNECT carries a property block in its variable header and another one
//! inside the will. mqgate needs only the Session Expiry Interval (to tell clients
//! that keep a session), but it must still walk every property to find where the
//! block ends and to refuse the malformed ones the broker would refuse anyway:
//! unknown identifiers, properties not allowed in that place, values cut short,
//! duplicates of single-occurrence properties, out-of-range values and bad UTF-8.
//! Each identifier's wire type comes from the table in MQTT 5.0 section 2.2.2.2.

use super::error::ConnectError;
use super::wire::Reader;

/// Where a property block sits; decides which identifiers are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    /// The CONNECT variable header.
    Connect,
    /// The will properties in the CONNECT payload.
    Will,
    /// SUBSCRIBE: Subscription Identifier, User Property.
    Subscribe,
    /// UNSUBSCRIBE: User Property.
    Unsubscribe,
    /// SUBACK and UNSUBACK: Reason String, User Property.
    Ack,
}

/// What a property block told us.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Props {
    pub(crate) session_expiry: Option<u32>,
    /// SUBSCRIBE's Subscription Identifier (1..=268,435,455).
    pub(crate) subscription_id: Option<usize>,
}

/// The wire type of a property value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Byte,
    U16,
    U32,
    Varint,
    Utf8,
    Binary,
    Pair,
}

const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;

/// Wire type of every property identifier MQTT 5.0 defines; `None` = unknown.
fn kind(id: u8) -> Option<Kind> {
    Some(match id {
        0x01 => Kind::Byte,   // Payload Format Indicator
        0x02 => Kind::U32,    // Message Expiry Interval
        0x03 => Kind::Utf8,   // Content Type
        0x08 => Kind::Utf8,   // Response Topic
        0x09 => Kind::Binary, // Correlation Data
        0x0B => Kind::Varint, // Subscription Identifier
        0x11 => Kind::U32,    // Session Expiry Interval
        0x12 => Kind::Utf8,   // Assigned Client Identifier
        0x13 => Kind::U16,    // Server Keep Alive
        0x15 => Kind::Utf8,   // Authentication Method
        0x16 => Kind::Binary, // Authentication Data
        0x17 => Kind::Byte,   // Request Problem Information
        0x18 => Kind::U32,    // Will Delay Interval
        0x19 => Kind::Byte,   // Request Response Information
        0x1A => Kind::Utf8,   // Response Information
        0x1C => Kind::Utf8,   // Server Reference
        0x1F => Kind::Utf8,   // Reason String
        0x21 => Kind::U16,    // Receive Maximum
        0x22 => Kind::U16,    // Topic Alias Maximum
        0x23 => Kind::U16,    // Topic Alias
        0x24 => Kind::Byte,   // Maximum QoS
        0x25 => Kind::Byte,   // Retain Available
        0x26 => Kind::Pair,   // User Property
        0x27 => Kind::U32,    // Maximum Packet Size
        0x28 => Kind::Byte,   // Wildcard Subscription Available
        0x29 => Kind::Byte,   // Subscription Identifier Available
        0x2A => Kind::Byte,   // Shared Subscription Available
        _ => return None,
    })
}

fn allowed(ctx: Context, id: u8) -> bool {
    match ctx {
        Context::Connect => matches!(
            id,
            SESSION_EXPIRY_INTERVAL
                | RECEIVE_MAXIMUM
                | MAXIMUM_PACKET_SIZE
                | TOPIC_ALIAS_MAXIMUM
                | REQUEST_RESPONSE_INFORMATION
                | REQUEST_PROBLEM_INFORMATION
                | USER_PROPERTY
                | AUTHENTICATION_METHOD
                | AUTHENTICATION_DATA
        ),
        Context::Will => matches!(
            id,
            WILL_DELAY_INTERVAL
                | PAYLOAD_FORMAT_INDICATOR
                | MESSAGE_EXPIRY_INTERVAL
                | CONTENT_TYPE
                | RESPONSE_TOPIC
                | CORRELATION_DATA
                | USER_PROPERTY
        ),
        Context::Subscribe => matches!(id, SUBSCRIPTION_IDENTIFIER | USER_PROPERTY),
        Context::Unsubscribe => id == USER_PROPERTY,
        Context::Ack => matches!(id, REASON_STRING | USER_PROPERTY),
    }
}

const BAD_UTF8: &str = "bad UTF-8 in property";
const OUT_OF_RANGE: &str = "property value out of range";

/// Read a property block (Variable Byte Integer length, then properties) at the
/// reader's position, leaving the reader just after it.
pub(crate) fn walk(r: &mut Reader<'_>, ctx: Context) -> Result<Props, ConnectError> {
    let len = r.varint()?;
    let mut block = r.sub(len)?;
    let mut props = Props::default();
    // Every defined identifier is below 64: one bit each for duplicate detection.
    let mut seen: u64 = 0;
    while !block.is_empty() {
        // Identifiers are Variable Byte Integers, but all defined ones are < 0x80,
        // so a byte with the high bit set is an unknown identifier either way.
        let id = block.u8()?;
        let kind = kind(id).ok_or(ConnectError::Malformed("unknown property"))?;
        if !allowed(ctx, id) {
            return Err(ConnectError::Malformed(match ctx {
                Context::Connect => "property not allowed in CONNECT",
                Context::Will => "property not allowed in will",
                Context::Subscribe => "property not allowed in SUBSCRIBE",
                Context::Unsubscribe => "property not allowed in UNSUBSCRIBE",
                Context::Ack => "property not allowed in SUBACK/UNSUBACK",
            }));
        }
        if id != USER_PROPERTY {
            let bit = 1u64 << id;
            if seen & bit != 0 {
                return Err(ConnectError::Malformed("duplicate property"));
            }
            seen |= bit;
        }
        match kind {
            Kind::Byte => {
                let v = block.u8()?;
                // Payload Format Indicator and both Request ... Information are 0 or 1.
                if v > 1 {
                    return Err(ConnectError::Malformed(OUT_OF_RANGE));
                }
            }
            Kind::U16 => {
                let v = block.u16()?;
                if id == RECEIVE_MAXIMUM && v == 0 {
                    return Err(ConnectError::Malformed(OUT_OF_RANGE));
                }
            }
            Kind::U32 => {
                let v = block.u32()?;
                match id {
                    SESSION_EXPIRY_INTERVAL => props.session_expiry = Some(v),
                    MAXIMUM_PACKET_SIZE if v == 0 => {
                        return Err(ConnectError::Malformed(OUT_OF_RANGE))
                    }
                    _ => {}
                }
            }
            Kind::Varint => {
                // The only Varint property is the Subscription Identifier; 0 is a
                // Protocol Error (MQTT 5.0 3.8.2.1.2).
                let v = block.varint()?;
                if v == 0 {
                    return Err(ConnectError::Malformed(OUT_OF_RANGE));
                }
                props.subscription_id = Some(v);
            }
            Kind::Utf8 => {
                block.utf8(BAD_UTF8)?;
            }
            Kind::Binary => {
                block.binary()?;
            }
            Kind::Pair => {
                block.utf8(BAD_UTF8)?;
                block.utf8(BAD_UTF8)?;
            }
        }
    }
    // MQTT 5.0 3.1.2.11.10: Authentication Data without a method is a Protocol Error.
    let has = |id: u8| seen & (1u64 << id) != 0;
    if has(AUTHENTICATION_DATA) && !has(AUTHENTICATION_METHOD) {
        return Err(ConnectError::Malformed(
            "authentication data without authentication method",
        ));
    }
    Ok(props)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk_bytes(bytes: &[u8], ctx: Context) -> Result<Props, ConnectError> {
        let mut r = Reader::new(bytes);
        let props = walk(&mut r, ctx)?;
        assert!(r.is_empty(), "walk must consume exactly the block");
        Ok(props)
    }

    #[test]
    fn every_known_identifier_has_a_kind_and_fits_the_duplicate_mask() {
        let known: Vec<u8> = (0..=u8::MAX).filter(|&id| kind(id).is_some()).collect();
        assert_eq!(known.len(), 27);
        assert!(known.iter().all(|&id| id < 64));
    }

    #[test]
    fn empty_block() {
        assert_eq!(walk_bytes(&[0x00], Context::Connect), Ok(Props::default()));
        assert_eq!(walk_bytes(&[0x00], Context::Will), Ok(Props::default()));
    }

    #[test]
    fn connect_block_with_every_allowed_property() {
        let block = [
            0x2E, // length 46
            0x11, 0, 0, 0x0E, 0x10, // session expiry 3600
            0x21, 0x00, 0x10, // receive maximum 16
            0x27, 0, 0, 0x10, 0, // maximum packet size 4096
            0x22, 0x00, 0x05, // topic alias maximum
            0x19, 0x01, // request response information
            0x17, 0x00, // request problem information
            0x26, 0, 1, b'k', 0, 1, b'v', // user property
            0x26, 0, 1, b'k', 0, 1, b'w', // user property may repeat
            0x15, 0, 3, b'S', b'C', b'R', // authentication method
            0x16, 0, 3, 1, 2, 3, // authentication data
        ];
        assert_eq!(block[0] as usize, block.len() - 1);
        assert_eq!(
            walk_bytes(&block, Context::Connect),
            Ok(Props {
                session_expiry: Some(3600),
                subscription_id: None,
            })
        );
    }

    #[test]
    fn will_block_with_every_allowed_property() {
        let block = [
            0x19, // length 25
            0x18, 0, 0, 0, 5, // will delay interval
            0x01, 0x01, // payload format indicator
            0x02, 0, 0, 0, 60, // message expiry interval
            0x03, 0, 1, b't', // content type
            0x08, 0, 1, b'r', // response topic
            0x09, 0, 2, 0xFF, 0x00, // correlation data (binary)
        ];
        assert_eq!(block[0] as usize, block.len() - 1);
        assert_eq!(walk_bytes(&block, Context::Will), Ok(Props::default()));
    }

    #[test]
    fn bad_blocks() {
        let m = ConnectError::Malformed;
        let cases: &[(&[u8], Context, ConnectError)] = &[
            (&[], Context::Connect, m("length past end")),
            (&[0x05, 0x11, 0, 0], Context::Connect, m("length past end")),
            (&[0x03, 0x11, 0, 0], Context::Connect, m("length past end")),
            (&[0x02, 0x00, 0x00], Context::Connect, m("unknown property")),
            (&[0x02, 0x7F, 0x00], Context::Connect, m("unknown property")),
            (&[0x02, 0x81, 0x01], Context::Connect, m("unknown property")),
            (
                &[0x02, 0x01, 0x00],
                Context::Connect,
                m("property not allowed in CONNECT"),
            ),
            (
                &[0x05, 0x11, 0, 0, 0, 1],
                Context::Will,
                m("property not allowed in will"),
            ),
            (
                &[0x0A, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2],
                Context::Connect,
                m("duplicate property"),
            ),
            (
                &[0x03, 0x21, 0, 0],
                Context::Connect,
                m("property value out of range"),
            ),
            (
                &[0x05, 0x27, 0, 0, 0, 0],
                Context::Connect,
                m("property value out of range"),
            ),
            (
                &[0x02, 0x17, 2],
                Context::Connect,
                m("property value out of range"),
            ),
            (
                &[0x02, 0x19, 2],
                Context::Connect,
                m("property value out of range"),
            ),
            (
                &[0x02, 0x01, 2],
                Context::Will,
                m("property value out of range"),
            ),
            (
                &[0x05, 0x15, 0, 2, 0xC3, 0x28],
                Context::Connect,
                m("bad UTF-8 in property"),
            ),
            (
                &[0x04, 0x26, 0, 1, b'k'],
                Context::Connect,
                m("length past end"),
            ),
            (
                &[0x07, 0x26, 0, 1, b'k', 0, 1, 0],
                Context::Connect,
                m("bad UTF-8 in property"),
            ),
            (
                &[0x04, 0x16, 0, 1, 9],
                Context::Connect,
                m("authentication data without authentication method"),
            ),
            (
                &[0xFF, 0xFF, 0xFF, 0xFF],
                Context::Connect,
                m("variable byte integer too long"),
            ),
        ];
        for (bytes, ctx, want) in cases {
            assert_eq!(walk_bytes(bytes, *ctx).as_ref(), Err(want), "{bytes:02x?}");
        }
    }
}
