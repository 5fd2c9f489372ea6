//! A self-signed CA and certificates it signs (rcgen), made for each test.

use std::path::{Path, PathBuf};

pub struct Pki {
    pub ca_pem: String,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub fn new(cn: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Pki {
            ca_pem: cert.pem(),
            ca_cert: cert,
            ca_key: key,
        }
    }

    /// A leaf certificate signed by this CA: (cert PEM, key PEM).
    pub fn leaf(&self, cn: &str, sans: &[&str]) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// Write the CA and a server certificate and key for `localhost` / `127.0.0.1`
    /// into `dir` as `{name}-ca.pem`, `{name}-cert.pem`, `{name}-key.pem`; returns
    /// (ca, cert, key) paths.
    pub fn write_server(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let (c, k) = self.leaf("localhost", &["localhost", "127.0.0.1"]);
        (
            write(dir, &format!("{name}-ca.pem"), &self.ca_pem),
            write(dir, &format!("{name}-cert.pem"), &c),
            write(dir, &format!("{name}-key.pem"), &k),
        )
    }
}

/// Write `text` to `dir/name`; returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write PEM");
    p
}
