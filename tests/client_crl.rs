//! Client-certificate revocation (`[listeners.tls] crl`) with an OpenSSL-made CA
//! (`openssl ca`: two client certificates, `-revoke`, `-gencrl`), real clients
//! (`mosquitto_pub`/`mosquitto_sub`) and a real Mosquitto behind mqgate: the good
//! certificate gets through, the revoked one fails the handshake (counted as `tls`,
//! logged with its serial), and a new CRL written over the old file applies on reload
//! without a restart, as does a DER CRL given as a list; an out-of-date CRL refuses the
//! clients it covers until it is refreshed. `mqgate check` reads CRLs as `run` does.

use crate::common::pki::write;
use crate::common::tools::OPENSSL;
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA run with `openssl ca` in its own directory.
struct OpensslCa {
    dir: PathBuf,
    conf: PathBuf,
    pub ca: PathBuf,
}

fn openssl(args: &[&str], cwd: &Path) -> String {
    let out = OPENSSL
        .command()
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl OpensslCa {
    fn new(dir: &Path) -> OpensslCa {
        OPENSSL.require();
        let dir = dir.join("ca");
        std::fs::create_dir_all(dir.join("newcerts")).expect("ca dir");
        std::fs::write(dir.join("index.txt"), "").expect("index");
        std::fs::write(dir.join("serial"), "1000\n").expect("serial");
        std::fs::write(dir.join("crlnumber"), "01\n").expect("crlnumber");
        let conf = write(
            &dir,
            "ca.cnf",
            &format!(
                "[ ca ]\ndefault_ca = CA_default\n\n[ CA_default ]\ndir = {d}\n\
                 database = $dir/index.txt\nnew_certs_dir = $dir/newcerts\n\
                 certificate = $dir/ca.pem\nprivate_key = $dir/ca.key\nserial = $dir/serial\n\
                 crlnumber = $dir/crlnumber\ndefault_md = sha256\ndefault_days = 30\n\
                 default_crl_days = 30\npolicy = policy_any\nunique_subject = no\n\n\
                 [ policy_any ]\ncommonName = supplied\n\n\
                 [ client_ext ]\nbasicConstraints = CA:FALSE\n\
                 keyUsage = critical, digitalSignature\nextendedKeyUsage = clientAuth\n\
                 authorityKeyIdentifier = keyid\n\n\
                 [ crl_ext ]\nauthorityKeyIdentifier = keyid:always\n",
                d = dir.display()
            ),
        );
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "30",
                "-subj",
                "/CN=mqgate CRL test CA",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            &dir,
        );
        OpensslCa {
            ca: dir.join("ca.pem"),
            dir,
            conf,
        }
    }

    /// A client certificate for `cn`: (cert, key) paths.
    fn client(&self, cn: &str) -> (PathBuf, PathBuf) {
        let c = self.conf.display().to_string();
        let (key, csr, cert) = (
            format!("{cn}.key"),
            format!("{cn}.csr"),
            format!("{cn}.pem"),
        );
        openssl(
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ],
            &self.dir,
        );
        openssl(
            &[
                "ca",
                "-batch",
                "-config",
                &c,
                "-extensions",
                "client_ext",
                "-in",
                &csr,
                "-out",
                &cert,
            ],
            &self.dir,
        );
        (self.dir.join(cert), self.dir.join(key))
    }

    fn revoke(&self, cert: &Path) {
        let c = self.conf.display().to_string();
        openssl(
            &["ca", "-config", &c, "-revoke", &cert.display().to_string()],
            &self.dir,
        );
    }

    /// A CRL of what is revoked now, written to `out` (`der`: DER, else PEM).
    fn crl(&self, out: &Path, der: bool) {
        self.crl_dated(out, der, &[]);
    }

    /// [`OpensslCa::crl`] with more `openssl ca -gencrl` arguments (its dates).
    fn crl_dated(&self, out: &Path, der: bool, dates: &[&str]) {
        let c = self.conf.display().to_string();
        let pem = self.dir.join("crl-now.pem");
        let pem_arg = pem.display().to_string();
        let mut args = vec![
            "ca", "-config", &c, "-gencrl", "-crlexts", "crl_ext", "-out", &pem_arg,
        ];
        args.extend_from_slice(dates);
        openssl(&args, &self.dir);
        if der {
            openssl(
                &[
                    "crl",
                    "-in",
                    &pem.display().to_string(),
                    "-outform",
                    "DER",
                    "-out",
                    &out.display().to_string(),
                ],
                &self.dir,
            );
        } else {
            std::fs::copy(&pem, out).expect("copy CRL");
        }
    }

    /// The serial number as `openssl x509 -serial` prints it.
    fn serial(&self, cert: &Path) -> String {
        let out = openssl(
            &[
                "x509",
                "-noout",
                "-serial",
                "-in",
                &cert.display().to_string(),
            ],
            &self.dir,
        );
        out.trim().trim_start_matches("serial=").to_string()
    }
}

/// `mosquitto_pub` with a client certificate on mqgate's mTLS port; true if it exited 0.
fn pub_with(port: u16, server_ca: &Path, cert: &Path, key: &Path) -> bool {
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "crl/x",
            "-m",
            "x",
        ])
        .args(["-q", "1", "--cafile", &server_ca.display().to_string()])
        .args(["--cert", &cert.display().to_string()])
        .args(["--key", &key.display().to_string()])
        .output()
        .expect("mosquitto_pub")
        .status
        .success()
}

fn tls_failures(g: &Gate) -> (f64, f64) {
    let m = g.metrics();
    (
        metric_value(
            &m,
            "mqgate_tls_handshake_failures_total",
            &[("listener", "mtls")],
        ),
        metric_value(
            &m,
            "mqgate_connections_rejected_total",
            &[("listener", "mtls"), ("reason", "tls")],
        ),
    )
}

/// `cert` fails the handshake on mqgate's mTLS port: the refusal is the `n`th counted
/// as `tls`, and an `info` line saying `says` names the certificate's serial and subject.
fn assert_refused(
    gate: &Gate,
    ca: &OpensslCa,
    port: u16,
    server_ca: &Path,
    cert: (&Path, &Path),
    n: f64,
    says: &str,
) {
    assert!(
        !pub_with(port, server_ca, cert.0, cert.1),
        "{} got in",
        cert.0.display()
    );
    wait_until(
        std::time::Duration::from_secs(5),
        "the refusal counted",
        || tls_failures(gate) == (n, n),
    );
    let serial = ca.serial(cert.0);
    wait_until(
        std::time::Duration::from_secs(5),
        "the refusal logged with the serial",
        || {
            gate.log_text().lines().any(|l| {
                l.contains(says) && l.contains(&format!("serial={serial}")) && l.contains("CN=")
            })
        },
    );
}

/// A broker, and mqgate in front of it with an mTLS listener `mtls` for clients of
/// `ca` checked against the CRL file `crl`, the broker up: the gateway, its client port,
/// the server CA file clients trust, and the broker (running while it is held).
fn start_mtls(d: &Path, ca: &OpensslCa, crl: &Path) -> (Gate, u16, PathBuf, Mosquitto) {
    let server = Pki::new("server CA");
    let (server_ca, cert, key) = server.write_server(d, "server");
    let broker = Mosquitto::start("b1", d);
    let crl_value = format!("\"{}\"", crl.display());
    let (gate, port) = Gate::start_with(d, "gate", |listen, admin| {
        mtls_config(listen, admin, &broker, (&cert, &key), &ca.ca, &crl_value)
    });
    gate.wait_node_up("b1");
    (gate, port, server_ca, broker)
}

fn mtls_config(
    listen: u16,
    admin: u16,
    broker: &Mosquitto,
    s: (&Path, &Path),
    ca: &Path,
    crl: &str,
) -> String {
    format!(
        "{}\n[[listeners]]\nname = \"mtls\"\nbind = \"127.0.0.1:{listen}\"\ncluster = \"brokers\"\n\
         [listeners.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\ncrl = {crl}\n\n\
         [clusters.brokers]\nmode = \"dynsec\"\nnodes = [ {{ name = \"b1\", address = \"{}\" }} ]\n\
         [clusters.brokers.health]\ninterval = \"200ms\"\nrise = 1\nfall = 1\n",
        Gate::admin_section(admin),
        s.0.display(),
        s.1.display(),
        ca.display(),
        broker.address()
    )
}

#[test]
fn a_revoked_client_certificate_is_refused_counted_and_logged_and_a_new_crl_applies_on_reload() {
    let dir = tempdir();
    let d = dir.path();
    let ca = OpensslCa::new(d);
    let (good, good_key) = ca.client("dev1");
    let (bad, bad_key) = ca.client("dev2");
    let (other, other_key) = ca.client("dev3");
    ca.revoke(&bad);
    let crl = d.join("clients.crl.pem");
    ca.crl(&crl, false);
    let (gate, port, server_ca, _broker) = start_mtls(d, &ca, &crl);

    // The good certificate gets through to Mosquitto and back.
    let tls_args = [
        "--cafile",
        server_ca.to_str().expect("utf-8"),
        "--cert",
        good.to_str().expect("utf-8"),
        "--key",
        good_key.to_str().expect("utf-8"),
    ];
    let got = cli_round_trip(port, &tls_args, "mqttv311", "crl/good", "dev1-ok");
    assert_eq!(got.trim(), "dev1-ok");
    assert_eq!(tls_failures(&gate), (0.0, 0.0));

    // The revoked one fails the handshake: counted as `tls`, logged with its serial.
    const REVOKED: &str = "client certificate is revoked";
    assert_refused(&gate, &ca, port, &server_ca, (&bad, &bad_key), 1.0, REVOKED);

    // Revoke dev1 too and write the new CRL over the old file: the next reload (the
    // config unchanged) applies it, without a restart.
    ca.revoke(&good);
    ca.crl(&crl, false);
    let pid = gate.pid();
    let text = std::fs::read_to_string(&gate.config).expect("config");
    gate.reload_with(&text);
    assert_eq!(gate.pid(), pid, "no restart");
    assert_refused(
        &gate,
        &ca,
        port,
        &server_ca,
        (&good, &good_key),
        2.0,
        REVOKED,
    );
    // The same CRL as DER, given as a list: dev3 (never revoked) gets in, dev1 not.
    let crl_der = d.join("clients.crl.der");
    ca.crl(&crl_der, true);
    let crl_value = format!("\"{}\"", crl.display());
    gate.reload_with(&text.replace(&crl_value, &format!("[ \"{}\" ]", crl_der.display())));
    assert!(
        pub_with(port, &server_ca, &other, &other_key),
        "dev3 is not revoked"
    );
    assert_refused(
        &gate,
        &ca,
        port,
        &server_ca,
        (&good, &good_key),
        3.0,
        REVOKED,
    );
}

/// A CRL file written over while mqgate runs applies without any reload command: the
/// CRL files are watched as the config file is (HAProxy needs a reload or its runtime
/// API for a new `crl-file`).
#[test]
fn a_crl_file_written_over_applies_without_a_reload_command() {
    let dir = tempdir();
    let d = dir.path();
    let ca = OpensslCa::new(d);
    let (good, good_key) = ca.client("dev1");
    let crl = d.join("clients.crl.pem");
    ca.crl(&crl, false); // revokes nothing yet
    let (gate, port, server_ca, _broker) = start_mtls(d, &ca, &crl);
    assert!(pub_with(port, &server_ca, &good, &good_key), "dev1 gets in");
    let pid = gate.pid();
    ca.revoke(&good);
    ca.crl(&crl, false);
    wait_until(
        std::time::Duration::from_secs(20),
        "dev1 refused once its certificate is in the rewritten CRL",
        || !pub_with(port, &server_ca, &good, &good_key),
    );
    assert_eq!(gate.pid(), pid, "no restart");
    gate.wait_log("a CRL file changed; reloading");
}

/// A CRL whose nextUpdate has passed refuses the clients it covers, as HAProxy and
/// NGINX do (OpenSSL: "CRL has expired"): `check` warns about the file, the refusal is
/// counted and logged, and a fresh CRL written over it lets the client in again.
#[test]
fn an_out_of_date_crl_refuses_its_clients_until_it_is_refreshed() {
    let dir = tempdir();
    let d = dir.path();
    let ca = OpensslCa::new(d);
    let (good, good_key) = ca.client("dev1");
    let crl = d.join("clients.crl.pem");
    // Issued two days ago, due yesterday: nothing revoked, but out of date.
    let day = 24 * 3600;
    let stamp = |secs_ago: u64| {
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(secs_ago);
        let out = Command::new("date")
            .args(["-u", "-d"])
            .arg(format!(
                "@{}",
                t.duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_secs()
            ))
            .arg("+%Y%m%d%H%M%SZ")
            .output()
            .expect("date");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (last, next) = (stamp(2 * day), stamp(day));
    ca.crl_dated(
        &crl,
        false,
        &["-crl_lastupdate", &last, "-crl_nextupdate", &next],
    );
    let (gate, port, server_ca, _broker) = start_mtls(d, &ca, &crl);
    let (code, out, err) = mqgate_check(&gate.config);
    assert_eq!(code, Some(0), "an out-of-date CRL is a warning: {out}{err}");
    assert!(
        err.contains("listeners[0].tls.crl") && err.contains("out of date"),
        "check warns about the file: {err}"
    );
    gate.wait_log("out of date");

    assert_refused(
        &gate,
        &ca,
        port,
        &server_ca,
        (&good, &good_key),
        1.0,
        "crl that covers this client certificate is out of date",
    );

    // A fresh CRL written over the file: the client gets in again, no restart.
    let pid = gate.pid();
    ca.crl(&crl, false);
    wait_until(
        std::time::Duration::from_secs(20),
        "dev1 let in once the CRL is fresh",
        || pub_with(port, &server_ca, &good, &good_key),
    );
    assert_eq!(gate.pid(), pid, "no restart");
}

#[test]
fn check_reads_crl_files_as_run_does() {
    let dir = tempdir();
    let d = dir.path();
    let ca = OpensslCa::new(d);
    let crl = d.join("ok.crl");
    ca.crl(&crl, false);
    let crl_der = d.join("ok.der");
    ca.crl(&crl_der, true);
    let server = Pki::new("server CA");
    let (_, cert, key) = server.write_server(d, "server");
    let not_crl = write(
        d,
        "not.crl",
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    );
    let cert_as_crl = cert.clone();
    let cfg = |tls: &str| -> PathBuf {
        let text = format!(
            "[[listeners]]\nname = \"mtls\"\nbind = \"127.0.0.1:8883\"\ncluster = \"b\"\n\
             [listeners.tls]\ncert = \"{}\"\nkey = \"{}\"\n{tls}\n\
             [clusters.b]\nnodes = [ {{ name = \"n\", address = \"127.0.0.1:1883\" }} ]\n",
            cert.display(),
            key.display()
        );
        write(d, "gate.toml", &text)
    };
    let client_ca = format!("client_ca = \"{}\"\n", ca.ca.display());
    for ok in [
        format!("{client_ca}crl = \"{}\"", crl.display()),
        format!(
            "{client_ca}crl = [\"{}\", \"{}\"]",
            crl.display(),
            crl_der.display()
        ),
    ] {
        let (code, out, err) = mqgate_check(&cfg(&ok));
        assert_eq!(code, Some(0), "{ok}: {out}{err}");
    }
    for (tls, key_named, says) in [
        (
            format!("{client_ca}crl = \"{}\"", not_crl.display()),
            "listeners[0].tls.crl",
            "CRL",
        ),
        (
            format!(
                "{client_ca}crl = [\"{}\", \"{}\"]",
                crl.display(),
                cert_as_crl.display()
            ),
            "listeners[0].tls.crl[1]",
            "no \"-----BEGIN X509 CRL-----\" section",
        ),
        (
            format!("crl = \"{}\"", crl.display()),
            "listeners[0].tls.crl",
            "without client_ca",
        ),
        (
            format!("{client_ca}crl = \"/nonexistent.crl\""),
            "listeners[0].tls.crl",
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
