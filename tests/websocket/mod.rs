//! MQTT over WebSocket (`[listeners.websocket]`, issue 25) with real clients: paho-mqtt
//! (Python, `transport="websockets"`) over ws:// and wss://, MQTT 3.1.1 and 5, QoS
//! 0/1/2, 1 B to 100 KB; headless Chromium with MQTT.js and with the bare `WebSocket`
//! API (`browser.rs`); routing (the same client id over WS then TCP lands on the same
//! node, WS clients follow the full-sync leader); reload; and every bad input with its
//! answer and counter while another client carries on.

mod browser;

use crate::common::fleet::addresses;
use crate::common::mqtt::{read_to_close, tcp, varint, Connect, Ended};
use crate::common::pki::Pki;
use crate::common::tools::paho_python;
use crate::common::{gate_config, port_open, sticky_node, tempdir, wait_until, Gate, Mosquitto};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const REJECTED: &str = "mqgate_connections_rejected_total";

/// A `[[listeners]]` table for MQTT over WebSocket (`tls`: extra lines for wss).
pub fn ws_listener(name: &str, port: u16, ws_extra: &str, tls: &str) -> String {
    format!(
        "\n[[listeners]]\nname = \"{name}\"\nbind = \"127.0.0.1:{port}\"\ncluster = \"brokers\"\n[listeners.websocket]\n{ws_extra}\n{tls}\n"
    )
}

/// A raw WebSocket client over TCP: frames built and read by hand.
pub struct WsClient {
    pub s: TcpStream,
    buf: Vec<u8>,
    mqtt: Vec<u8>,
}

/// Send an upgrade request (`extra`: more header lines) and read the response head.
pub fn upgrade(port: u16, path: &str, extra: &str) -> (u16, String, WsClient) {
    let mut s = tcp(port);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).expect("send upgrade request");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        head,
        WsClient {
            s,
            buf: Vec::new(),
            mqtt: Vec::new(),
        },
    )
}

/// A WebSocket connection upgraded with subprotocol `mqtt` (asserts the `101`).
pub fn ws_open(port: u16) -> WsClient {
    let (status, head, c) = upgrade(port, "/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n");
    assert_eq!(status, 101, "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    c
}

/// A client frame: `b0` (FIN, opcode), masked unless `masked` is false.
pub fn frame(b0: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x5a, 0x13, 0xc7, 0x01];
    let m = if masked { 0x80 } else { 0 };
    let mut v = vec![b0];
    match payload.len() {
        n if n < 126 => v.push(m | n as u8),
        n if n <= 0xFFFF => {
            v.push(m | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(m | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        v.extend_from_slice(payload);
    }
    v
}

impl WsClient {
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send frame bytes");
    }

    /// MQTT bytes in one masked binary frame.
    pub fn send(&mut self, mqtt: &[u8]) {
        self.send_raw(&frame(0x82, mqtt, true));
    }

    /// The next server frame: (first byte, payload); None on close or timeout.
    pub fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let (len, at) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(a) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                if len != usize::MAX && self.buf.len() >= at + len {
                    let b0 = self.buf[0];
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((b0, payload));
                }
            }
            let mut b = [0u8; 65536];
            match self.s.read(&mut b) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
            }
        }
    }

    /// The next MQTT packet from the binary frames: (first byte, body).
    pub fn packet(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.mqtt.len() >= 2 {
                if let Some((n, l)) = varint(&self.mqtt[1..]) {
                    if self.mqtt.len() >= 1 + l + n {
                        let first = self.mqtt[0];
                        let body = self.mqtt[1 + l..1 + l + n].to_vec();
                        self.mqtt.drain(..1 + l + n);
                        return Some((first, body));
                    }
                }
            }
            let (b0, payload) = self.frame()?;
            match b0 {
                0x82 | 0x80 | 0x02 | 0x00 => self.mqtt.extend_from_slice(&payload),
                0x88 => return None,
                _ => {}
            }
        }
    }

    /// CONNECT in a frame, expect CONNACK accepted.
    pub fn mqtt_connect(&mut self, c: &Connect) {
        self.send(&c.bytes());
        let (first, body) = self.packet().expect("CONNACK");
        assert_eq!(first, 0x20, "CONNACK expected");
        assert_eq!(body[1], 0, "CONNACK accepted");
    }
}

fn subscribe(topic: &str) -> Vec<u8> {
    crate::common::mqtt::subscribe_v311(1, topic, 0)
}

fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = crate::common::mqtt::mqtt_field(topic.as_bytes());
    body.extend_from_slice(payload);
    crate::common::mqtt::mqtt_packet(0x30, &body)
}

/// A QoS 0 round trip through an open, subscribed client.
fn echo(c: &mut WsClient, topic: &str, payload: &[u8]) {
    c.send(&publish(topic, payload));
    loop {
        let (first, body) = c.packet().expect("PUBLISH back");
        if first & 0xF0 == 0x30 {
            assert!(body.ends_with(payload), "payload back");
            return;
        }
    }
}

const PAHO: &str = r#"
import sys, time, threading, ssl
import paho.mqtt.client as mqtt
port, version, ca, tag = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
proto = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
got, cond = [], threading.Condition()
def on_message(c, u, m):
    with cond:
        got.append((m.qos, m.payload)); cond.notify_all()
def client(cid):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=proto, transport="websockets")
    c.ws_set_options(path="/mqtt")
    if ca != "-":
        c.tls_set(ca_certs=ca)
    c.connect("127.0.0.1", port, keepalive=30)
    return c
sub = client(tag + "-sub"); sub.on_message = on_message
sub.loop_start()
sub.subscribe("ws/" + tag, qos=2)
time.sleep(0.1)
pub = client(tag + "-pub"); pub.loop_start()
sent = []
for qos in (0, 1, 2):
    for size in (1, 1000, 16 * 1024, 100 * 1024):
        payload = bytes((i * 7 + size + qos) % 256 for i in range(size))
        pub.publish("ws/" + tag, payload, qos=qos).wait_for_publish(10)
        sent.append((qos, payload))
with cond:
    cond.wait_for(lambda: len(got) >= len(sent), timeout=30)
assert sorted(got) == sorted(sent), f"got {len(got)} of {len(sent)}"
pub.disconnect(); sub.disconnect(); pub.loop_stop(); sub.loop_stop()
print("OK", len(got))
"#;

#[test]
fn paho_over_ws_and_wss_v311_and_v5_qos_0_1_2_from_1_byte_to_100_kb() {
    let dir = tempdir();
    let node = Mosquitto::start("node1", dir.path());
    let pki = Pki::new("ws test CA");
    let (ca, cert, key) = pki.write_server(dir.path(), "gw");
    let (ws, wss) = (crate::common::free_port(), crate::common::free_port());
    let tls = format!(
        "[listeners.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let (gate, _tcp) = Gate::start_with(dir.path(), "gate", |listen, admin| {
        let more = ws_listener("ws", ws, "", "") + &ws_listener("wss", wss, "", &tls);
        gate_config(
            listen,
            admin,
            "dynsec",
            &addresses(std::slice::from_ref(&node)),
            "",
            "",
            &more,
        )
    });
    gate.wait_node_up("node1");
    let script = dir.path().join("paho_ws.py");
    std::fs::write(&script, PAHO).expect("write script");
    for (port, ca, scheme) in [
        (ws, "-".to_string(), "ws"),
        (wss, ca.display().to_string(), "wss"),
    ] {
        for version in ["4", "5"] {
            let tag = format!("{scheme}-v{version}");
            let out = paho_python()
                .arg(&script)
                .args([&port.to_string(), version, &ca, &tag])
                .output()
                .expect("run python3");
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && text.contains("OK 12"),
                "{tag}: {text}"
            );
        }
    }
    for (l, t) in [("ws", "ws"), ("wss", "wss"), ("mqtt", "tcp")] {
        assert_eq!(
            gate.metric("mqgate_listener_info", &[("listener", l), ("transport", t)]),
            1.0,
            "listener {l} shown as {t}"
        );
    }
    let accepted = |l: &str| gate.metric("mqgate_connections_total", &[("listener", l)]);
    assert!(accepted("ws") >= 4.0 && accepted("wss") >= 4.0);
    let status = crate::common::admin::status_json(gate.admin_port);
    let shown: Vec<String> = status["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .map(|l| format!("{}={}", l["name"], l["transport"]))
        .collect();
    assert!(shown.contains(&"\"wss\"=\"wss\"".to_string()), "{shown:?}");
}

#[test]
fn every_bad_input_has_its_answer_and_counter_and_another_client_carries_on() {
    let dir = tempdir();
    let node = Mosquitto::start("node1", dir.path());
    let ws = crate::common::free_port();
    let origins = "allowed_origins = [\"https://app.example.com\"]";
    let (gate, _tcp) = Gate::start_with(dir.path(), "gate", |listen, admin| {
        let more = ws_listener("ws", ws, origins, "");
        gate_config(
            listen,
            admin,
            "dynsec",
            &addresses(std::slice::from_ref(&node)),
            "",
            "",
            &more,
        )
    });
    gate.wait_node_up("node1");
    let rejected = |reason: &str| gate.metric(REJECTED, &[("listener", "ws"), ("reason", reason)]);

    // Another client, open all along.
    let mut other = ws_open(ws);
    other.mqtt_connect(&Connect::new("bystander"));
    other.send(&subscribe("bystander/t"));
    assert_eq!(other.packet().expect("SUBACK").0, 0x90);

    let proto = "Sec-WebSocket-Protocol: mqtt\r\n";
    let http_cases = [
        ("/mqtt", "", "plain GET", 426, "ws_upgrade"),
        ("/other", proto, "wrong path", 404, "ws_path"),
        (
            "/mqtt",
            "Origin: https://evil.example\r\nSec-WebSocket-Protocol: mqtt\r\n",
            "origin",
            403,
            "ws_origin",
        ),
        ("/mqtt", "", "no subprotocol", 400, "ws_subprotocol"),
        (
            "/mqtt",
            "Sec-WebSocket-Protocol: chat\r\n",
            "other subprotocol",
            400,
            "ws_subprotocol",
        ),
    ];
    for (path, extra, what, status, reason) in http_cases {
        let before = rejected(reason);
        let (got, head, mut c) = if what == "plain GET" {
            let mut s = tcp(ws);
            s.write_all(b"GET /mqtt HTTP/1.1\r\nHost: gw\r\n\r\n")
                .expect("send GET");
            let (bytes, _) = read_to_close(&mut s, Duration::from_secs(10));
            let head = String::from_utf8_lossy(&bytes).to_string();
            let code = head
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            (code, head, ws_open(ws))
        } else {
            upgrade(ws, path, extra)
        };
        assert_eq!(got, status, "{what}: {head}");
        assert!(head.contains("Connection: close"), "{what}: {head}");
        if what != "plain GET" {
            assert_ne!(
                read_to_close(&mut c.s, Duration::from_secs(10)).1,
                Ended::Open,
                "{what}: closed"
            );
        }
        wait_until(Duration::from_secs(5), &format!("{reason} counted"), || {
            rejected(reason) == before + 1.0
        });
    }

    // MQTT straight onto the WebSocket port: 400 at once, not a wait for a blank line.
    let before = rejected("ws_request");
    let mut s = tcp(ws);
    s.write_all(&Connect::new("tcp-on-ws").bytes())
        .expect("send CONNECT");
    let (bytes, end) = read_to_close(&mut s, Duration::from_secs(10));
    assert!(
        bytes.starts_with(b"HTTP/1.1 400 "),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert_ne!(end, Ended::Open);
    wait_until(Duration::from_secs(5), "ws_request counted", || {
        rejected("ws_request") == before + 1.0
    });

    // Frames refused before the CONNECT: a close frame with its code, then the close.
    let mut huge = vec![0x82, 0xFF];
    huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    let mut over_cap = vec![0x82, 0xFF];
    over_cap.extend_from_slice(&(1u64 << 40).to_be_bytes());
    over_cap.extend_from_slice(&[1, 2, 3, 4]);
    let connect = Connect::new("x").bytes();
    let frame_cases: [(&str, Vec<u8>, u16, &str); 4] = [
        (
            "unmasked frame",
            frame(0x82, &connect, false),
            1002,
            "ws_frame",
        ),
        (
            "text frame",
            frame(0x81, b"{\"connect\":1}", true),
            1003,
            "ws_text",
        ),
        ("2^63 declared", huge, 1009, "too_large"),
        (
            "2^40 declared, over max_connect_size",
            over_cap,
            1009,
            "too_large",
        ),
    ];
    for (what, bytes, code, reason) in frame_cases {
        let before = rejected(reason);
        let mut c = ws_open(ws);
        c.send_raw(&bytes);
        let (b0, payload) = c.frame().unwrap_or_else(|| panic!("{what}: a close frame"));
        assert_eq!(
            (b0, payload.get(..2)),
            (0x88, Some(&code.to_be_bytes()[..])),
            "{what}"
        );
        assert_ne!(
            read_to_close(&mut c.s, Duration::from_secs(10)).1,
            Ended::Open,
            "{what}: closed"
        );
        wait_until(
            Duration::from_secs(5),
            &format!("{what} counted as {reason}"),
            || rejected(reason) == before + 1.0,
        );
    }
    // The broker was never contacted for any of them, and the bystander carries on.
    assert_eq!(
        gate.metric("mqgate_connections_total", &[("listener", "ws")]),
        1.0
    );
    echo(&mut other, "bystander/t", b"still here");
    let log = gate.log_text();
    for needle in [
        "HTTP 426",
        "HTTP 404",
        "HTTP 403",
        "unmasked client frame",
        "text frame",
    ] {
        assert!(log.contains(needle), "debug log names {needle}");
    }
}

#[test]
fn connect_split_over_frames_with_ping_and_several_packets_in_one_frame() {
    let dir = tempdir();
    let node = Mosquitto::start("node1", dir.path());
    let ws = crate::common::free_port();
    let (gate, _tcp) = Gate::start_with(dir.path(), "gate", |listen, admin| {
        let more = ws_listener("ws", ws, "path = \"/\"", "");
        gate_config(
            listen,
            admin,
            "dynsec",
            &addresses(std::slice::from_ref(&node)),
            "",
            "",
            &more,
        )
    });
    gate.wait_node_up("node1");
    let (status, head, mut c) = upgrade(ws, "/", "Sec-WebSocket-Protocol: mqttv3.1, mqtt\r\n");
    assert_eq!(status, 101, "{head}");
    assert!(
        head.contains("Sec-WebSocket-Protocol: mqttv3.1\r\n"),
        "the first offered: {head}"
    );
    // CONNECT cut in three fragments of one message, a ping between them, and
    // SUBSCRIBE + PUBLISH together in the last frame.
    let connect = Connect::new("split").v5(true).bytes();
    c.send_raw(&frame(0x02, &connect[..3], true));
    c.send_raw(&frame(0x89, b"are you there", true));
    c.send_raw(&frame(0x00, &connect[3..9], true));
    let mut tail = connect[9..].to_vec();
    tail.extend(crate::common::mqtt::mqtt_packet(
        0x82,
        &[0, 1, 0, 0, 7, b's', b'p', b'l', b'i', b't', b'/', b't', 0],
    ));
    c.send_raw(&frame(0x80, &tail, true));
    assert_eq!(
        c.frame(),
        Some((0x8A, b"are you there".to_vec())),
        "pong echoes the ping"
    );
    assert_eq!(c.packet().expect("CONNACK").0, 0x20);
    assert_eq!(c.packet().expect("SUBACK").0, 0x90);
    // v5 PUBLISH (empty properties) comes back in a binary frame.
    let mut body = crate::common::mqtt::mqtt_field(b"split/t");
    body.push(0);
    body.extend_from_slice(b"payload");
    c.send(&crate::common::mqtt::mqtt_packet(0x30, &body));
    let (first, back) = c.packet().expect("PUBLISH");
    assert_eq!(first & 0xF0, 0x30);
    assert!(back.ends_with(b"payload"));
    // The client's close frame: the gateway closes the broker side and answers with
    // a close frame of its own.
    c.send_raw(&frame(0x88, &1000u16.to_be_bytes(), true));
    assert_eq!(c.frame().map(|f| f.0), Some(0x88));
    assert_ne!(
        read_to_close(&mut c.s, Duration::from_secs(10)).1,
        Ended::Open
    );
    wait_until(Duration::from_secs(5), "connection gone", || {
        gate.metric("mqgate_connections_active", &[]) == 0.0
    });
}

#[test]
fn same_client_id_over_ws_then_tcp_lands_on_the_same_node() {
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 2);
    let ws = crate::common::free_port();
    let (gate, tcp_port) = Gate::start_with(dir.path(), "gate", |listen, admin| {
        let more = ws_listener("ws", ws, "", "");
        gate_config(
            listen,
            admin,
            "dynsec",
            &addresses(&nodes),
            "balance = \"round-robin\"",
            "",
            &more,
        )
    });
    gate.wait_node_up("node1");
    gate.wait_node_up("node2");
    for id in ["dash-1", "dash-2", "dash-3"] {
        let mut c = ws_open(ws);
        c.mqtt_connect(&Connect::new(id).persistent());
        let node = sticky_node(gate.admin_port, id).expect("sticky entry written");
        let on = |n: &str| gate.metric("mqgate_connections_active", &[("node", n)]);
        let before = on(&node);
        drop(c);
        wait_until(Duration::from_secs(5), "WS session gone", || {
            on(&node) == before - 1.0
        });
        let _s = crate::common::mqtt::session(tcp_port, &Connect::new(id).persistent())
            .expect("TCP session");
        wait_until(
            Duration::from_secs(5),
            &format!("{id} over TCP on {node}"),
            || on(&node) == before,
        );
        assert_eq!(
            sticky_node(gate.admin_port, id).as_deref(),
            Some(node.as_str())
        );
    }
}

#[test]
fn ws_clients_follow_the_full_sync_leader() {
    let dir = tempdir();
    let mut nodes = Mosquitto::start_nodes(dir.path(), 2);
    let ws = crate::common::free_port();
    let (gate, _tcp) = Gate::start_with(dir.path(), "gate", |listen, admin| {
        let more = ws_listener("ws", ws, "", "");
        gate_config(
            listen,
            admin,
            "full-sync",
            &addresses(&nodes),
            "",
            "",
            &more,
        )
    });
    wait_until(Duration::from_secs(10), "node1 leads", || {
        gate.metric("mqgate_node_leader", &[("node", "node1")]) == 1.0
    });
    let mut c = ws_open(ws);
    c.mqtt_connect(&Connect::new("follower"));
    assert_eq!(
        gate.metric("mqgate_connections_active", &[("node", "node1")]),
        1.0
    );
    nodes[0].stop();
    wait_until(Duration::from_secs(10), "node2 leads", || {
        gate.metric("mqgate_node_leader", &[("node", "node2")]) == 1.0
    });
    assert!(
        c.packet().is_none(),
        "the session through the old leader is closed"
    );
    let mut again = ws_open(ws);
    again.mqtt_connect(&Connect::new("follower"));
    assert_eq!(
        gate.metric("mqgate_connections_active", &[("node", "node2")]),
        1.0
    );
}

#[test]
fn reload_adds_changes_and_removes_a_websocket_listener() {
    let dir = tempdir();
    let node = Mosquitto::start("node1", dir.path());
    let ws = crate::common::free_port();
    let nodes = addresses(std::slice::from_ref(&node));
    let mut base = String::new();
    let (gate, listen) = Gate::start_with(dir.path(), "gate", |listen, admin| {
        base = gate_config(listen, admin, "dynsec", &nodes, "", "", "");
        base.clone()
    });
    let _ = listen;
    gate.wait_node_up("node1");
    assert!(!port_open(ws));
    gate.reload_with(&format!("{base}{}", ws_listener("ws", ws, "", "")));
    let mut c = ws_open(ws);
    c.mqtt_connect(&Connect::new("reloaded"));
    let info = |t: &str| {
        gate.metric(
            "mqgate_listener_info",
            &[("listener", "ws"), ("transport", t)],
        )
    };
    assert_eq!(info("ws"), 1.0);
    gate.reload_with(&format!(
        "{base}{}",
        ws_listener("ws", ws, "path = \"/v2\"", "")
    ));
    assert_eq!(
        upgrade(ws, "/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n").0,
        404
    );
    let (status, _, mut c2) = upgrade(ws, "/v2", "Sec-WebSocket-Protocol: mqtt\r\n");
    assert_eq!(status, 101);
    c2.mqtt_connect(&Connect::new("new-path"));
    c.send(&crate::common::mqtt::PINGREQ);
    assert_eq!(
        c.packet().map(|p| p.0),
        Some(0xD0),
        "the first session kept its socket"
    );
    gate.reload_with(&base);
    wait_until(Duration::from_secs(5), "listener gone", || !port_open(ws));
    assert_eq!(info("ws"), 0.0);
}
