//! PROXY v2 headers out on an mTLS listener: the TLS version, cipher and client CN
//! TLVs, and PP2_TYPE_SSL equal to HAProxy 2.6's `send-proxy-v2-ssl-cn` for the same
//! client (TLS 1.3 and 1.2, full and resumed handshakes).

use super::*;

/// A gateway on an mTLS listener (clients' certificates from `client_ca`) that sends
/// PROXY v2 headers to the recorder on `rec_port`; returns it and the listener's port.
fn mtls_v2_out(
    dir: &Path,
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    rec_port: u16,
) -> (Gate, u16) {
    let (admin, listen) = (free_port(), free_port());
    let toml = format!(
        "{}\n[[listeners]]\nname = \"mqtts\"\nbind = \"127.0.0.1:{listen}\"\ncluster = \"brokers\"\n\
         [listeners.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\n\
         [clusters.brokers]\nmode = \"dynsec\"\nsend_proxy_protocol = \"v2\"\n\
         nodes = [ {{ name = \"rec\", address = \"127.0.0.1:{rec_port}\" }} ]\n\
         [clusters.brokers.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\nrise = 1\nfall = 1\n",
        Gate::admin_section(admin),
        cert.display(),
        key.display(),
        client_ca.display(),
    );
    let gate = Gate::start(dir, "gate", &toml, admin);
    gate.wait_node_up("rec");
    (gate, listen)
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
    let client_ca = write(d, "client-ca.pem", &clients.ca_pem);
    let (cc, ck) = clients.leaf("device-42", &["device-42"]);
    write(d, "client.pem", &cc);
    write(d, "client.key", &ck);
    let (_gate, listen) = mtls_v2_out(d, &cert, &key, &client_ca, rec.port);
    let out = std::process::Command::new("mosquitto_pub")
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
    // PP2_TYPE_SSL: client = SSL | CERT_CONN | CERT_SESS (a full handshake with a
    // certificate, as HAProxy sends it; Mosquitto 2.1 needs CERT_SESS), verify = 0.
    let ssl = ssl_tlv(h);
    assert_eq!(ssl.client, 0x07, "client flags SSL|CERT_CONN|CERT_SESS");
    assert_eq!(ssl.verify, 0, "verified");
    let subs = &ssl.subs;
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
    // OpenSSL's names, as HAProxy sends them (TLS 1.3: the IANA name).
    assert!(
        subs.get(&0x23)
            .is_some_and(|c| (c.starts_with("TLS_") || c.starts_with("ECDHE-"))
                && (c.contains("GCM") || c.contains("CHACHA20"))),
        "{subs:?}"
    );
}

/// A v2 header's TLVs (after the address block), in order; `h` must be exactly one
/// header, as the recorder stores it.
fn v2_tlvs(h: &[u8]) -> Vec<(u8, Vec<u8>)> {
    assert!(
        h.starts_with(b"\r\n\r\n\0\r\nQUIT\n") && h.len() >= 16,
        "not a v2 header: {h:?}"
    );
    let addr_len = match h[13] >> 4 {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    assert_eq!(
        h.len(),
        16 + u16::from_be_bytes([h[14], h[15]]) as usize,
        "v2 length field: {h:?}"
    );
    tlv_list(&h[16 + addr_len..])
}

fn tlv_list(mut rest: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 3, "TLV header cut short: {rest:?}");
        let len = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        assert!(
            rest.len() >= 3 + len,
            "TLV {:#04x} longer than the header",
            rest[0]
        );
        out.push((rest[0], rest[3..3 + len].to_vec()));
        rest = &rest[3 + len..];
    }
    out
}

/// PP2_TYPE_SSL (0x20) decoded: the `client` bit field, `verify`, sub-TLVs by type.
#[derive(Debug, PartialEq, Eq)]
struct SslTlv {
    client: u8,
    verify: u32,
    subs: std::collections::BTreeMap<u8, String>,
}

fn ssl_tlv(h: &[u8]) -> SslTlv {
    let tlvs = v2_tlvs(h);
    let v = tlvs
        .iter()
        .find(|(t, _)| *t == 0x20)
        .map(|(_, v)| v.as_slice())
        .unwrap_or_else(|| panic!("no PP2_TYPE_SSL in {h:?}"));
    assert!(v.len() >= 5, "PP2_TYPE_SSL shorter than client + verify");
    SslTlv {
        client: v[0],
        verify: u32::from_be_bytes([v[1], v[2], v[3], v[4]]),
        subs: tlv_list(&v[5..])
            .into_iter()
            .map(|(t, s)| (t, String::from_utf8_lossy(&s).into_owned()))
            .collect(),
    }
}

/// HAProxy 2.6 terminating mTLS on two frontends, each to its own backend server:
/// `cn_port` sends `send-proxy-v2-ssl-cn` (the setup Mosquitto 2.1 works with),
/// `full_port` adds `proxy-v2-options ssl-cipher,authority` (to compare those too).
struct Haproxy {
    _child: KillOnDrop,
    cn_port: u16,
    full_port: u16,
}

impl Haproxy {
    fn start(
        dir: &std::path::Path,
        crt: &std::path::Path,
        ca: &std::path::Path,
        cn_rec: u16,
        full_rec: u16,
    ) -> Haproxy {
        let (cn_port, full_port) = (free_port(), free_port());
        let bind = |port: u16| {
            format!(
                "bind 127.0.0.1:{port} ssl crt {} ca-file {} verify required",
                crt.display(),
                ca.display()
            )
        };
        let cfg = format!(
            "global\n    maxconn 100\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\n\
             frontend cn\n    {}\n    default_backend cn\n\
             backend cn\n    server rec 127.0.0.1:{cn_rec} send-proxy-v2-ssl-cn\n\n\
             frontend full\n    {}\n    default_backend full\n\
             backend full\n    server rec 127.0.0.1:{full_rec} send-proxy-v2-ssl-cn proxy-v2-options ssl-cipher,authority\n",
            bind(cn_port),
            bind(full_port)
        );
        // This test compares mqgate's PROXY v2 header with HAProxy 2.6's.
        let child =
            crate::common::tools::start_haproxy(dir, "haproxy", &cfg, &[cn_port, full_port]);
        Haproxy {
            _child: child,
            cn_port,
            full_port,
        }
    }
}

/// The mTLS client used through HAProxy and mqgate alike: one protocol version and one
/// cipher suite, so that both servers negotiate the same; its own session cache, so the
/// second connection with the same config resumes.
fn mtls_client(
    ca_pem: &[u8],
    cert_pem: &str,
    key_pem: &str,
    tls13: bool,
) -> Arc<rustls::ClientConfig> {
    use rustls::crypto::ring as r;
    let (version, suite) = if tls13 {
        (
            &rustls::version::TLS13,
            r::cipher_suite::TLS13_AES_128_GCM_SHA256,
        )
    } else {
        (
            &rustls::version::TLS12,
            r::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        )
    };
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..r::default_provider()
    };
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.expect("server CA PEM")).expect("add server CA");
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("client certificate PEM");
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("a key in the client key PEM");
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .expect("protocol version")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
    Arc::new(cfg)
}

/// One MQTT session over mTLS to 127.0.0.1:`port` (SNI "localhost"): CONNECT, CONNACK,
/// DISCONNECT. Returns whether the TLS session was resumed.
fn mqtt_over_mtls(cfg: &Arc<rustls::ClientConfig>, port: u16, id: &str) -> bool {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let conn = rustls::ClientConnection::new(cfg.clone(), name).expect("TLS client");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(&mqgate::mqtt::encode_connect_v311(id, None, None, 30))
        .unwrap_or_else(|e| panic!("TLS handshake and CONNECT to port {port}: {e}"));
    let mut ack = [0u8; 4];
    tls.read_exact(&mut ack)
        .unwrap_or_else(|e| panic!("CONNACK from port {port}: {e}"));
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "CONNACK through port {port}");
    let resumed = tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.write_all(&[0xe0, 0x00]).expect("DISCONNECT");
    tls.conn.send_close_notify();
    let _ = tls.flush();
    resumed
}

/// Mosquitto 2.1 counts a client certificate only with PP2_CLIENT_SSL and
/// PP2_CLIENT_CERT_SESS set and verify = 0, as HAProxy's `send-proxy-v2-ssl-cn` sends
/// them. The same mTLS client goes through HAProxy 2.6 and mqgate, each in front of a
/// recorder, with TLS 1.3 and 1.2, a full handshake then a resumed one: the
/// PP2_TYPE_SSL TLVs must be equal (client bits, verify, version, CN, and the cipher
/// and authority HAProxy adds with `proxy-v2-options ssl-cipher,authority`).
#[test]
fn v2_out_ssl_tlv_matches_haproxy_send_proxy_v2_ssl_cn() {
    let dir = tempdir();
    let d = dir.path();
    let broker = Mosquitto::start("b1", d);
    let (gate_rec, cn_rec, full_rec) = (
        Recorder::start(broker.port),
        Recorder::start(broker.port),
        Recorder::start(broker.port),
    );
    let pki = Pki::new("server CA");
    let (ca, cert, key) = pki.write_server(d, "server");
    let crt = d.join("server-full.pem");
    let server_pem = [
        std::fs::read_to_string(&cert).expect("server cert"),
        std::fs::read_to_string(&key).expect("server key"),
    ]
    .concat();
    std::fs::write(&crt, server_pem).expect("write server-full.pem");
    let clients = Pki::new("client CA");
    let client_ca = d.join("client-ca.pem");
    std::fs::write(&client_ca, &clients.ca_pem).expect("write client CA");
    let (cc, ck) = clients.leaf("device-42", &["device-42"]);

    let haproxy = Haproxy::start(d, &crt, &client_ca, cn_rec.port, full_rec.port);
    let (_gate, listen) = mtls_v2_out(d, &cert, &key, &client_ca, gate_rec.port);

    let ca_pem = std::fs::read(&ca).expect("read server CA");
    let targets = [
        ("haproxy ssl-cn", haproxy.cn_port, &cn_rec),
        ("haproxy ssl-cn+cipher", haproxy.full_port, &full_rec),
        ("mqgate", listen, &gate_rec),
    ];
    for tls13 in [true, false] {
        let version = if tls13 { "TLSv1.3" } else { "TLSv1.2" };
        for resume in [false, true] {
            let mut got = Vec::new();
            for (name, port, rec) in &targets {
                // One client config per target: its session cache only resumes there.
                let cfg = mtls_client(&ca_pem, &cc, &ck, tls13);
                let before = rec.headers().len();
                assert!(
                    !mqtt_over_mtls(&cfg, *port, "pp-cmp"),
                    "{name}: first handshake is full"
                );
                if resume {
                    assert!(
                        mqtt_over_mtls(&cfg, *port, "pp-cmp"),
                        "{name} {version}: the second connection resumes the session"
                    );
                }
                let want = before + 1 + usize::from(resume);
                wait_until(
                    Duration::from_secs(5),
                    &format!("{name} header recorded"),
                    || rec.headers().len() >= want,
                );
                let h = rec.headers()[want - 1].clone();
                got.push((*name, ssl_tlv(&h), v2_tlvs(&h)));
            }
            let what = format!(
                "{version}, {}",
                if resume { "resumed" } else { "full handshake" }
            );
            let (hap_cn, hap_full, ours) = (&got[0].1, &got[1].1, &got[2].1);
            eprintln!("{what}:\n  haproxy ssl-cn: {hap_cn:?}\n  haproxy +cipher: {hap_full:?}\n  mqgate: {ours:?}");
            let want_client = if resume { 0x05 } else { 0x07 };
            assert_eq!(hap_cn.client, want_client, "{what}: HAProxy's client bits");
            assert_eq!(
                ours.client, hap_cn.client,
                "{what}: PP2_TYPE_SSL client bits"
            );
            assert_eq!(ours.verify, hap_cn.verify, "{what}: PP2_TYPE_SSL verify");
            assert_eq!(ours.verify, 0, "{what}: verify");
            for (sub, label) in [(0x22, "SSL_CN"), (0x21, "SSL_VERSION")] {
                assert_eq!(
                    ours.subs.get(&sub),
                    hap_cn.subs.get(&sub),
                    "{what}: {label}"
                );
            }
            assert_eq!(
                ours.subs.get(&0x22).map(String::as_str),
                Some("device-42"),
                "{what}"
            );
            assert_eq!(
                ours.subs.get(&0x21).map(String::as_str),
                Some(version),
                "{what}"
            );
            // `send-proxy-v2-ssl-cn` alone sends no cipher; with `ssl-cipher` HAProxy's
            // and mqgate's must be the same name.
            assert_eq!(hap_cn.subs.get(&0x23), None, "{what}");
            assert_eq!(
                ours, hap_full,
                "{what}: whole PP2_TYPE_SSL vs HAProxy with ssl-cipher"
            );
            // Authority (SNI): mqgate always sends it, HAProxy with `authority`.
            let authority = |tlvs: &Vec<(u8, Vec<u8>)>| {
                tlvs.iter()
                    .find(|(t, _)| *t == 0x02)
                    .map(|(_, v)| v.clone())
            };
            assert_eq!(authority(&got[2].2), Some(b"localhost".to_vec()), "{what}");
            assert_eq!(
                authority(&got[2].2),
                authority(&got[1].2),
                "{what}: authority"
            );
            assert_eq!(authority(&got[0].2), None, "{what}");
        }
    }
}
