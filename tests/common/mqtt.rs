//! MQTT packets and raw sessions.
//!
//! CONNECTs come from the library's own encoder (`mqgate::mqtt::connect::encode_connect`,
//! what the health checks send) wherever it can write them; [`connect_raw`] is the one
//! hand-written CONNECT builder, for what the library never writes (MQTT 3.1, will
//! messages, persistent sessions, broken packets). Raw sessions are plain `TcpStream`s
//! that tests read and write byte by byte.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// CONNACK "accepted", session present 0, as MQTT 3.1 / 3.1.1 brokers send it.
pub const CONNACK_ACCEPTED: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
/// PINGREQ and the PINGRESP it gets.
pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
pub const PINGRESP: [u8; 2] = [0xD0, 0x00];
/// DISCONNECT (normal disconnection, v3.x and v5).
pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// Append an MQTT Variable Byte Integer (a fixed header's Remaining Length).
pub fn put_remaining_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// A u16-length-prefixed MQTT string or binary field.
pub fn mqtt_field(bytes: &[u8]) -> Vec<u8> {
    let len = u16::try_from(bytes.len()).expect("an MQTT field holds at most 65535 bytes");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// Wrap a variable header + payload into a packet with fixed-header byte `first`.
pub fn mqtt_packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    put_remaining_len(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// A CONNECT written byte by byte: fixed-header byte `first`, protocol `name` and
/// `level`, connect `flags`, `keep_alive`, then `rest` as given (v5 properties and
/// payload fields, already encoded). Nothing is checked: broken packets are the point.
pub fn connect_raw(
    first: u8,
    name: &[u8],
    level: u8,
    flags: u8,
    keep_alive: u16,
    rest: &[&[u8]],
) -> Vec<u8> {
    let mut body = mqtt_field(name);
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    for part in rest {
        body.extend_from_slice(part);
    }
    mqtt_packet(first, &body)
}

/// A minimal clean-session MQTT 3.1.1 CONNECT (keep alive 60 s), from the library's
/// encoder.
pub fn connect_v311(client_id: &str) -> Vec<u8> {
    Connect::new(client_id).bytes()
}

/// A minimal clean-start MQTT 5.0 CONNECT (no properties, keep alive 60 s), from the
/// library's encoder.
pub fn connect_v5(client_id: &str) -> Vec<u8> {
    Connect::new(client_id).v5(true).bytes()
}

/// A CONNECT as a test wants it. Defaults: MQTT 3.1.1, clean session, keep alive 60 s,
/// no credentials, no will.
#[derive(Clone, Debug)]
pub struct Connect {
    client_id: String,
    level: u8,
    clean: bool,
    session_expiry: Option<u32>,
    keep_alive: u16,
    username: Option<String>,
    password: Option<String>,
    will: Option<(String, Vec<u8>)>,
}

impl Connect {
    pub fn new(client_id: &str) -> Connect {
        Connect {
            client_id: client_id.to_string(),
            level: 4,
            clean: true,
            session_expiry: None,
            keep_alive: 60,
            username: None,
            password: None,
            will: None,
        }
    }

    /// MQTT 3.1 (level 3, protocol name "MQIsdp"), 3.1.1 (4) or 5.0 (5).
    pub fn level(mut self, level: u8) -> Connect {
        self.level = level;
        self
    }

    /// MQTT 5.0 when `v5`, else 3.1.1.
    pub fn v5(self, v5: bool) -> Connect {
        self.level(if v5 { 5 } else { 4 })
    }

    pub fn is_v5(&self) -> bool {
        self.level == 5
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// A session that outlives the connection: clean session 0, and for MQTT 5 clean
    /// start 0 with a Session Expiry Interval of 3600 s.
    pub fn persistent(mut self) -> Connect {
        self.clean = false;
        self.session_expiry = Some(3600);
        self
    }

    /// Clean session when `clean`, else [`Connect::persistent`].
    pub fn clean(mut self, clean: bool) -> Connect {
        if clean {
            self.clean = true;
            self.session_expiry = None;
            self
        } else {
            self.persistent()
        }
    }

    pub fn keep_alive(mut self, secs: u16) -> Connect {
        self.keep_alive = secs;
        self
    }

    pub fn login(mut self, user: &str, pass: &str) -> Connect {
        self.username = Some(user.to_string());
        self.password = Some(pass.to_string());
        self
    }

    /// A will message on `topic` (QoS 0, not retained).
    pub fn will(mut self, topic: &str, payload: &[u8]) -> Connect {
        self.will = Some((topic.to_string(), payload.to_vec()));
        self
    }

    /// The packet's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let user = self.username.as_deref();
        let pass = self.password.as_deref().map(str::as_bytes);
        if self.level >= 4 && self.clean && self.will.is_none() {
            // What the library's health checks send.
            let v5 = self.level == 5;
            return mqgate::mqtt::connect::encode_connect(
                v5,
                &self.client_id,
                user,
                pass,
                self.keep_alive,
            );
        }
        let mut flags = 0;
        if self.clean {
            flags |= 0x02;
        }
        if self.will.is_some() {
            flags |= 0x04;
        }
        if user.is_some() {
            flags |= 0x80;
        }
        if pass.is_some() {
            flags |= 0x40;
        }
        let mut rest = Vec::new();
        if self.level == 5 {
            match self.session_expiry {
                Some(secs) => {
                    rest.extend_from_slice(&[5, 0x11]);
                    rest.extend_from_slice(&secs.to_be_bytes());
                }
                None => rest.push(0),
            }
        }
        rest.extend(mqtt_field(self.client_id.as_bytes()));
        if let Some((topic, payload)) = &self.will {
            if self.level == 5 {
                rest.push(0); // no will properties
            }
            rest.extend(mqtt_field(topic.as_bytes()));
            rest.extend(mqtt_field(payload));
        }
        for field in [user.map(str::as_bytes), pass].into_iter().flatten() {
            rest.extend(mqtt_field(field));
        }
        let name: &[u8] = if self.level == 3 { b"MQIsdp" } else { b"MQTT" };
        connect_raw(0x10, name, self.level, flags, self.keep_alive, &[&rest])
    }
}

/// An MQTT 5 CONNACK refusing with `code` and a Reason String property `reason`
/// (written here, not by the library, so that what mqgate sends is checked against
/// the MQTT 5 layout).
pub fn connack_v5_with_reason(code: u8, reason: &[u8]) -> Vec<u8> {
    let mut props = vec![0x1F];
    props.extend(mqtt_field(reason));
    let mut body = vec![0x00, code];
    put_remaining_len(&mut body, props.len());
    body.extend(props);
    mqtt_packet(0x20, &body)
}

/// An MQTT 3.1.1 SUBSCRIBE of one topic filter.
pub fn subscribe_v311(packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    body.extend(mqtt_field(filter.as_bytes()));
    body.push(qos);
    mqtt_packet(0x82, &body)
}

/// Connect to 127.0.0.1:`port` with 10 s read/write timeouts.
pub fn tcp(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to 127.0.0.1");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("write timeout");
    s
}

/// How a raw read ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Orderly close (FIN) after the bytes returned.
    Eof,
    /// Connection reset.
    Reset,
    /// Still open when the timeout passed.
    Open,
}

/// Read everything until the peer closes or `timeout` passes.
pub fn read_to_close(s: &mut TcpStream, timeout: Duration) -> (Vec<u8>, Ended) {
    let end = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, Ended::Open);
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) => return (out, Ended::Eof),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (out, Ended::Open)
            }
            Err(_) => return (out, Ended::Reset),
        }
    }
}

/// Did the peer close `s` (FIN or reset) within `timeout`? What it sent meanwhile is
/// read and dropped.
pub fn closed_within(s: &mut TcpStream, timeout: Duration) -> bool {
    read_to_close(s, timeout).1 != Ended::Open
}

/// Read exactly `n` bytes (panics on close or after 10 s).
pub fn read_exact_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    s.read_exact(&mut out).expect("read reply");
    out
}

/// Decode the Variable Byte Integer at the start of `b`: (value, bytes it takes);
/// None while incomplete (or malformed: a continuation bit on the 4th byte).
pub fn varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for i in 0..4 {
        let byte = *b.get(i)?;
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Read one whole packet and nothing after it: (first byte, body).
pub fn read_packet(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first)?;
    let mut len = Vec::new();
    let body_len = loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        len.push(b[0]);
        if let Some((n, _)) = varint(&len) {
            break n;
        }
        if len.len() == 4 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "remaining length longer than 4 bytes",
            ));
        }
    };
    let mut body = vec![0u8; body_len];
    s.read_exact(&mut body)?;
    Ok((first[0], body))
}

/// Send `connect` to 127.0.0.1:`port` and read the CONNACK: the stream (10 s read
/// and write timeouts) and the CONNACK's return (v3) or reason (v5) code.
pub fn connect_and_ack(port: u16, connect: &Connect) -> Result<(TcpStream, u8), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(10))))
        .map_err(|e| format!("timeouts: {e}"))?;
    s.write_all(&connect.bytes())
        .map_err(|e| format!("write CONNECT: {e}"))?;
    match read_packet(&mut s) {
        Ok((0x20, body)) if body.len() >= 2 => Ok((s, body[1])),
        Ok((first, body)) => Err(format!("CONNACK expected, got {first:#04x} {body:02x?}")),
        Err(e) => Err(format!("CONNACK: {e}")),
    }
}

/// A session through 127.0.0.1:`port` with `connect`: Ok with the stream (10 s read
/// and write timeouts) once a CONNACK "accepted" arrived, else what went wrong.
pub fn session(port: u16, connect: &Connect) -> Result<TcpStream, String> {
    match connect_and_ack(port, connect)? {
        (s, 0) => Ok(s),
        (_, code) => Err(format!("CONNACK code {code:#04x}")),
    }
}

/// Open a raw MQTT 3.1.1 session through `port`: asserts CONNACK "accepted".
pub fn raw_session(port: u16, client_id: &str) -> TcpStream {
    session(port, &Connect::new(client_id))
        .unwrap_or_else(|e| panic!("CONNACK accepted for {client_id}: {e}"))
}

/// PINGREQ → PINGRESP on an open session: true if the session answers.
pub fn ping(s: &mut TcpStream) -> bool {
    if s.write_all(&PINGREQ).is_err() {
        return false;
    }
    let mut b = [0u8; 2];
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.read_exact(&mut b).is_ok() && b == PINGRESP
}
