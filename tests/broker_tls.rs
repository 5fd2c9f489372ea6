//! TLS from mqgate to the brokers (`[clusters.X.tls]`): real Mosquitto brokers with TLS
//! listeners (`cafile` / `certfile` / `keyfile`, certificates made in the test), real
//! clients through a plain mqgate listener. Messages flow and the health checks (over
//! TLS too) mark the node up; a broker whose certificate is for another name is
//! refused (node down, a log line naming the node and the mismatch); a broker that
//! requires client certificates gets mqgate's; the PROXY header goes before the
//! handshake, in the clear; `mqgate check` loads the material as `run` does.

use crate::common::pki::write;
use crate::common::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A Mosquitto broker whose only listener is TLS with `cert`/`key` (and `extra` lines:
/// client certificates).
fn tls_broker(name: &str, dir: &Path, cert: &Path, key: &Path, extra: &str) -> Mosquitto {
    Mosquitto::start_with(
        name,
        dir,
        MosquittoOpts {
            extra: format!(
                "certfile {}\nkeyfile {}\n{extra}",
                cert.display(),
                key.display()
            ),
            ..Default::default()
        },
    )
}

/// A plain mqgate listener in front of `nodes` (cluster `brokers`), with `tls` as the
/// cluster's `[clusters.brokers.tls]` table body.
fn gate_toml(listen: u16, admin: u16, nodes: &[(&str, String)], tls: &str) -> String {
    gate_config(
        listen,
        admin,
        "dynsec",
        nodes,
        "",
        "",
        &format!("[clusters.brokers.tls]\n{tls}"),
    )
}

#[test]
fn messages_flow_over_tls_to_the_broker_and_its_checks_mark_it_up() {
    let dir = tempdir();
    let d = dir.path();
    let pki = Pki::new("broker CA");
    let (ca, cert, key) = pki.write_server(d, "b1");
    let broker = tls_broker("b1", d, &cert, &key, "");
    let (gate, port) = Gate::start_with(d, "gate", |listen, admin| {
        gate_toml(
            listen,
            admin,
            &[("b1", broker.address())],
            &format!("ca = \"{}\"\n", ca.display()),
        )
    });
    // The broker has no plain listener: only a TLS health check (check = "mqtt":
    // CONNECT and CONNACK over TLS) can mark it up.
    gate.wait_node_up("b1");
    let got = cli_round_trip(port, &[], "mqttv311", "tls/up", "over-tls");
    assert_eq!(got.trim(), "over-tls");
    let got = cli_round_trip(port, &[], "mqttv5", "tls/up5", "over-tls-v5");
    assert_eq!(got.trim(), "over-tls-v5");
    assert!(
        gate.metric("mqgate_connack_total", &[("node", "b1"), ("code", "0")]) >= 2.0,
        "the broker's CONNACKs were read through TLS: {}",
        gate.metrics()
    );
    // A reload re-reads the files: the CA file now holds another CA, the broker's
    // certificate no longer verifies and the node goes down (the config is unchanged).
    std::fs::write(&ca, Pki::new("another CA").ca_pem).expect("rewrite CA");
    let text = std::fs::read_to_string(&gate.config).expect("config");
    gate.reload_with(&text);
    wait_until(Duration::from_secs(10), "node down with the new CA", || {
        gate.metric("mqgate_node_up", &[("node", "b1")]) == 0.0
    });
    assert!(gate
        .log_text()
        .contains("invalid peer certificate: UnknownIssuer"));
}

#[test]
fn a_broker_certificate_for_another_name_is_refused_and_its_node_is_down() {
    let dir = tempdir();
    let d = dir.path();
    let pki = Pki::new("broker CA");
    let (ca, cert, key) = pki.write_server(d, "good");
    let (wc, wk) = pki.leaf("other.example", &["other.example"]);
    let (wrong_cert, wrong_key) = (write(d, "wrong.pem", &wc), write(d, "wrong.key", &wk));
    let good = tls_broker("good", d, &cert, &key, "");
    let wrong = tls_broker("wrong", d, &wrong_cert, &wrong_key, "");
    let (gate, port) = Gate::start_with(d, "gate", |listen, admin| {
        gate_toml(
            listen,
            admin,
            &[("good", good.address()), ("wrong", wrong.address())],
            &format!("ca = \"{}\"\n", ca.display()),
        )
    });
    gate.wait_node_up("good");
    // The node with the wrong certificate is down, and the log says which node and why.
    wait_until(
        Duration::from_secs(10),
        "node `wrong` reported down",
        || {
            gate.log_text()
                .lines()
                .any(|l| l.contains("node is down") && l.contains("node=wrong"))
        },
    );
    let line = gate
        .log_text()
        .lines()
        .find(|l| l.contains("node is down") && l.contains("node=wrong"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        line.contains("server name \\\"127.0.0.1\\\"")
            || line.contains("server name \"127.0.0.1\""),
        "names the name checked: {line}"
    );
    assert!(
        line.contains("not valid for name") && line.contains("other.example"),
        "says the certificate is for another name: {line}"
    );
    assert_eq!(gate.metric("mqgate_node_up", &[("node", "wrong")]), 0.0);
    // Clients all land on the good node, whatever their key hashes to.
    for i in 0..6 {
        let topic = format!("tls/only-good/{i}");
        let got = cli_round_trip(port, &[], "mqttv311", &topic, "m");
        assert_eq!(got.trim(), "m");
    }
    assert_eq!(
        gate.metric("mqgate_connections_total", &[("node", "wrong")]),
        0.0
    );
    // With server_name set to the name the certificate carries, the node comes up.
    let toml = std::fs::read_to_string(&gate.config).expect("config");
    gate.reload_with(&toml.replace(
        "[clusters.brokers.tls]\n",
        "[clusters.brokers.tls]\nserver_name = \"other.example\"\n",
    ));
    gate.wait_node_up("wrong");
    wait_until(
        Duration::from_secs(10),
        "the good node down: its certificate is not for other.example",
        || gate.metric("mqgate_node_up", &[("node", "good")]) == 0.0,
    );
}

#[test]
fn a_broker_that_requires_client_certificates_gets_mqgates() {
    let dir = tempdir();
    let d = dir.path();
    let pki = Pki::new("broker CA");
    let (ca, cert, key) = pki.write_server(d, "b1");
    let clients = Pki::new("gateway client CA");
    let clients_ca = write(d, "clients-ca.pem", &clients.ca_pem);
    let (gc, gk) = clients.leaf("mqgate", &["mqgate"]);
    let (gate_cert, gate_key) = (write(d, "gate.pem", &gc), write(d, "gate.key", &gk));
    let broker = tls_broker(
        "b1",
        d,
        &cert,
        &key,
        &format!(
            "cafile {}\nrequire_certificate true\nuse_identity_as_username true\n",
            clients_ca.display()
        ),
    );
    // Without a client certificate the broker refuses the handshake: node down.
    let (gate, port) = Gate::start_with(d, "gate", |listen, admin| {
        gate_toml(
            listen,
            admin,
            &[("b1", broker.address())],
            &format!("ca = \"{}\"\n", ca.display()),
        )
    });
    wait_until(
        Duration::from_secs(10),
        "node down without a certificate",
        || gate.log_text().contains("node is down"),
    );
    assert_eq!(gate.metric("mqgate_node_up", &[("node", "b1")]), 0.0);
    // With mqgate's certificate (a reload loads it), the node is up and messages flow.
    let toml = std::fs::read_to_string(&gate.config).expect("config");
    gate.reload_with(&toml.replace(
        "[clusters.brokers.tls]\n",
        &format!(
            "[clusters.brokers.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            gate_cert.display(),
            gate_key.display()
        ),
    ));
    gate.wait_node_up("b1");
    let got = cli_round_trip(port, &[], "mqttv311", "tls/mutual", "with-cert");
    assert_eq!(got.trim(), "with-cert");
    // The broker saw mqgate's certificate: its CN became the username.
    wait_until(Duration::from_secs(5), "broker logged the identity", || {
        broker.log().contains("u'mqgate'")
    });
}

/// Per connection: (PROXY header seen first, first decrypted byte).
type Seen = Arc<Mutex<Vec<(bool, Option<u8>)>>>;

/// A broker stand-in that records whether a PROXY v2 header came before the TLS
/// handshake, then answers the CONNECT over TLS with a CONNACK.
struct Recorder {
    port: u16,
    seen: Seen,
}

fn recorder(cert: &Path, key: &Path) -> Recorder {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let certs: Vec<_> = CertificateDer::pem_file_iter(cert)
        .expect("cert")
        .map(|c| c.expect("cert"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config"),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen: Seen = Arc::default();
    let rec = seen.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let (cfg, rec) = (cfg.clone(), rec.clone());
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut sig = [0u8; 12];
                let n = s.peek(&mut sig).unwrap_or(0);
                let proxy = n == 12 && sig == *b"\r\n\r\n\0\r\nQUIT\n";
                if proxy {
                    let mut head = [0u8; 16];
                    if s.read_exact(&mut head).is_err() {
                        return;
                    }
                    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
                    let mut rest = vec![0u8; len];
                    if s.read_exact(&mut rest).is_err() {
                        return;
                    }
                }
                let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, s);
                let mut first = [0u8; 1];
                let byte = tls.read_exact(&mut first).ok().map(|_| first[0]);
                rec.lock().expect("lock").push((proxy, byte));
                if byte == Some(0x10) {
                    let _ = tls.write_all(&[0x20, 0x02, 0x00, 0x00]);
                    let _ = tls.flush();
                    let mut sink = [0u8; 256];
                    while matches!(tls.read(&mut sink), Ok(n) if n > 0) {}
                }
            });
        }
    });
    Recorder { port, seen }
}

#[test]
fn the_proxy_header_goes_before_the_tls_handshake() {
    let dir = tempdir();
    let d = dir.path();
    let pki = Pki::new("broker CA");
    let (ca, cert, key) = pki.write_server(d, "rec");
    let rec = recorder(&cert, &key);
    let (gate, port) = Gate::start_with(d, "gate", |listen, admin| {
        gate_config(
            listen,
            admin,
            "dynsec",
            &[("rec", format!("127.0.0.1:{}", rec.port))],
            "send_proxy_protocol = \"v2\"\n",
            "check = \"tcp\"\n",
            &format!("[clusters.brokers.tls]\nca = \"{}\"\n", ca.display()),
        )
    });
    gate.wait_node_up("rec");
    let mut s = tcp(port);
    s.write_all(&connect_v311("pp-tls")).expect("send CONNECT");
    let got = read_exact_n(&mut s, 4);
    assert_eq!(got, CONNACK_ACCEPTED, "the CONNACK came back through TLS");
    let seen = rec.seen.lock().expect("lock").clone();
    assert!(
        seen.contains(&(true, Some(0x10))),
        "a client connection: PROXY v2 header in the clear, then TLS, then CONNECT: {seen:?}"
    );
}

#[test]
fn check_loads_the_broker_tls_material_as_run_does() {
    let dir = tempdir();
    let d = dir.path();
    let pki = Pki::new("broker CA");
    let (ca, cert, key) = pki.write_server(d, "b1");
    let not_pem = write(d, "not-a-ca.pem", "hello\n");
    let cfg = |tls: &str| -> PathBuf {
        let text = gate_toml(1883, 9100, &[("b1", "127.0.0.1:8883".into())], tls);
        write(d, "gate.toml", &text)
    };
    let ok = format!(
        "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nserver_name = \"localhost\"\nmin_version = \"1.3\"\n",
        ca.display(),
        cert.display(),
        key.display()
    );
    let (code, out, err) = mqgate_check(&cfg(&ok));
    assert_eq!(code, Some(0), "{out}{err}");
    for (tls, key_named, says) in [
        (
            format!("ca = \"{}\"\n", not_pem.display()),
            "clusters.brokers.tls.ca",
            "no PEM certificate",
        ),
        (
            format!("ca = \"{}\"\ncert = \"{}\"\n", ca.display(), cert.display()),
            "clusters.brokers.tls.key",
            "needs its key",
        ),
        (
            format!(
                "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                ca.display(),
                key.display(),
                key.display()
            ),
            "clusters.brokers.tls.cert",
            "",
        ),
        (
            format!("ca = \"{}\"\nserver_name = \"not a name\"\n", ca.display()),
            "clusters.brokers.tls.server_name",
            "not a valid DNS name",
        ),
        (
            format!("ca = \"{}\"\nmin_version = \"1.1\"\n", ca.display()),
            "clusters.brokers.tls.min_version",
            "",
        ),
        (
            "ca = \"/nonexistent/ca.pem\"\n".to_string(),
            "clusters.brokers.tls.ca",
            "does not exist",
        ),
    ] {
        let (code, out, err) = mqgate_check(&cfg(&tls));
        let all = format!("{out}{err}");
        assert_eq!(code, Some(1), "{tls}: {all}");
        assert!(all.contains(key_named), "{tls}: names {key_named}: {all}");
        assert!(all.contains(says), "{tls}: says {says:?}: {all}");
    }
}
