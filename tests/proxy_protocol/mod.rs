//! PROXY protocol with a real mqgate binary and a real Mosquitto.
//!
//! In: test clients send v1 and v2 headers to a `proxy_protocol = true` listener; the
//! real client address must reach the logs and the header sent on to the broker; a
//! header from a source outside `trusted_proxies` is closed and counted as `proxy`.
//! Out: Mosquitto 2.0 cannot read PROXY headers, so the "broker" mqgate talks to is a
//! recorder written here: it stores the header bytes it receives, then relays the rest
//! to a real Mosquitto, so that clients still get a real CONNACK. The v2 TLS TLVs are
//! compared with those of HAProxy 2.6 (`send-proxy-v2-ssl-cn`) for the same client.
//!
//! `incoming`: headers in; `outgoing`: v2 headers out with TLS TLVs. The recorder and
//! set-up here are shared by them.

mod incoming;
mod outgoing;

use crate::common::pki::write;
use crate::common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A TCP "broker" that records PROXY headers, then relays to `upstream`. The headers
/// of mqgate's own connections (health checks: `PROXY UNKNOWN`, v2 LOCAL) are kept
/// apart.
struct Recorder {
    port: u16,
    headers: Arc<Mutex<Vec<Vec<u8>>>>,
    checks: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// A header of a proxy's own connection: v1 `PROXY UNKNOWN`, v2 command LOCAL.
fn own_connection(h: &[u8]) -> bool {
    h == b"PROXY UNKNOWN\r\n" || (h.len() >= 16 && h.starts_with(b"\r\n\r\n") && h[12] == 0x20)
}

fn header_len(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"PROXY ") {
        return buf.windows(2).position(|w| w == b"\r\n").map(|i| i + 2);
    }
    if buf.starts_with(b"\r\n\r\n\0\r\nQUIT\n") && buf.len() >= 16 {
        let n = 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize;
        return (buf.len() >= n).then_some(n);
    }
    None
}

impl Recorder {
    fn start(upstream: u16) -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        let port = l.local_addr().expect("addr").port();
        let headers = Arc::new(Mutex::new(Vec::new()));
        let checks = Arc::new(Mutex::new(Vec::new()));
        let (h2, k2) = (headers.clone(), checks.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let (h, k) = (h2.clone(), k2.clone());
                std::thread::spawn(move || serve(conn, upstream, h, k));
            }
        });
        Recorder {
            port,
            headers,
            checks,
        }
    }

    /// Headers of mqgate's own connections (its health checks).
    fn check_headers(&self) -> Vec<Vec<u8>> {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn headers(&self) -> Vec<Vec<u8>> {
        self.headers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn serve(
    mut c: TcpStream,
    upstream: u16,
    headers: Arc<Mutex<Vec<Vec<u8>>>>,
    checks: Arc<Mutex<Vec<Vec<u8>>>>,
) {
    if c.set_read_timeout(Some(Duration::from_secs(5))).is_err() {
        return;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Health checks (check = "tcp") connect and close without a byte.
    let hl = loop {
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(n) = header_len(&buf) {
            break n;
        }
        if !matches!(buf[0], b'P' | b'\r') {
            break 0;
        }
    };
    let to = if own_connection(&buf[..hl]) {
        &checks
    } else {
        &headers
    };
    to.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(buf[..hl].to_vec());
    let Ok(mut b) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let ready = c
        .set_read_timeout(None)
        .and_then(|()| b.write_all(&buf[hl..]));
    let (Ok(()), Ok(mut c2), Ok(mut b2)) = (ready, c.try_clone(), b.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut b2, &mut c2);
        let _ = c2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut c, &mut b);
    let _ = b.shutdown(std::net::Shutdown::Write);
}

fn config(admin: u16, listen: u16, node: u16, out: &str, trusted: &str) -> String {
    format!(
        "{}\n[limits]\nper_ip_connect_rate = 3\n\n[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:{listen}\"\ncluster = \"brokers\"\n\
         proxy_protocol = true\ntrusted_proxies = [\"{trusted}\"]\n\n\
         [clusters.brokers]\nmode = \"dynsec\"\nsend_proxy_protocol = \"{out}\"\n\
         nodes = [ {{ name = \"rec\", address = \"127.0.0.1:{node}\" }} ]\n\
         [clusters.brokers.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\nrise = 1\nfall = 1\n",
        Gate::admin_section(admin)
    )
}

/// Connect, send `prefix` + a CONNECT, return the CONNACK bytes (empty if closed).
fn mqtt_through(port: u16, prefix: &[u8], id: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut out = prefix.to_vec();
    out.extend(mqgate::mqtt::encode_connect_v311(id, None, None, 30));
    s.write_all(&out).expect("write");
    let mut ack = [0u8; 4];
    match s.read_exact(&mut ack) {
        Ok(()) => ack.to_vec(),
        Err(_) => Vec::new(),
    }
}

fn setup(out: &str, trusted: &str) -> (tempfile::TempDir, Mosquitto, Recorder, Gate, u16) {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let rec = Recorder::start(broker.port);
    let (admin, listen) = (free_port(), free_port());
    let gate = Gate::start(
        dir.path(),
        "gate",
        &config(admin, listen, rec.port, out, trusted),
        admin,
    );
    gate.wait_node_up("rec");
    (dir, broker, rec, gate, listen)
}
