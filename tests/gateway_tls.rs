//! TLS termination with real clients (`mosquitto_pub`/`mosquitto_sub` over OpenSSL) and
//! certificates made in the test (rcgen): TLS 1.2 and 1.3, a `min_version = "1.3"`
//! listener, mutual TLS with a client certificate accepted and refused, and handshakes
//! that fail or never happen — each refusal counted as `tls`.

use crate::common::pki::write;
use crate::common::tools::OPENSSL;
use crate::common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Setup {
    // Drop order: the gateway (it prints its log on failure), the broker, the files.
    gate: Gate,
    _broker: Mosquitto,
    _dir: tempfile::TempDir,
    /// TLS, no client certificates, min 1.2.
    tls: u16,
    /// TLS 1.3 only.
    tls13: u16,
    /// mTLS: client certificates signed by the client CA required.
    mtls: u16,
    ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

fn setup() -> Setup {
    let dir = tempdir();
    let d = dir.path();
    let broker = Mosquitto::start("b1", d);
    let server_pki = Pki::new("mqgate test server CA");
    let (ca, cert, key) = server_pki.write_server(d, "server");
    let client_pki = Pki::new("mqgate test client CA");
    let client_ca = write(d, "client-ca.pem", &client_pki.ca_pem);
    let (cc, ck) = client_pki.leaf("device-1", &["device-1"]);
    let (rc, rk) = Pki::new("someone else's CA").leaf("intruder", &["intruder"]);
    let (tls, tls13, mtls, admin) = (free_port(), free_port(), free_port(), free_port());
    let (cert, key, client_ca) = (cert.display(), key.display(), client_ca.display());
    let toml = format!(
        "{admin_section}\n[limits]\ntls_handshake_timeout = \"500ms\"\n\n\
         [[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:{tls}\"\ncluster = \"brokers\"\n\
         [listeners.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n\n\
         [[listeners]]\nname = \"tls13\"\nbind = \"127.0.0.1:{tls13}\"\ncluster = \"brokers\"\n\
         [listeners.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nmin_version = \"1.3\"\n\n\
         [[listeners]]\nname = \"mtls\"\nbind = \"127.0.0.1:{mtls}\"\ncluster = \"brokers\"\n\
         [listeners.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{client_ca}\"\n\n\
         [clusters.brokers]\nmode = \"dynsec\"\nnodes = [ {{ name = \"b1\", address = \"{addr}\" }} ]\n\
         [clusters.brokers.health]\ninterval = \"200ms\"\nrise = 1\nfall = 1\n",
        admin_section = Gate::admin_section(admin),
        addr = broker.address(),
    );
    let gate = Gate::start(d, "gate", &toml, admin);
    gate.wait_node_up("b1");
    Setup {
        client_cert: write(d, "client.pem", &cc),
        client_key: write(d, "client.key", &ck),
        rogue_cert: write(d, "rogue.pem", &rc),
        rogue_key: write(d, "rogue.key", &rk),
        _dir: dir,
        _broker: broker,
        gate,
        tls,
        tls13,
        mtls,
        ca,
    }
}

fn rejected_tls(g: &Gate, listener: &str) -> (f64, f64) {
    let m = g.metrics();
    (
        metric_value(
            &m,
            "mqgate_tls_handshake_failures_total",
            &[("listener", listener)],
        ),
        metric_value(
            &m,
            "mqgate_connections_rejected_total",
            &[("listener", listener), ("reason", "tls")],
        ),
    )
}

/// A TLS client of our own (rustls), pinned to one protocol version, so that the
/// negotiated version is known (libmosquitto's `--tls-version tlsv1.2` only sets a
/// minimum and ends up on TLS 1.3).
fn tls_client(
    port: u16,
    ca: &Path,
    version: &'static rustls::SupportedProtocolVersion,
    client: Option<(&Path, &Path)>,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>, String> {
    tls_client_offering(port, ca, version, client, None)
}

/// [`tls_client`] offering `suites`, in this order of preference (None: rustls'
/// default order, AES-256-GCM first).
fn tls_client_offering(
    port: u16,
    ca: &Path,
    version: &'static rustls::SupportedProtocolVersion,
    client: Option<(&Path, &Path)>,
    suites: Option<&[rustls::SupportedCipherSuite]>,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("open CA PEM") {
        roots.add(c.expect("CA PEM")).expect("add root");
    }
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suites) = suites {
        provider.cipher_suites = suites.to_vec();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates(roots);
    let cfg = match client {
        Some((cert, key)) => {
            let certs: Vec<_> = CertificateDer::pem_file_iter(cert)
                .expect("open certificate PEM")
                .map(|c| c.expect("cert"))
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).expect("a key");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from("localhost").expect("name").to_owned();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp(port));
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    Ok(tls)
}

/// Over a [`tls_client`]: CONNECT, SUBSCRIBE to a topic and PUBLISH to it in one write;
/// Ok with the negotiated version if CONNACK, SUBACK and our own message come back.
fn mqtt_over_tls(
    port: u16,
    ca: &Path,
    version: &'static rustls::SupportedProtocolVersion,
    client: Option<(&Path, &Path)>,
) -> Result<rustls::ProtocolVersion, String> {
    use std::io::Read;
    let mut tls = tls_client(port, ca, version, client)?;
    let mut bytes = connect_v311("tls-raw");
    bytes.extend(subscribe_v311(1, "raw/tls", 0));
    let mut publ = mqtt_field(b"raw/tls");
    publ.extend_from_slice(b"\x00\x01binary\xff");
    bytes.extend(mqtt_packet(0x30, &publ));
    tls.write_all(&bytes).map_err(|e| format!("write: {e}"))?;
    let want_len = 4 + 5 + 2 + publ.len();
    let mut got = vec![0u8; want_len];
    tls.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
    assert_eq!(
        &got[..9],
        &[0x20, 0x02, 0x00, 0x00, 0x90, 0x03, 0x00, 0x01, 0x00]
    );
    assert_eq!(&got[11..], &publ[..], "our PUBLISH came back intact");
    tls.conn
        .protocol_version()
        .ok_or_else(|| "no version".to_string())
}

/// `mosquitto_pub` with `args`; true if it exited 0.
fn pub_ok(port: u16, args: &[&str]) -> bool {
    let p = port.to_string();
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-t",
            "tls/x",
            "-m",
            "x",
            "-q",
            "1",
        ])
        .args(args)
        .output()
        .expect("mosquitto_pub")
        .status
        .success()
}

/// Expect one more refused handshake on `listener` after `f`.
fn expect_tls_refusal(s: &Setup, listener: &str, what: &str, f: impl FnOnce()) {
    let (fails, rejects) = rejected_tls(&s.gate, listener);
    f();
    wait_until(Duration::from_secs(5), &format!("{what}: counted"), || {
        rejected_tls(&s.gate, listener) == (fails + 1.0, rejects + 1.0)
    });
}

#[test]
fn tls_12_and_13_clients_publish_and_subscribe() {
    let s = setup();
    // Each TLS listener's failure counter is there at 0 before any failure, so that
    // `rate()` over it is 0, not empty.
    let exposed = s.gate.metrics();
    for l in ["tls", "tls13", "mtls"] {
        let series = format!("mqgate_tls_handshake_failures_total{{listener=\"{l}\"}} 0\n");
        assert!(exposed.contains(&series), "{series} in:\n{exposed}");
    }
    let ca = s.ca.to_str().expect("path");
    for (tls_version, mqtt_version) in [
        ("tlsv1.2", "mqttv311"),
        ("tlsv1.3", "mqttv5"),
        ("tlsv1.2", "mqttv31"),
    ] {
        let msg = format!("secret over {tls_version} {mqtt_version}");
        let extra = ["--cafile", ca, "--tls-version", tls_version];
        let got = cli_round_trip(
            s.tls,
            &extra,
            mqtt_version,
            &format!("tls/{tls_version}"),
            &msg,
        );
        assert_eq!(got.trim_end(), msg);
    }
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        assert_eq!(mqtt_over_tls(s.tls, &s.ca, v, None), Ok(v.version));
    }
    assert_eq!(
        rejected_tls(&s.gate, "tls"),
        (0.0, 0.0),
        "no handshake failed"
    );
    assert!(
        s.gate
            .metric("mqgate_connections_total", &[("listener", "tls")])
            >= 6.0
    );

    // A client that does not trust the server's CA gives up; the gateway counts it.
    let other = Pki::new("unrelated");
    let other_ca = write(s._dir.path(), "unrelated-ca.pem", &other.ca_pem);
    expect_tls_refusal(&s, "tls", "untrusted server certificate", || {
        assert!(!pub_ok(
            s.tls,
            &["--cafile", other_ca.to_str().expect("path")]
        ));
    });
    // Plain MQTT on the TLS port.
    expect_tls_refusal(&s, "tls", "plain MQTT on a TLS port", || {
        let mut c = tcp(s.tls);
        c.write_all(&connect_v311("plain")).expect("send");
        let (got, ended) = read_to_close(&mut c, Duration::from_secs(5));
        assert!(
            got.is_empty() || got[0] == 0x15,
            "no CONNACK, at most a TLS alert: {got:02x?}"
        );
        assert_ne!(ended, Ended::Open);
    });
}

/// The cipher suite follows the client's first choice of bulk cipher: clients that put
/// AES-GCM first (rustls and OpenSSL do, AES-256-GCM first) get AES-128-GCM, those that
/// put ChaCha20-Poly1305 first (CPUs without AES instructions) get it; a client that
/// offers only AES-256-GCM still gets it. Each session then carries MQTT.
#[test]
fn cipher_suite_is_aes_128_gcm_unless_the_client_puts_chacha20_first() {
    use rustls::crypto::ring::cipher_suite as cs;
    use rustls::version::{TLS12, TLS13};
    use rustls::CipherSuite as S;
    use std::io::Read;
    let s = setup();
    let chacha_first = [
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ];
    let only_aes256 = [
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ];
    let cases: [(_, Option<&[_]>, _); 6] = [
        (&TLS13, None, S::TLS13_AES_128_GCM_SHA256),
        (
            &TLS13,
            Some(&chacha_first),
            S::TLS13_CHACHA20_POLY1305_SHA256,
        ),
        (&TLS13, Some(&only_aes256), S::TLS13_AES_256_GCM_SHA384),
        (&TLS12, None, S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        (
            &TLS12,
            Some(&chacha_first),
            S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            &TLS12,
            Some(&only_aes256),
            S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
    ];
    for (i, (version, suites, want)) in cases.into_iter().enumerate() {
        let mut tls = tls_client_offering(s.tls, &s.ca, version, None, suites)
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        let got = tls.conn.negotiated_cipher_suite().map(|c| c.suite());
        assert_eq!(
            got,
            Some(want),
            "case {i}: {:?} offering {suites:?}",
            version.version
        );
        tls.write_all(&connect_v311(&format!("suite-{i}")))
            .expect("CONNECT");
        let mut connack = [0u8; 4];
        tls.read_exact(&mut connack).expect("CONNACK");
        assert_eq!(
            connack,
            [0x20, 0x02, 0x00, 0x00],
            "case {i}: CONNACK accepted"
        );
    }
    // A real OpenSSL client, default suites: AES-128-GCM too.
    let ca = s.ca.to_str().expect("path");
    let out = OPENSSL
        .command()
        .args(["s_client", "-connect", &format!("127.0.0.1:{}", s.tls)])
        .args(["-CAfile", ca, "-servername", "localhost", "-brief"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("TLS_AES_128_GCM_SHA256"),
        "openssl s_client negotiated: {text}"
    );
    assert_eq!(
        rejected_tls(&s.gate, "tls"),
        (0.0, 0.0),
        "no handshake failed"
    );
}

#[test]
fn min_version_13_refuses_tls_12() {
    let s = setup();
    let ca = s.ca.to_str().expect("path");
    assert!(pub_ok(
        s.tls13,
        &["--cafile", ca, "--tls-version", "tlsv1.3"]
    ));
    let v13 = &rustls::version::TLS13;
    assert_eq!(mqtt_over_tls(s.tls13, &s.ca, v13, None), Ok(v13.version));
    expect_tls_refusal(&s, "tls13", "TLS 1.2 client", || {
        let r = mqtt_over_tls(s.tls13, &s.ca, &rustls::version::TLS12, None);
        assert!(r.is_err(), "TLS 1.2 refused: {r:?}");
    });
}

#[test]
fn mtls_accepts_the_client_ca_and_refuses_the_rest() {
    let s = setup();
    let ca = s.ca.to_str().expect("path");
    let (cert, key) = (
        s.client_cert.to_str().expect("p"),
        s.client_key.to_str().expect("p"),
    );
    for tls_version in ["tlsv1.2", "tlsv1.3"] {
        let extra = [
            "--cafile",
            ca,
            "--cert",
            cert,
            "--key",
            key,
            "--tls-version",
            tls_version,
        ];
        let got = cli_round_trip(s.mtls, &extra, "mqttv311", "mtls/t", "from a known device");
        assert_eq!(got.trim_end(), "from a known device");
    }
    let good = Some((s.client_cert.as_path(), s.client_key.as_path()));
    let rogue = Some((s.rogue_cert.as_path(), s.rogue_key.as_path()));
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        assert_eq!(mqtt_over_tls(s.mtls, &s.ca, v, good), Ok(v.version));
    }
    assert_eq!(rejected_tls(&s.gate, "mtls"), (0.0, 0.0));
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        for (what, cert) in [("no certificate", None), ("another CA", rogue)] {
            expect_tls_refusal(&s, "mtls", what, || {
                let r = mqtt_over_tls(s.mtls, &s.ca, v, cert);
                assert!(r.is_err(), "{what} over {:?} refused: {r:?}", v.version);
            });
        }
    }

    expect_tls_refusal(&s, "mtls", "no client certificate", || {
        assert!(!pub_ok(s.mtls, &["--cafile", ca]));
    });
    let (rcert, rkey) = (
        s.rogue_cert.to_str().expect("p"),
        s.rogue_key.to_str().expect("p"),
    );
    for tls_version in ["tlsv1.2", "tlsv1.3"] {
        expect_tls_refusal(&s, "mtls", "certificate from another CA", || {
            let args = [
                "--cafile",
                ca,
                "--cert",
                rcert,
                "--key",
                rkey,
                "--tls-version",
                tls_version,
            ];
            assert!(!pub_ok(s.mtls, &args));
        });
    }
    // Refusals are logged at debug with the reason.
    assert!(s.gate.log_text().contains("refused: TLS handshake failed"));
    // And a good client still gets in.
    assert!(pub_ok(
        s.mtls,
        &["--cafile", ca, "--cert", cert, "--key", key]
    ));
}

#[test]
fn silent_tls_client_is_closed_after_the_handshake_timeout() {
    let s = setup();
    expect_tls_refusal(&s, "tls", "no ClientHello", || {
        let started = Instant::now();
        let mut c = tcp(s.tls);
        let (got, ended) = read_to_close(&mut c, Duration::from_secs(10));
        assert!(got.is_empty());
        assert_ne!(ended, Ended::Open);
        assert!(
            started.elapsed() >= Duration::from_millis(450),
            "closed at the deadline"
        );
    });
    assert!(s
        .gate
        .log_text()
        .contains("refused: TLS handshake timed out"));
    // Garbage instead of a ClientHello fails at once.
    expect_tls_refusal(&s, "tls", "garbage", || {
        let mut c = tcp(s.tls);
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("send");
        let (_, ended) = read_to_close(&mut c, Duration::from_secs(5));
        assert_ne!(ended, Ended::Open);
    });
}
