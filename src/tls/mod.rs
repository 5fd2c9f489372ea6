//! TLS termination: build a rustls server configuration from a listener's `[tls]`
//! section (PEM certificate chain and key, TLS 1.2/1.3, optional client certificates
//! checked against `client_ca`). Only ECDHE key exchange with AEAD suites is offered
//! (Mozilla "intermediate"); rustls offers nothing weaker.

pub mod any_name;
pub mod revocation;

use crate::config::{PeerTlsConfig, TlsConfig, TlsVersion};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not valid PEM: {msg}")]
    Pem { path: String, msg: String },
    #[error("{path}: no PEM certificate found")]
    NoCert { path: String },
    #[error("{path}: no PEM private key found")]
    NoKey { path: String },
    #[error("invalid TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA {path}: {msg}")]
    ClientCa { path: String, msg: String },
    #[error("CRL {path}: {msg}")]
    Crl { path: String, msg: String },
    #[error("broker CA {path}: {msg}")]
    BrokerCa { path: String, msg: String },
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The provider of client-facing TLS listeners: the suites of [`provider`] with
/// AES-128-GCM ahead of AES-256-GCM. TLS 1.3 requires every implementation to have
/// TLS_AES_128_GCM_SHA256 (RFC 8446 9.1), and its 128-bit strength matches the
/// P-256 / X25519 key exchange; SHA-256 is what CPUs accelerate (SHA-NI, ARMv8), so the
/// handshake's key schedule costs less (the SHA-384 of AES-256-GCM was ~12 % of
/// mqgate's CPU in a TLS connect storm, SHA-256 ~3 %), and AES-128 has 10 rounds to
/// AES-256's 14 for every byte relayed.
pub fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

/// A TLS listener's server configurations. Both have the same certificate, session
/// cache and ticket key (resumption works across them); they differ only in whose
/// cipher-suite order decides.
pub struct ServerTls {
    /// mqgate's order ([`server_provider`]: AES-128-GCM first), for clients whose first
    /// choice is AES-GCM.
    server_order: Arc<ServerConfig>,
    /// The client's order, for clients whose first choice is ChaCha20-Poly1305: TLS
    /// libraries put it first when the CPU has no AES instructions (BoringSSL, Go,
    /// rustls on such CPUs), and AES in software would cost them more.
    client_order: Arc<ServerConfig>,
}

impl ServerTls {
    /// The configuration for a handshake whose ClientHello offered `suites`, in the
    /// client's order of preference.
    pub fn config_for(&self, suites: &[rustls::CipherSuite]) -> Arc<ServerConfig> {
        if prefers_chacha(suites) {
            self.client_order.clone()
        } else {
            self.server_order.clone()
        }
    }
}

/// Whether the first suite of `offered` that mqgate has is a ChaCha20-Poly1305 one
/// (unknown values, such as GREASE or CBC suites, are skipped; Go's crypto/tls decides
/// the same way).
pub fn prefers_chacha(offered: &[rustls::CipherSuite]) -> bool {
    use rustls::CipherSuite as S;
    offered
        .iter()
        .find_map(|s| match *s {
            S::TLS13_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(true),
            S::TLS13_AES_128_GCM_SHA256
            | S::TLS13_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(false),
            _ => None,
        })
        .unwrap_or(false)
}

/// A PEM reading error of `path`: I/O errors (opening or reading the file) apart from
/// damaged PEM (a section without its end line, bad base64).
fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    let path = path.display().to_string();
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    let msg = match e {
        pem::Error::Io(source) => return TlsError::Read { path, source },
        pem::Error::MissingSectionEnd { end_marker } => {
            format!(
                "no \"-----END {}-----\" line (cut short?)",
                text(&end_marker)
            )
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed section start {:?}", text(&line))
        }
        e => e.to_string(),
    };
    TlsError::Pem { path, msg }
}

/// Every `CERTIFICATE` section of a PEM file, in order (other sections are skipped).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|sections| sections.collect::<Result<_, _>>())
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file: PKCS#8 (`PRIVATE KEY`), PKCS#1
/// (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.display().to_string(),
        },
        e => pem_error(path, e),
    })
}

pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| TlsError::ClientCa {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn paths_text(paths: &[std::path::PathBuf]) -> String {
    let v: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    v.join(", ")
}

/// Build the server configurations for one TLS listener (`listener`: its name, for
/// the log line of a revoked client certificate).
pub fn server_config(t: &TlsConfig, listener: &str) -> Result<ServerTls, TlsError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match t.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder =
        ServerConfig::builder_with_provider(server_provider()).with_protocol_versions(versions)?;
    let builder = match &t.client_ca {
        Some(ca) => {
            let roots = load_roots(ca)?;
            // Revocation as HAProxy's and NGINX's `crl-file` / `ssl_crl` check it: every
            // certificate of the chain, one whose issuer has no CRL is refused, and so is
            // one whose CRL is out of date (`nextUpdate` passed).
            let crls = crate::tls::revocation::load_all(&t.crl)?;
            let with_crls = !crls.is_empty();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .with_crls(crls)
                .enforce_revocation_expiration()
                .build()
                .map_err(|e| match e {
                    rustls::server::VerifierBuilderError::InvalidCrl(_) => TlsError::Crl {
                        path: paths_text(&t.crl),
                        msg: e.to_string(),
                    },
                    e => TlsError::ClientCa {
                        path: ca.display().to_string(),
                        msg: e.to_string(),
                    },
                })?;
            if with_crls {
                builder.with_client_cert_verifier(Arc::new(crate::tls::revocation::LogRevoked {
                    inner: verifier,
                    listener: listener.to_string(),
                }))
            } else {
                builder.with_client_cert_verifier(verifier)
            }
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(load_certs(&t.cert)?, load_key(&t.key)?)?;
    // Session resumption: stateful cache plus stateless tickets make reconnect storms cheap.
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    let client_order = Arc::new(cfg.clone());
    cfg.ignore_client_order = true;
    Ok(ServerTls {
        server_order: Arc::new(cfg),
        client_order,
    })
}

#[cfg(test)]
mod tests {
    use super::prefers_chacha;
    use rustls::CipherSuite as S;

    #[test]
    fn the_first_known_suite_decides_chacha20_or_aes() {
        let grease = S::Unknown(0x0a0a);
        let cbc = S::TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA;
        let cases: &[(&[S], bool)] = &[
            (
                &[
                    S::TLS13_CHACHA20_POLY1305_SHA256,
                    S::TLS13_AES_128_GCM_SHA256,
                ],
                true,
            ),
            (
                &[
                    S::TLS13_AES_256_GCM_SHA384,
                    S::TLS13_CHACHA20_POLY1305_SHA256,
                ],
                false,
            ),
            // GREASE and suites mqgate does not have are skipped.
            (&[grease, S::TLS13_CHACHA20_POLY1305_SHA256], true),
            (
                &[cbc, grease, S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256],
                true,
            ),
            (
                &[grease, cbc, S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
                false,
            ),
            (&[grease, cbc], false),
            (&[], false),
        ];
        for (offered, want) in cases {
            assert_eq!(prefers_chacha(offered), *want, "{offered:?}");
        }
    }

    /// PEM files are read with rustls-pki-types (`PemObject`): every certificate of a
    /// chain, the first key of any of the three kinds, and an error that says what is
    /// wrong with the file.
    #[test]
    fn pem_files_are_read_and_their_faults_named() {
        use super::{load_certs, load_key, TlsError};
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            p
        };
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).expect("ca");
        let leaf = rcgen::generate_simple_self_signed(vec!["leaf".into()]).expect("leaf");
        let (ca_pem, leaf_pem) = (ca.cert.pem(), leaf.cert.pem());
        let key_pem = leaf.key_pair.serialize_pem();

        // A chain with a key between its certificates: both certificates, in order.
        let chain = write("chain.pem", &format!("{leaf_pem}{key_pem}{ca_pem}"));
        let certs = load_certs(&chain).expect("chain");
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].as_ref(), leaf.cert.der().as_ref());
        assert_eq!(certs[1].as_ref(), ca.cert.der().as_ref());
        // The key after a certificate in the same file.
        let both = write("both.pem", &format!("{leaf_pem}{key_pem}"));
        let key = load_key(&both).expect("key");
        assert_eq!(key.secret_der(), leaf.key_pair.serialized_der());

        let cut = write("cut.pem", &leaf_pem[..leaf_pem.len() / 2]);
        let e = load_certs(&cut).expect_err("cut short").to_string();
        assert!(e.contains("no \"-----END CERTIFICATE-----\" line"), "{e}");
        let bad = write("bad.pem", &leaf_pem.replacen("MII", "M!I", 1));
        let e = load_certs(&bad).expect_err("bad base64");
        assert!(matches!(e, TlsError::Pem { .. }), "{e}");
        let e = load_certs(&write("none.pem", "not PEM at all\n")).expect_err("no cert");
        assert!(matches!(e, TlsError::NoCert { .. }), "{e}");
        let e = load_key(&write("cert-only.pem", &leaf_pem)).expect_err("no key");
        assert!(matches!(e, TlsError::NoKey { .. }), "{e}");
        let e = load_certs(&dir.path().join("missing.pem")).expect_err("missing");
        assert!(matches!(e, TlsError::Read { .. }), "{e}");
    }
}

/// TLS for peer links: both directions, one CA.
#[derive(Clone)]
pub struct PeerTls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
    /// For discovered peers, whose names are learned in the handshake: accepts a
    /// certificate of the CA for any DNS name it carries (the name is checked after the
    /// handshake against the one the peer proves, `crate::peers::auth`).
    pub discover_connector: TlsConnector,
}

/// Build the rustls server (client certificates required) and client configurations
/// of peer links (`[peers.tls]`).
pub fn peer_configs(t: &PeerTlsConfig) -> Result<PeerTls, TlsError> {
    let roots = Arc::new(load_roots(&t.ca)?);
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::ClientCa {
                path: t.ca.display().to_string(),
                msg: e.to_string(),
            })?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&t.cert)?, load_key(&t.key)?)?;
    let any_name =
        crate::tls::any_name::verifier(roots.clone()).map_err(|e| TlsError::ClientCa {
            path: t.ca.display().to_string(),
            msg: e.to_string(),
        })?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(&t.cert)?, load_key(&t.key)?)?;
    let discover = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(any_name)
        .with_client_auth_cert(load_certs(&t.cert)?, load_key(&t.key)?)?;
    Ok(PeerTls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
        discover_connector: TlsConnector::from(Arc::new(discover)),
    })
}
