//! Client-certificate identity on an mTLS listener (issue 29, item 2): with
//! `username_from = "cn"` a device with certificate CN=dev1 that claims username dev2
//! gets dev1's rights from a real Mosquitto ACL (`pattern readwrite dev/%u/#`); with
//! `require_username_match` it is refused with CONNACK 0x05 (3.x) / 0x87 (5.0),
//! counted as `reason="identity"` and written to the access log; the CONNECTs mqgate
//! forwards after a rewrite (MQTT 3.1, 3.1.1 with a will, 5.0 with properties and a
//! password without username) are read back by an independent decoder (`mqttbytes`).

use crate::common::pki::write;
use crate::common::*;
use bytes::BytesMut;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Setup {
    gate: Gate,
    broker: Mosquitto,
    dir: tempfile::TempDir,
    /// `username_from = "cn"` → the broker with the ACL.
    rewrite: u16,
    /// `require_username_match = "cn"` and `require_client_id_match`-free → the broker.
    check: u16,
    /// `username_from` and `client_id_from = "cn"` → the recording endpoint.
    record: u16,
    /// CONNECTs the recording endpoint received.
    recorded: mpsc::Receiver<Vec<u8>>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A fake broker: every connection's first bytes (a complete packet) are sent to the
/// channel and answered with CONNACK 0; connections that send nothing (TCP health
/// checks) are ignored.
fn recorder() -> (u16, mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
    let port = l.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if let Some((len, hdr)) = crate::common::mqtt::varint(&buf[1..]) {
                        if buf.len() >= 1 + hdr + len {
                            buf.truncate(1 + hdr + len);
                            break;
                        }
                    }
                }
                let _ = tx.send(buf);
                let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]);
                let _ = s.read(&mut chunk);
            });
        }
    });
    (port, rx)
}

fn setup() -> Setup {
    let dir = tempdir();
    let d = dir.path();
    let acl = write(
        d,
        "acl",
        "user admin\ntopic read dev/#\n\npattern readwrite dev/%u/#\n",
    );
    let broker = Mosquitto::start_with(
        "b1",
        d,
        MosquittoOpts {
            extra: format!("acl_file {}\n", acl.display()),
            ..Default::default()
        },
    );
    let (rec_port, recorded) = recorder();
    let server = Pki::new("identity test server CA");
    let (ca, cert, key) = server.write_server(d, "server");
    let clients = Pki::new("identity test client CA");
    let client_ca = write(d, "client-ca.pem", &clients.ca_pem);
    let (dc, dk) = clients.leaf("dev1", &["dev1.example"]);
    let (rewrite, check, record, admin) = (free_port(), free_port(), free_port(), free_port());
    let tls = |extra: &str| {
        format!(
            "[listeners.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n{extra}\n",
            cert.display(),
            key.display(),
            client_ca.display()
        )
    };
    let toml = format!(
        "{admin_section}\n[log]\naccess = \"{access}\"\naccess_format = \"json\"\n\n\
         [[listeners]]\nname = \"rewrite\"\nbind = \"127.0.0.1:{rewrite}\"\ncluster = \"brokers\"\n{t1}\n\
         [[listeners]]\nname = \"check\"\nbind = \"127.0.0.1:{check}\"\ncluster = \"brokers\"\n{t2}\n\
         [[listeners]]\nname = \"record\"\nbind = \"127.0.0.1:{record}\"\ncluster = \"rec\"\n{t3}\n\
         [clusters.brokers]\nnodes = [ {{ name = \"b1\", address = \"{addr}\" }} ]\n\
         [clusters.brokers.health]\ninterval = \"200ms\"\nrise = 1\nfall = 1\n\n\
         [clusters.rec]\nnodes = [ {{ name = \"rec1\", address = \"127.0.0.1:{rec_port}\" }} ]\n\
         [clusters.rec.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\nrise = 1\nfall = 1\n",
        admin_section = Gate::admin_section(admin),
        access = d.join("access.log").display(),
        t1 = tls("username_from = \"cn\""),
        t2 = tls("require_username_match = \"cn\""),
        t3 = tls("username_from = \"cn\"\nclient_id_from = \"cn\""),
        addr = broker.address(),
    );
    let gate = Gate::start(d, "gate", &toml, admin);
    gate.wait_node_up("b1");
    gate.wait_node_up("rec1");
    Setup {
        cert: write(d, "dev1.pem", &dc),
        key: write(d, "dev1.key", &dk),
        gate,
        broker,
        dir,
        rewrite,
        check,
        record,
        recorded,
        ca,
    }
}

/// `mosquitto_pub` over mTLS as dev1 (claiming `user`) to `port`; true if it exited 0.
fn pub_as_dev1(s: &Setup, port: u16, user: &str, topic: &str, v5: bool) -> bool {
    let p = port.to_string();
    let mut c = Command::new("mosquitto_pub");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "-u",
        user,
        "-t",
        topic,
        "-m",
        "x",
        "-q",
        "1",
    ]);
    c.arg("--cafile").arg(&s.ca);
    c.arg("--cert").arg(&s.cert).arg("--key").arg(&s.key);
    if v5 {
        c.args(["-V", "mqttv5"]);
    }
    c.output().expect("mosquitto_pub").status.success()
}

#[test]
fn a_device_claiming_another_username_gets_its_certificates_acl_rights() {
    let s = setup();
    // An observer straight on the broker, allowed to read all of dev/#.
    let bp = s.broker.port.to_string();
    let mut sub = KillOnDrop(
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &bp,
                "-u",
                "admin",
                "-t",
                "dev/#",
                "-v",
            ])
            .args(["-C", "1", "-W", "30"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub"),
    );
    // dev1 claims dev2, publishes to dev2's topic, then (in order, QoS 1) to its own.
    // The first message the observer sees must be dev1's: dev2's never arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        assert!(pub_as_dev1(&s, s.rewrite, "dev2", "dev/dev2/x", false));
        assert!(pub_as_dev1(&s, s.rewrite, "dev2", "dev/dev1/x", false));
        if let Ok(Some(_)) = sub.0.try_wait() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    assert!(done, "the observer got no message");
    let mut out = String::new();
    sub.0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    assert_eq!(
        out.trim(),
        "dev/dev1/x x",
        "only dev1's own topic is writable"
    );
    assert!(
        s.gate.metric(
            "mqgate_identity_rewrites_total",
            &[("listener", "rewrite"), ("field", "username")]
        ) >= 2.0
    );
    // Through the checking listener: the claim is refused, the truth is let in.
    assert!(!pub_as_dev1(&s, s.check, "dev2", "dev/dev1/x", false));
    assert!(!pub_as_dev1(&s, s.check, "dev2", "dev/dev1/x", true));
    assert!(pub_as_dev1(&s, s.check, "dev1", "dev/dev1/x", false));
    wait_until(Duration::from_secs(5), "identity refusals counted", || {
        s.gate.metric(
            "mqgate_connections_rejected_total",
            &[("listener", "check"), ("reason", "identity")],
        ) == 2.0
    });
    // The access log has the refusal, with the TLS fields and the certificate's CN.
    let log = s.dir.path().join("access.log");
    wait_until(
        Duration::from_secs(10),
        "access-log line of the refusal",
        || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("\"identity\"")),
    );
    let text = std::fs::read_to_string(&log).expect("access log");
    let refusal: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["reject"] == "identity")
        .expect("a JSON line with reject=identity");
    assert_eq!(refusal["listener"], "check");
    assert_eq!(refusal["tls_cn"], "dev1");
    assert_eq!(refusal["username"], "dev2");
    assert_eq!(refusal["close"], "rejected");
    assert!(refusal["tls_version"]
        .as_str()
        .is_some_and(|v| v.starts_with("TLSv1.")));
    assert!(refusal["connack"] == 5 || refusal["connack"] == 0x87);
}

/// A TLS client with dev1's certificate.
fn tls(s: &Setup, port: u16) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&s.ca).expect("CA") {
        roots.add(c.expect("CA PEM")).expect("root");
    }
    let certs: Vec<_> = CertificateDer::pem_file_iter(&s.cert)
        .expect("cert")
        .map(|c| c.expect("cert PEM"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(&s.key).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client auth");
    let name = ServerName::try_from("localhost").expect("name").to_owned();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
    rustls::StreamOwned::new(conn, tcp(port))
}

/// Send `connect` over mTLS to `port`; the first 5 bytes answered (or fewer at close).
fn exchange(s: &Setup, port: u16, connect: &[u8]) -> Vec<u8> {
    let mut t = tls(s, port);
    t.write_all(connect).expect("write CONNECT");
    t.flush().expect("flush");
    t.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = vec![0u8; 5];
    let mut n = 0;
    while n < 5 {
        match t.read(&mut got[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    got.truncate(n);
    got
}

#[test]
fn rewritten_connects_of_every_protocol_level_decode_with_their_new_identity() {
    let s = setup();
    let next = || {
        s.recorded
            .recv_timeout(Duration::from_secs(10))
            .expect("the recorder got the CONNECT")
    };
    // 3.1.1 with a will, username dev2 and a password.
    let c = Connect::new("claimed-id")
        .login("dev2", "pw")
        .will("wills/x", b"bye");
    assert_eq!(
        exchange(&s, s.record, &c.bytes())[..4],
        [0x20, 0x02, 0x00, 0x00]
    );
    let mut b = BytesMut::from(&next()[..]);
    match mqttbytes::v4::read(&mut b, 1 << 20).expect("mqttbytes reads 3.1.1") {
        mqttbytes::v4::Packet::Connect(c) => {
            assert_eq!(c.client_id, "dev1");
            let login = c.login.expect("login");
            assert_eq!(
                (login.username.as_str(), login.password.as_str()),
                ("dev1", "pw")
            );
            assert_eq!(c.last_will.expect("will").topic, "wills/x");
        }
        other => panic!("not a CONNECT: {other:?}"),
    }
    // 5.0, persistent (session expiry property), no username at all.
    let c = Connect::new("v5-claimed").v5(true).persistent();
    exchange(&s, s.record, &c.bytes());
    let mut b = BytesMut::from(&next()[..]);
    match mqttbytes::v5::read(&mut b, 1 << 20).expect("mqttbytes reads 5.0") {
        mqttbytes::v5::Packet::Connect(c) => {
            assert_eq!(c.client_id, "dev1");
            assert_eq!(c.login.expect("login added").username, "dev1");
            let props = c.properties.expect("properties kept");
            assert_eq!(props.session_expiry_interval, Some(3600));
        }
        other => panic!("not a CONNECT: {other:?}"),
    }
    // The sticky key is the rewritten client id (a persistent session is recorded once
    // the broker accepted it), not the claimed one.
    let sticky = |key: &str| {
        http(
            "GET",
            s.gate.admin_port,
            &format!("/api/v1/clusters/rec/sticky/{key}"),
            None,
            None,
        )
        .unwrap_or((0, String::new()))
    };
    wait_until(Duration::from_secs(10), "sticky entry of dev1", || {
        let (status, body) = sticky("dev1");
        status == 200 && body.contains("rec1")
    });
    assert_eq!(sticky("v5-claimed").0, 404);
    // 3.1 (MQIsdp): mqttbytes has no 3.1; mqgate's own parser reads it back.
    let c = Connect::new("old").level(3).login("dev2", "pw");
    exchange(&s, s.record, &c.bytes());
    let got = next();
    let p = mqgate::mqtt::parse_connect(&got).expect("a valid 3.1 CONNECT");
    assert_eq!(p.version.as_str(), "3.1");
    assert_eq!((p.client_id, p.username), ("dev1", Some("dev1")));
    assert_eq!(p.password, Some(&b"pw"[..]));

    // The checking listener answers a false claim "not authorized" itself.
    let v311 = Connect::new("c").login("dev2", "pw").bytes();
    assert_eq!(exchange(&s, s.check, &v311), [0x20, 0x02, 0x00, 0x05]);
    let v5 = Connect::new("c").v5(true).login("dev2", "pw").bytes();
    assert_eq!(exchange(&s, s.check, &v5), [0x20, 0x03, 0x00, 0x87, 0x00]);
}
