//! A small blocking MQTT client (3.1.1 and 5.0) for the cluster tests: enough to open
//! persistent sessions, subscribe, publish at QoS 1 and read what arrives, with every
//! read under a timeout. Written out by hand so that the tests control exactly which
//! CONNECT flags go on the wire (clean session, session expiry, credentials).
#![allow(dead_code)]

use crate::common::{mqtt_field, mqtt_packet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a client connects.
#[derive(Clone, Debug)]
pub struct Opts {
    pub client_id: String,
    pub v5: bool,
    /// v3: clean session 0; v5: clean start 0 and session expiry 3600 s.
    pub persistent: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Opts {
    pub fn new(client_id: &str) -> Opts {
        Opts {
            client_id: client_id.to_string(),
            v5: false,
            persistent: false,
            username: None,
            password: None,
        }
    }
    pub fn v5(mut self, v5: bool) -> Opts {
        self.v5 = v5;
        self
    }
    pub fn persistent(mut self) -> Opts {
        self.persistent = true;
        self
    }
    pub fn login(mut self, user: &str, pass: &str) -> Opts {
        self.username = Some(user.to_string());
        self.password = Some(pass.to_string());
        self
    }
}

pub fn connect_packet(o: &Opts) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(mqtt_field(b"MQTT"));
    body.push(if o.v5 { 5 } else { 4 });
    let mut flags = if o.persistent { 0 } else { 0x02 };
    if o.username.is_some() {
        flags |= 0x80;
    }
    if o.password.is_some() {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&60u16.to_be_bytes());
    if o.v5 {
        if o.persistent {
            body.extend_from_slice(&[5, 0x11]);
            body.extend_from_slice(&3600u32.to_be_bytes());
        } else {
            body.push(0);
        }
    }
    body.extend(mqtt_field(o.client_id.as_bytes()));
    if let Some(u) = &o.username {
        body.extend(mqtt_field(u.as_bytes()));
    }
    if let Some(p) = &o.password {
        body.extend(mqtt_field(p.as_bytes()));
    }
    mqtt_packet(0x10, &body)
}

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
    pub fn connect(port: u16, o: &Opts) -> Result<(Client, Connack), String> {
        let s = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(5),
        )
        .map_err(|e| format!("connect to {port}: {e}"))?;
        let _ = s.set_nodelay(true);
        let mut c = Client {
            s,
            v5: o.v5,
            buf: Vec::new(),
            next_id: 1,
        };
        c.s.write_all(&connect_packet(o))
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
    pub fn accepted(port: u16, o: &Opts) -> Result<(Client, Connack), String> {
        let (c, ack) = Client::connect(port, o)?;
        if ack.code != 0 {
            return Err(format!(
                "CONNACK code {:#04x} for {}",
                ack.code, o.client_id
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
                let (plen, n) = read_varint(&b[i..]);
                i += n + plen;
            }
            return Ok((topic, b[i..].to_vec()));
        }
    }

    /// PINGREQ → PINGRESP: true while the session answers.
    pub fn ping(&mut self) -> bool {
        if self.s.write_all(&[0xC0, 0x00]).is_err() {
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
        let _ = self.s.write_all(&[0xE0, 0x00]);
        let _ = self.s.shutdown(std::net::Shutdown::Write);
        // Wait for the broker to close, so the session is offline when we return.
        let _ = self.closed_within(Duration::from_secs(5));
    }
}

fn read_varint(b: &[u8]) -> (usize, usize) {
    let mut v = 0usize;
    for (i, byte) in b.iter().enumerate().take(4) {
        v |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return (v, i + 1);
        }
    }
    (v, b.len().min(4))
}

/// (first byte, header length, body length) once the fixed header is complete.
fn frame(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let first = *buf.first()?;
    let mut len = 0usize;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        len |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Some((first, 2 + i, len));
        }
    }
    None
}

/// A TCP forwarder standing in for a broker's client listener: its listener can be
/// closed while connections already made keep flowing, which is what a full-sync
/// node that loses leadership looks like from outside when its clients are not
/// closed by the broker itself.
pub struct Forwarder {
    pub port: u16,
    open: Arc<AtomicBool>,
    target: u16,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    pub fn start(target: u16) -> Forwarder {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind forwarder");
        let port = l.local_addr().expect("forwarder addr").port();
        let mut f = Forwarder {
            port,
            open: Arc::new(AtomicBool::new(false)),
            target,
            thread: None,
        };
        f.run(l);
        f
    }

    fn run(&mut self, l: TcpListener) {
        l.set_nonblocking(true).expect("nonblocking");
        self.open.store(true, Ordering::SeqCst);
        let open = self.open.clone();
        let target = self.target;
        self.thread = Some(std::thread::spawn(move || {
            while open.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((a, _)) => {
                        let _ = a.set_nonblocking(false);
                        if let Ok(b) = TcpStream::connect(("127.0.0.1", target)) {
                            pipe(a, b);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }

    /// Close the listener; established connections keep flowing.
    pub fn close_listener(&mut self) {
        self.open.store(false, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn reopen(&mut self) {
        let l = TcpListener::bind(("127.0.0.1", self.port)).expect("rebind forwarder port");
        self.run(l);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.close_listener();
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    std::thread::spawn(move || copy(a, b2));
    std::thread::spawn(move || copy(b, a2));
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// Health settings for fast tests: probes every 100 ms, up after 2 successes, down after
/// 3 failures; a generous timeout so that a loaded CI machine does not flap nodes.
pub const FAST_HEALTH: &str = "interval = \"100ms\"\nfast_interval = \"50ms\"\ndown_interval = \"100ms\"\ntimeout = \"2s\"\nrise = 2\nfall = 3\n";

/// One plain listener in front of one cluster named `brokers`.
pub fn gate_config(
    listen: u16,
    admin: u16,
    mode: &str,
    nodes: &[(&str, String)],
    cluster_extra: &str,
    health_extra: &str,
    sections: &str,
) -> String {
    let nodes: Vec<String> = nodes
        .iter()
        .map(|(n, a)| format!("{{ name = \"{n}\", address = \"{a}\" }}"))
        .collect();
    format!(
        "[admin]\nbind = \"127.0.0.1:{admin}\"\n\n[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:{listen}\"\ncluster = \"brokers\"\n\n[clusters.brokers]\nmode = \"{mode}\"\nnodes = [ {} ]\n{cluster_extra}\n\n[clusters.brokers.health]\n{FAST_HEALTH}{health_extra}\n{sections}\n",
        nodes.join(", ")
    )
}
