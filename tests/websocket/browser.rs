//! A real browser speaks MQTT through mqgate: headless Chromium loads a page served
//! by the test, whose script connects over WebSocket — with MQTT.js's browser bundle
//! (`tests/clients/node_modules/mqtt/dist/mqtt.min.js`, installed by `npm ci`), and
//! with the bare `WebSocket` API and MQTT packets built by hand. The page posts its
//! result back to the test's server. The listener allows only the page's origin.

use super::ws_listener;
use crate::common::fleet::addresses;
use crate::common::fleet::KillOnDrop;
use crate::common::tools::{clients_dir, CHROMIUM};
use crate::common::{free_port, gate_config, tempdir, Gate, Mosquitto};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

const MQTT_JS_PAGE: &str = r#"<!doctype html><html><body><pre id="out">…</pre>
<script src="/mqtt.min.js"></script>
<script>
const report = (t) => fetch("/result", { method: "POST", body: t });
const c = mqtt.connect("ws://127.0.0.1:WS_PORT/mqtt", { clientId: "browser-mqttjs", protocolVersion: 5, reconnectPeriod: 0 });
c.on("connect", () => c.subscribe("browser/js", { qos: 1 }, () =>
  c.publish("browser/js", "hello from MQTT.js", { qos: 1 })));
c.on("message", (topic, msg) => { report("ok " + msg.toString()); c.end(); });
c.on("error", (e) => report("error " + e.message));
</script></body></html>"#;

const BARE_PAGE: &str = r#"<!doctype html><html><body><script>
const report = (t) => fetch("/result", { method: "POST", body: t });
const enc = (s) => Array.from(new TextEncoder().encode(s));
const str = (s) => { const b = enc(s); return [b.length >> 8, b.length & 255, ...b]; };
const packet = (first, body) => new Uint8Array([first, body.length, ...body]);
const ws = new WebSocket("ws://127.0.0.1:WS_PORT/mqtt", ["mqtt"]);
ws.binaryType = "arraybuffer";
let acc = [];
ws.onopen = () => ws.send(packet(0x10, [...str("MQTT"), 4, 2, 0, 60, ...str("browser-bare")]));
ws.onmessage = (ev) => {
  acc.push(...new Uint8Array(ev.data));
  while (acc.length >= 2 && acc.length >= 2 + acc[1]) {
    const first = acc[0], body = acc.slice(2, 2 + acc[1]);
    acc = acc.slice(2 + acc[1]);
    if (first === 0x20) ws.send(packet(0x82, [0, 1, ...str("browser/bare"), 0]));
    else if (first === 0x90) ws.send(packet(0x30, [...str("browser/bare"), ...enc("hello bare")]));
    else if ((first & 0xf0) === 0x30) {
      report("ok " + new TextDecoder().decode(new Uint8Array(body.slice(2 + body[1]))) + " via " + ws.protocol);
      ws.close(1000);
    }
  }
};
ws.onerror = () => report("error");
</script></body></html>"#;

/// Serve `page` at `/` and the MQTT.js bundle at `/mqtt.min.js`; the body of a POST
/// to `/result` goes to the channel.
fn serve(page: String) -> (u16, mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind page server");
    let port = l.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let (ctype, body): (&str, Vec<u8>) = if line.starts_with("POST /result") {
                let mut b = vec![0u8; len];
                let _ = r.read_exact(&mut b);
                let _ = tx.send(String::from_utf8_lossy(&b).to_string());
                ("text/plain", b"thanks".to_vec())
            } else if line.starts_with("GET /mqtt.min.js") {
                let js = clients_dir().join("node_modules/mqtt/dist/mqtt.min.js");
                let js = std::fs::read(&js).unwrap_or_else(|e| {
                    panic!("{}: {e} (run `npm ci` in tests/clients)", js.display())
                });
                ("application/javascript", js)
            } else if line.starts_with("GET / ") {
                ("text/html", page.as_bytes().to_vec())
            } else {
                ("text/plain", Vec::new())
            };
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    (port, rx)
}

/// Load `page` in headless Chromium; what the page reported.
fn run_page(ws_port: u16, (http, rx): (u16, mpsc::Receiver<String>)) -> String {
    let profile = tempdir();
    let child = CHROMIUM
        .command()
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://127.0.0.1:{http}/"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let _kill = KillOnDrop(child);
    rx.recv_timeout(Duration::from_secs(90))
        .unwrap_or_else(|_| panic!("no result from the page within 90 s (ws port {ws_port})"))
}

#[test]
fn chromium_speaks_mqtt_over_websocket_with_mqtt_js_and_the_bare_api() {
    CHROMIUM.require();
    let dir = tempdir();
    let node = Mosquitto::start("node1", dir.path());
    let ws = free_port();
    for (page, want) in [
        (MQTT_JS_PAGE, "ok hello from MQTT.js"),
        (BARE_PAGE, "ok hello bare via mqtt"),
    ] {
        let page = page.replace("WS_PORT", &ws.to_string());
        let server = serve(page.clone());
        // Only the page's own origin may open a WebSocket.
        let origin = format!("allowed_origins = [\"http://127.0.0.1:{}\"]", server.0);
        let (gate, _tcp) = Gate::start_with(dir.path(), "gate", |listen, admin| {
            let more = ws_listener("ws", ws, &origin, "");
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
        let got = run_page(ws, server);
        assert_eq!(got, want);
        assert!(gate.metric("mqgate_connections_total", &[("listener", "ws")]) >= 1.0);
        drop(gate);
    }
}
