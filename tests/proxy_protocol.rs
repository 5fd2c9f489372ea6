//! PROXY protocol with a real mqgate binary and a real Mosquitto.
//!
//! In: test clients send v1 and v2 headers to a `proxy_protocol = true` listener; the
//! real client address must reach the logs and the header sent on to the broker; a
//! header from a source outside `trusted_proxies` is closed and counted as `proxy`.
//! Out: Mosquitto 2.0 cannot read PROXY headers, so the "broker" mqgate talks to is a
//! recorder written here: it stores the header bytes it receives, then relays the rest
//! to a real Mosquitto, so that clients still get a real CONNACK.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A TCP "broker" that records PROXY headers, then relays to `upstream`.
struct Recorder {
    port: u16,
    headers: Arc<Mutex<Vec<Vec<u8>>>>,
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
        let h2 = headers.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let h = h2.clone();
                std::thread::spawn(move || serve(conn, upstream, h));
            }
        });
        Recorder { port, headers }
    }

    fn headers(&self) -> Vec<Vec<u8>> {
        self.headers.lock().unwrap().clone()
    }
}

fn serve(mut c: TcpStream, upstream: u16, headers: Arc<Mutex<Vec<Vec<u8>>>>) {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
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
    headers.lock().unwrap().push(buf[..hl].to_vec());
    let Ok(mut b) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    c.set_read_timeout(None).unwrap();
    b.write_all(&buf[hl..]).unwrap();
    let (mut c2, mut b2) = (c.try_clone().unwrap(), b.try_clone().unwrap());
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
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = prefix.to_vec();
    out.extend(mqgate::mqtt::encode_connect_v311(id, None, None, 30));
    s.write_all(&out).expect("write");
    let mut ack = [0u8; 4];
    match s.read_exact(&mut ack) {
        Ok(()) => ack.to_vec(),
        Err(_) => Vec::new(),
    }
}

fn v2_in(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h
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
    wait_until(Duration::from_secs(10), "node up", || {
        gate.metric("mqgate_node_up", &[("node", "rec")]) == 1.0
    });
    (dir, broker, rec, gate, listen)
}

#[test]
fn v1_and_v2_in_from_trusted_proxy_carry_the_real_address_out_as_v1() {
    let (_dir, _broker, rec, gate, listen) = setup("v1", "127.0.0.0/8");

    let ack = mqtt_through(
        listen,
        b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 1883\r\n",
        "pp-v1",
    );
    assert_eq!(
        ack,
        [0x20, 0x02, 0x00, 0x00],
        "real CONNACK through the recorder"
    );
    let ack = mqtt_through(
        listen,
        &v2_in([203, 0, 113, 8], 40002, [198, 51, 100, 1], 1883),
        "pp-v2",
    );
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    // LOCAL command (a balancer's own health check): the TCP peer stays the source.
    let mut local = v2_in([0; 4], 0, [0; 4], 0);
    local[12] = 0x20;
    assert_eq!(
        mqtt_through(listen, &local, "pp-local"),
        [0x20, 0x02, 0x00, 0x00]
    );

    wait_until(Duration::from_secs(5), "three headers recorded", || {
        rec.headers().len() == 3
    });
    let got: Vec<String> = rec
        .headers()
        .iter()
        .map(|h| String::from_utf8_lossy(h).to_string())
        .collect();
    assert!(
        got.contains(&"PROXY TCP4 203.0.113.7 198.51.100.1 40001 1883\r\n".to_string()),
        "{got:?}"
    );
    assert!(
        got.contains(&"PROXY TCP4 203.0.113.8 198.51.100.1 40002 1883\r\n".to_string()),
        "{got:?}"
    );
    let local_line = got
        .iter()
        .find(|h| h.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 "))
        .expect("LOCAL keeps peer");
    assert!(
        local_line.ends_with(&format!(" {listen}\r\n")),
        "{local_line}"
    );

    wait_until(Duration::from_secs(5), "real address in the log", || {
        let log = gate.log_text();
        log.contains("203.0.113.7:40001") && log.contains("203.0.113.8:40002")
    });
    assert_eq!(
        gate.metric("mqgate_connections_rejected_total", &[("reason", "proxy")]),
        0.0
    );
}

#[test]
fn missing_or_malformed_header_is_refused_and_counted() {
    let (_dir, _broker, rec, gate, listen) = setup("off", "127.0.0.0/8");
    // A plain CONNECT where a header is expected, a broken v1 line, a bad v2 version.
    assert!(mqtt_through(listen, b"", "no-header").is_empty());
    assert!(mqtt_through(listen, b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n", "bad-v1").is_empty());
    let mut bad = v2_in([1, 2, 3, 4], 1, [5, 6, 7, 8], 2);
    bad[12] = 0x31;
    assert!(mqtt_through(listen, &bad, "bad-v2").is_empty());
    wait_until(Duration::from_secs(5), "3 refusals counted", || {
        gate.metric("mqgate_connections_rejected_total", &[("reason", "proxy")]) == 3.0
    });
    assert!(rec.headers().is_empty(), "no broker contacted");
    // Still serving well-formed headers (and nothing to send out with "off").
    let ack = mqtt_through(listen, b"PROXY UNKNOWN\r\n", "ok");
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    wait_until(Duration::from_secs(5), "relayed", || {
        rec.headers().len() == 1
    });
    assert!(
        rec.headers()[0].is_empty(),
        "send_proxy_protocol = off sends no header"
    );
}

#[test]
fn header_from_untrusted_source_is_closed_and_counted() {
    let (_dir, _broker, rec, gate, listen) = setup("v2", "10.0.0.0/8");
    let ack = mqtt_through(
        listen,
        b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 1883\r\n",
        "spoof",
    );
    assert!(ack.is_empty(), "closed without a CONNACK");
    wait_until(Duration::from_secs(5), "counted as proxy", || {
        gate.metric("mqgate_connections_rejected_total", &[("reason", "proxy")]) == 1.0
    });
    assert!(rec.headers().is_empty(), "no broker contacted");
}

#[test]
fn v2_out_carries_tls_version_cipher_and_client_cn() {
    let dir = tempdir();
    let d = dir.path();
    let broker = Mosquitto::start("b1", d);
    let rec = Recorder::start(broker.port);
    let pki = Pki::new("server CA");
    let (ca, cert, key) = pki.write_server(d, "server");
    let clients = Pki::new("client CA");
    std::fs::write(d.join("client-ca.pem"), &clients.ca_pem).unwrap();
    let (cc, ck) = clients.leaf("device-42", &["device-42"]);
    std::fs::write(d.join("client.pem"), cc).unwrap();
    std::fs::write(d.join("client.key"), ck).unwrap();
    let (admin, listen) = (free_port(), free_port());
    let toml = format!(
        "{}\n[[listeners]]\nname = \"mqtts\"\nbind = \"127.0.0.1:{listen}\"\ncluster = \"brokers\"\n\
         [listeners.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\n\
         [clusters.brokers]\nmode = \"dynsec\"\nsend_proxy_protocol = \"v2\"\n\
         nodes = [ {{ name = \"rec\", address = \"127.0.0.1:{}\" }} ]\n\
         [clusters.brokers.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\nrise = 1\nfall = 1\n",
        Gate::admin_section(admin),
        cert.display(),
        key.display(),
        d.join("client-ca.pem").display(),
        rec.port
    );
    let gate = Gate::start(d, "gate", &toml, admin);
    wait_until(Duration::from_secs(10), "node up", || {
        gate.metric("mqgate_node_up", &[("node", "rec")]) == 1.0
    });
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "localhost",
            "-p",
            &listen.to_string(),
            "-i",
            "tls-pp",
            "-q",
            "1",
        ])
        .args(["-t", "pp/test", "-m", "hello"])
        .arg("--cafile")
        .arg(&ca)
        .arg("--cert")
        .arg(d.join("client.pem"))
        .arg("--key")
        .arg(d.join("client.key"))
        .output()
        .expect("mosquitto_pub");
    assert!(
        out.status.success(),
        "publish over mTLS through the recorder: {out:?}"
    );

    wait_until(Duration::from_secs(5), "header recorded", || {
        !rec.headers().is_empty()
    });
    let h = &rec.headers()[0];
    assert!(
        h.starts_with(b"\r\n\r\n\0\r\nQUIT\n\x21\x11"),
        "v2 PROXY TCP4: {h:?}"
    );
    assert_eq!(&h[16..20], &[127, 0, 0, 1], "source address");
    assert_eq!(
        u16::from_be_bytes([h[26], h[27]]),
        listen,
        "destination port"
    );
    // PP2_TYPE_SSL: client = SSL | CERT_CONN, verify = 0, then sub-TLVs.
    let tlvs = &h[28..];
    let mut ssl = None;
    let mut rest = tlvs;
    while rest.len() >= 3 {
        let len = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        if rest[0] == 0x20 {
            ssl = Some(rest[3..3 + len].to_vec());
        }
        rest = &rest[3 + len..];
    }
    let ssl = ssl.expect("PP2_TYPE_SSL present");
    assert_eq!(ssl[0], 0x03, "client flags SSL|CERT_CONN");
    assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verified");
    let mut subs = std::collections::HashMap::new();
    let mut rest = &ssl[5..];
    while rest.len() >= 3 {
        let len = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        subs.insert(
            rest[0],
            String::from_utf8_lossy(&rest[3..3 + len]).to_string(),
        );
        rest = &rest[3 + len..];
    }
    assert_eq!(
        subs.get(&0x22).map(String::as_str),
        Some("device-42"),
        "client CN"
    );
    assert!(
        subs.get(&0x21)
            .is_some_and(|v| v == "TLSv1.3" || v == "TLSv1.2"),
        "{subs:?}"
    );
    assert!(subs.get(&0x23).is_some_and(|c| c.starts_with("TLS_") && (c.contains("GCM") || c.contains("CHACHA20"))), "{subs:?}");
}

#[test]
fn per_ip_connect_rate_applies_to_the_real_client_not_the_balancer() {
    let (_dir, _broker, _rec, gate, listen) = setup("off", "127.0.0.0/8");
    // per_ip_connect_rate = 3: all connections come from the balancer (127.0.0.1), but
    // only the fourth from the same real client in one burst is over the rate.
    let from = |ip: &str, port: u16| format!("PROXY TCP4 {ip} 198.51.100.1 {port} 1883\r\n");
    for i in 0..3 {
        let ack = mqtt_through(
            listen,
            from("203.0.113.9", 41000 + i).as_bytes(),
            &format!("r{i}"),
        );
        assert_eq!(
            ack,
            [0x20, 0x02, 0x00, 0x00],
            "connection {i} of 203.0.113.9"
        );
    }
    assert!(mqtt_through(listen, from("203.0.113.9", 41003).as_bytes(), "r3").is_empty());
    let ack = mqtt_through(listen, from("203.0.113.10", 41004).as_bytes(), "other");
    assert_eq!(
        ack,
        [0x20, 0x02, 0x00, 0x00],
        "another real client is not limited"
    );
    assert_eq!(
        gate.metric("mqgate_connections_rejected_total", &[("reason", "rate")]),
        1.0
    );
}
