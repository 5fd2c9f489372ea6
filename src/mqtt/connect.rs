//! The client's CONNECT: framing, validation and a borrowed view of its fields.
//!
//! mqgate routes a connection on what its first packet says (client id, username,
//! whether the client keeps a session), and refuses what the broker would refuse
//! anyway before contacting any broker (SPEC section 3): something that is not MQTT
//! at all, a malformed CONNECT, an unsupported protocol level, an oversized packet.
//! [`frame_len`] works on a partial buffer so the size limit is enforced from the
//! fixed header alone; [`parse_connect`] then reads one complete packet into a
//! [`Connect`] that borrows from it. MQTT 3.1 (`MQIsdp`, level 3), 3.1.1 (level 4)
//! and 5.0 (level 5) are understood.
//!
//! [`encode_connect_v311`] is the opposite direction, for the `mqtt` health check.

use std::fmt;

use super::properties::{self, Context};
use super::wire::{put_varint, Header, Reader, PAST_END};
use super::Parse;

/// Protocol version announced by a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The `protocol` metric label: `"3.1"`, `"3.1.1"` or `"5.0"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolVersion::V3_1 => "3.1",
            ProtocolVersion::V3_1_1 => "3.1.1",
            ProtocolVersion::V5 => "5.0",
        }
    }

    /// True for MQTT 5.0 (properties, reason codes in CONNACK).
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub use super::error::ConnectError;

/// A CONNECT's will message.
#[derive(Clone, PartialEq, Eq)]
pub struct Will<'a> {
    pub topic: &'a str,
    /// Binary; not printed by `Debug` (only its length).
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
}

impl fmt::Debug for Will<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Will")
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .finish()
    }
}

/// The fields of a CONNECT that mqgate routes and reports on, borrowed from the
/// packet bytes. v5 properties other than the Session Expiry Interval are validated
/// but not kept.
#[derive(Clone, PartialEq, Eq)]
pub struct Connect<'a> {
    pub version: ProtocolVersion,
    /// May be empty (the broker decides whether to accept or assign one).
    pub client_id: &'a str,
    /// `None`: username flag 0. `Some("")`: flag 1 with an empty name. Different.
    pub username: Option<&'a str>,
    /// Binary, never logged: `Debug` prints `***`.
    pub password: Option<&'a [u8]>,
    /// Clean Session (3.1, 3.1.1) or Clean Start (5.0).
    pub clean_session: bool,
    pub keep_alive: u16,
    pub will: Option<Will<'a>>,
    /// v5 Session Expiry Interval property (0x11), if present.
    pub session_expiry: Option<u32>,
}

impl Connect<'_> {
    /// True when the client keeps a session on the broker after it disconnects:
    /// v3.x with clean session 0; v5 with a session expiry interval > 0 (Clean Start
    /// only says whether an existing session is discarded at connect time).
    pub fn keeps_session(&self) -> bool {
        if self.version.is_v5() {
            self.session_expiry.unwrap_or(0) > 0
        } else {
            !self.clean_session
        }
    }
}

impl fmt::Debug for Connect<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("version", &self.version)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.map(|_| "***"))
            .field("clean_session", &self.clean_session)
            .field("keep_alive", &self.keep_alive)
            .field("will", &self.will)
            .field("session_expiry", &self.session_expiry)
            .finish()
    }
}

/// Packet type CONNECT, with the fixed-header flags that must be zero.
const CONNECT_BYTE: u8 = 0x10;
/// First byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// Fixed header of a CONNECT at the start of `buf`: `(header_len, remaining)`.
fn connect_header(buf: &[u8]) -> Result<Parse<(usize, usize)>, ConnectError> {
    let Some(&first) = buf.first() else {
        return Ok(Parse::Incomplete);
    };
    // 0x16 would be a CONNECT with flags 0110, but it is the TLS handshake record
    // type: a client speaking TLS to a plain port. Count it as "not MQTT".
    // Nonzero fixed-header flags are refused by `parse_connect` once the protocol
    // level is known: MQTT 3.1 did not reserve them, and Mosquitto accepts them there.
    if first >> 4 != CONNECT_BYTE >> 4 || first == TLS_HANDSHAKE {
        return Err(ConnectError::NotConnect);
    }
    match Header::read(buf) {
        Header::Complete {
            header_len,
            remaining,
        } => Ok(Parse::Complete((header_len, remaining))),
        Header::Incomplete => Ok(Parse::Incomplete),
        Header::TooLong => Err(ConnectError::Malformed(
            "remaining length longer than 4 bytes",
        )),
    }
}

/// Inspect the fixed header at the start of `buf`.
///
/// - `Ok(Complete(total))`: total packet length (fixed header + remaining length),
///   known as soon as the Remaining Length is complete; `total <= max`.
/// - `Ok(Incomplete)`: more bytes are needed (including for an empty `buf`).
/// - `Err(NotConnect)`: byte 0 is not packet type 1 (HTTP, PINGREQ, ...) or is
///   0x16, the start of a TLS ClientHello. Always decided from byte 0 alone.
/// - `Err(Malformed)`: a Remaining Length whose 4th byte still has its continuation
///   bit set. (Nonzero fixed-header flags are judged by [`parse_connect`], which
///   knows the protocol level.)
/// - `Err(TooLarge(total))`: `total > max`, decided from the header alone.
///
/// Bytes after the fixed header are not looked at.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Parse<usize>, ConnectError> {
    match connect_header(buf)? {
        Parse::Incomplete => Ok(Parse::Incomplete),
        Parse::Complete((header_len, remaining)) => {
            // remaining < 2^28, so this cannot overflow.
            let total = header_len + remaining;
            if total > max {
                Err(ConnectError::TooLarge(total))
            } else {
                Ok(Parse::Complete(total))
            }
        }
    }
}

const BAD_CLIENT_ID: &str = "bad UTF-8 in client id";
const BAD_USERNAME: &str = "bad UTF-8 in username";
const BAD_WILL_TOPIC: &str = "bad UTF-8 in will topic";

/// Parse one complete CONNECT packet at the start of `packet`.
///
/// `packet` should be exactly [`frame_len`] bytes; bytes beyond the packet's own
/// length (e.g. a PUBLISH the client sent right behind its CONNECT) are ignored, and
/// a `packet` shorter than its declared length is `Malformed("length past end")`.
/// The size limit is not applied here: check it with [`frame_len`] first.
pub fn parse_connect(packet: &[u8]) -> Result<Connect<'_>, ConnectError> {
    let (header_len, remaining) = match connect_header(packet)? {
        Parse::Complete(header) => header,
        Parse::Incomplete => return Err(ConnectError::Malformed(PAST_END)),
    };
    let mut r = Reader::new(packet);
    r.take(header_len)?;
    let mut r = r.sub(remaining)?;

    // Variable header: protocol name and level.
    let name = r.binary()?;
    let level = r.u8()?;
    // Bit 7 of the level is the "bridge" flag Mosquitto bridges set with
    // `try_private true`; Mosquitto accepts it on 3.1/3.1.1 (and ignores it on 5.0).
    let version = match (name, level & 0x7F) {
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp" | b"MQTT", _) => return Err(ConnectError::UnsupportedProtocol(level)),
        _ => return Err(ConnectError::Malformed("protocol name")),
    };
    // MQTT 3.1 reserved neither the fixed-header flags nor connect flag bit 0, and
    // Mosquitto accepts them set on a 3.1 CONNECT: so does the gateway. 3.1.1 and 5.0
    // forbid both [MQTT-2.2.2-2], [MQTT-3.1.2-3].
    let v3_1 = version == ProtocolVersion::V3_1;
    if packet[0] != CONNECT_BYTE && !v3_1 {
        return Err(ConnectError::Malformed("fixed header flags"));
    }

    // Connect flags.
    let flags = r.u8()?;
    let clean_session = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if flags & 0x01 != 0 && !v3_1 {
        return Err(ConnectError::Malformed("reserved connect flag set"));
    }
    if will_qos == 3 {
        return Err(ConnectError::Malformed("will QoS 3"));
    }
    // Will QoS or retain without the will flag: forbidden since 3.1.1
    // [MQTT-3.1.2-13/15]; MQTT 3.1 said nothing, and Mosquitto accepts it there.
    if !will_flag && (will_qos != 0 || will_retain) && !v3_1 {
        return Err(ConnectError::Malformed(
            "will QoS or retain without will flag",
        ));
    }
    if password_flag && !username_flag && !version.is_v5() {
        return Err(ConnectError::Malformed("password without username"));
    }
    let keep_alive = r.u16()?;
    let session_expiry = if version.is_v5() {
        properties::walk(&mut r, Context::Connect)?.session_expiry
    } else {
        None
    };

    // Payload, in the order the flags announce it.
    let client_id = r.utf8(BAD_CLIENT_ID)?;
    let will = if will_flag {
        if version.is_v5() {
            properties::walk(&mut r, Context::Will)?;
        }
        let topic = r.utf8(BAD_WILL_TOPIC)?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
        })
    } else {
        None
    };
    // MQTT 3.1: a username or password flag without the field is ignored (Mosquitto).
    let username = if username_flag && !(v3_1 && r.is_empty()) {
        Some(r.utf8(BAD_USERNAME)?)
    } else {
        None
    };
    let password = if password_flag && !(v3_1 && r.is_empty()) {
        Some(r.binary()?)
    } else {
        None
    };
    if !r.is_empty() {
        return Err(ConnectError::Malformed("trailing bytes after payload"));
    }

    Ok(Connect {
        version,
        client_id,
        username,
        password,
        clean_session,
        keep_alive,
        will,
        session_expiry,
    })
}

/// Encode the MQTT 3.1.1 CONNECT (clean session 1, no will) that the `mqtt` health
/// check sends. A field longer than 65,535 bytes, which a CONNECT cannot carry, is
/// cut to that length (the broker will then refuse the login and the check fails).
pub fn encode_connect_v311(
    client_id: &str,
    username: Option<&str>,
    password: Option<&[u8]>,
    keep_alive: u16,
) -> Vec<u8> {
    encode_connect(false, client_id, username, password, keep_alive)
}

/// [`encode_connect_v311`], or with `v5` the MQTT 5.0 CONNECT (clean start, no
/// properties: session expiry 0) that the `mqtt5` health check sends.
pub fn encode_connect(
    v5: bool,
    client_id: &str,
    username: Option<&str>,
    password: Option<&[u8]>,
    keep_alive: u16,
) -> Vec<u8> {
    fn field(bytes: &[u8]) -> &[u8] {
        &bytes[..bytes.len().min(usize::from(u16::MAX))]
    }
    let client_id = field(client_id.as_bytes());
    let username = username.map(|u| field(u.as_bytes()));
    let password = password.map(field);

    let mut flags = 0x02; // clean session
    if username.is_some() {
        flags |= 0x80;
    }
    if password.is_some() {
        flags |= 0x40;
    }
    let fields = [Some(client_id), username, password];
    let remaining =
        10 + usize::from(v5) + fields.iter().flatten().map(|f| 2 + f.len()).sum::<usize>();

    let mut out = Vec::with_capacity(5 + remaining);
    out.push(CONNECT_BYTE);
    put_varint(&mut out, remaining);
    let level = if v5 { 5 } else { 4 };
    out.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', level, flags]);
    out.extend_from_slice(&keep_alive.to_be_bytes());
    if v5 {
        out.push(0x00); // no properties
    }
    for f in fields.iter().flatten() {
        // `field` capped the length at u16::MAX.
        let len = u16::try_from(f.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

#[cfg(test)]
#[path = "connect_tests.rs"]
mod tests;
