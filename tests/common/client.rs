//! A small blocking MQTT client (3.1.1 and 5.0): enough to open persistent sessions,
//! subscribe, publish at QoS 1 and read what arrives, with every read under a timeout.
//! Its CONNECT is a [`Connect`], so a test controls exactly which flags go on the wire
//! (clean session, session expiry, credentials).

use super::mqtt::{mqtt_field, mqtt_packet, varint, Connect, DISCONNECT, PINGREQ};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One MQTT connection.
pub struct Client {
    pub s: TcpStream,
    pub v5: bool,
    buf: Vec<u8>,
    next_id: u16,
}

/// What the broker (or mqgate) answered to a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connack {
    pub session_present: bool,
    pub code: u8,
}

impl Client {
    /// Connect to 127.0.0.1:`port` and send the CONNECT; Err if no CONNACK arrives.
    pub fn connect(port: u16, o: &Connect) -> Result<(Client, Connack), String> {
        let s = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(5),
        )
        .map_err(|e| format!("connect to {port}: {e}"))?;
        let _ = s.set_nodelay(true);
        let mut c = Client {
            s,
            v5: o.is_v5(),
            buf: Vec::new(),
            next_id: 1,
        };
        c.s.write_all(&o.bytes())
            .map_err(|e| format!("send CONNECT: {e}"))?;
        match c.read_packet(Duration::from_secs(10))? {
            (0x20, body) if body.len() >= 2 => {
                let ack = Connack {
                    session_present: body[0] & 1 == 1,
                    code: body[1],
                };
                Ok((c, ack))
            }
            (t, _) => Err(format!("expected CONNACK, got packet type {:#x}", t >> 4)),
        }
    }

    /// Connect and require CONNACK "accepted".
    pub fn accepted(port: u16, o: &Connect) -> Result<(Client, Connack), String> {
        let (c, ack) = Client::connect(port, o)?;
        if ack.code != 0 {
            return Err(format!(
                "CONNACK code {:#04x} for {}",
                ack.code,
                o.client_id()
            ));
        }
        Ok((c, ack))
    }

    /// Read one packet: (first byte, body). Err on close, error or timeout.
    pub fn read_packet(&mut self, timeout: Duration) -> Result<(u8, Vec<u8>), String> {
        let end = Instant::now() + timeout;
        loop {
            if let Some((first, hl, len)) = frame(&self.buf) {
                if self.buf.len() >= hl + len {
                    let body = self.buf[hl..hl + len].to_vec();
                    self.buf.drain(..hl + len);
                    return Ok((first, body));
                }
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out waiting for a packet".into());
            }
            let _ = self.s.set_read_timeout(Some(left));
            let mut tmp = [0u8; 4096];
            match self.s.read(&mut tmp) {
                Ok(0) => return Err("connection closed".into()),
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err("timed out waiting for a packet".into())
                }
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    fn id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// SUBSCRIBE at QoS 1 and wait for the SUBACK.
    pub fn subscribe(&mut self, topic: &str) -> Result<(), String> {
        let id = self.id();
        let mut body = id.to_be_bytes().to_vec();
        if self.v5 {
            body.push(0);
        }
        body.extend(mqtt_field(topic.as_bytes()));
        body.push(1);
        self.s
            .write_all(&mqtt_packet(0x82, &body))
            .map_err(|e| format!("send SUBSCRIBE: {e}"))?;
        loop {
            let (t, b) = self.read_packet(Duration::from_secs(10))?;
            if t >> 4 == 9 {
                let code = *b.last().unwrap_or(&0x80);
                return if code <= 2 {
                    Ok(())
                } else {
                    Err(format!("SUBACK code {code:#04x}"))
                };
            }
        }
    }

    /// UNSUBSCRIBE and wait for the UNSUBACK.
    pub fn unsubscribe(&mut self, topic: &str) -> Result<(), String> {
        let id = self.id();
        let mut body = id.to_be_bytes().to_vec();
        if self.v5 {
            body.push(0);
        }
        body.extend(mqtt_field(topic.as_bytes()));
        self.s
            .write_all(&mqtt_packet(0xA2, &body))
            .map_err(|e| format!("send UNSUBSCRIBE: {e}"))?;
        loop {
            let (t, _) = self.read_packet(Duration::from_secs(10))?;
            if t >> 4 == 11 {
                return Ok(());
            }
        }
    }

    /// PUBLISH at QoS 1 and wait for the PUBACK.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), String> {
        let id = self.id();
        let mut body = Vec::new();
        body.extend(mqtt_field(topic.as_bytes()));
        body.extend_from_slice(&id.to_be_bytes());
        if self.v5 {
            body.push(0);
        }
        body.extend_from_slice(payload);
        self.s
            .write_all(&mqtt_packet(0x32, &body))
            .map_err(|e| format!("send PUBLISH: {e}"))?;
        loop {
            let (t, b) = self.read_packet(Duration::from_secs(10))?;
            if t >> 4 == 4 {
                if b.len() > 2 && b[2] >= 0x80 {
                    return Err(format!("PUBACK reason {:#04x}", b[2]));
                }
                return Ok(());
            }
        }
    }

    /// Wait for a PUBLISH (acknowledging QoS 1): (topic, payload).
    pub fn next_publish(&mut self, timeout: Duration) -> Result<(String, Vec<u8>), String> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let (t, b) = self.read_packet(left)?;
            if t >> 4 != 3 {
                continue;
            }
            let qos = (t >> 1) & 3;
            let tl = u16::from_be_bytes([b[0], b[1]]) as usize;
            let topic = String::from_utf8_lossy(&b[2..2 + tl]).to_string();
            let mut i = 2 + tl;
            if qos > 0 {
                let id = [b[i], b[i + 1]];
                i += 2;
                let _ = self.s.write_all(&[0x40, 0x02, id[0], id[1]]);
            }
            if self.v5 {
                let (plen, n) = varint(&b[i..]).ok_or("PUBLISH: bad property length")?;
                i += n + plen;
            }
            return Ok((topic, b[i..].to_vec()));
        }
    }

    /// PINGREQ → PINGRESP: true while the session answers.
    pub fn ping(&mut self) -> bool {
        if self.s.write_all(&PINGREQ).is_err() {
            return false;
        }
        matches!(self.read_packet(Duration::from_secs(5)), Ok((0xD0, _)))
    }

    /// True when the connection is closed by the other side within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            match self.read_packet(Duration::from_millis(200)) {
                Err(e) if e.contains("timed out") => continue,
                Err(_) => return true,
                Ok(_) => continue,
            }
        }
        false
    }

    /// Send DISCONNECT (normal; a persistent session stays on the broker) and close.
    pub fn disconnect(mut self) {
        let _ = self.s.write_all(&DISCONNECT);
        let _ = self.s.shutdown(std::net::Shutdown::Write);
        // Wait for the broker to close, so the session is offline when we return.
        let _ = self.closed_within(Duration::from_secs(5));
    }
}

/// (first byte, header length, body length) once the fixed header is complete.
fn frame(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let first = *buf.first()?;
    let (len, n) = varint(buf.get(1..)?)?;
    Some((first, 1 + n, len))
}
