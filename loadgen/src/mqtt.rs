//! The few MQTT 3.1.1 packets the load generator needs, encoded by hand (no client
//! library in the measured path), and an incremental packet splitter for reads.

/// Append an MQTT variable-length "remaining length".
fn put_len(out: &mut Vec<u8>, mut n: usize) {
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

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// CONNECT, MQTT 3.1.1, clean session (or not), no credentials.
pub fn connect(client_id: &str, keep_alive: u16, clean: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + client_id.len());
    put_str(&mut body, b"MQTT");
    body.push(4);
    body.push(if clean { 0x02 } else { 0x00 });
    body.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    let mut out = vec![0x10];
    put_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// SUBSCRIBE to one filter.
pub fn subscribe(packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&packet_id.to_be_bytes());
    put_str(&mut body, filter.as_bytes());
    body.push(qos);
    let mut out = vec![0x82];
    put_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// A PUBLISH and the offsets of its packet id (QoS 1 only) and payload.
pub struct Publish {
    pub bytes: Vec<u8>,
    pub pid_at: Option<usize>,
    pub payload_at: usize,
}

pub fn publish(topic: &str, qos: u8, payload_len: usize) -> Publish {
    let var = 2 + topic.len() + if qos > 0 { 2 } else { 0 };
    let mut out = vec![0x30 | (qos << 1)];
    put_len(&mut out, var + payload_len);
    put_str(&mut out, topic.as_bytes());
    let pid_at = if qos > 0 {
        out.extend_from_slice(&[0, 1]);
        Some(out.len() - 2)
    } else {
        None
    };
    let payload_at = out.len();
    out.resize(payload_at + payload_len, b'x');
    Publish {
        bytes: out,
        pid_at,
        payload_at,
    }
}

pub fn puback(packet_id: u16) -> [u8; 4] {
    let p = packet_id.to_be_bytes();
    [0x40, 0x02, p[0], p[1]]
}

pub const DISCONNECT: [u8; 2] = [0xe0, 0x00];

/// One complete packet found in a buffer.
pub struct Packet<'a> {
    pub kind: u8,
    pub flags: u8,
    pub body: &'a [u8],
}

impl Packet<'_> {
    /// For a PUBLISH: (packet id if QoS > 0, payload).
    pub fn publish_parts(&self) -> Option<(Option<u16>, &[u8])> {
        if self.kind != 3 || self.body.len() < 2 {
            return None;
        }
        let tl = u16::from_be_bytes([self.body[0], self.body[1]]) as usize;
        let mut at = 2 + tl;
        let qos = (self.flags >> 1) & 3;
        let pid = if qos > 0 {
            let p = self.body.get(at..at + 2)?;
            at += 2;
            Some(u16::from_be_bytes([p[0], p[1]]))
        } else {
            None
        };
        Some((pid, self.body.get(at..)?))
    }
}

/// Split `buf` into complete packets, calling `f` for each; returns how many bytes
/// were consumed (the rest is an incomplete packet to keep for the next read).
pub fn split(buf: &[u8], mut f: impl FnMut(Packet<'_>)) -> Result<usize, String> {
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        if rest.len() < 2 {
            return Ok(at);
        }
        let mut len = 0usize;
        let mut mult = 1usize;
        let mut i = 1;
        loop {
            let Some(&b) = rest.get(i) else {
                return Ok(at);
            };
            len += (b & 0x7f) as usize * mult;
            mult *= 128;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            if i > 4 {
                return Err("remaining length over 4 bytes".into());
            }
        }
        if rest.len() < i + len {
            return Ok(at);
        }
        f(Packet {
            kind: rest[0] >> 4,
            flags: rest[0] & 0x0f,
            body: &rest[i..i + len],
        });
        at += i + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_roundtrip_and_split() {
        let p = publish("a/b", 1, 300);
        let mut two = p.bytes.clone();
        two.extend_from_slice(&p.bytes);
        let mut seen = 0;
        let used = split(&two[..two.len() - 5], |pk| {
            let (pid, payload) = pk.publish_parts().unwrap();
            assert_eq!(pid, Some(1));
            assert_eq!(payload.len(), 300);
            seen += 1;
        })
        .unwrap();
        assert_eq!((seen, used), (1, p.bytes.len()));
    }
}
