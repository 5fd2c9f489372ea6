//! TLS termination: build a rustls server configuration from a listener's `[tls]`
//! section (PEM certificate chain and key, TLS 1.2/1.3, optional client certificates
//! checked against `client_ca`). Only ECDHE key exchange with AEAD suites is offered
//! (Mozilla "intermediate"); rustls offers nothing weaker.

use crate::config::{TlsConfig, TlsVersion};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCert { path: String },
    #[error("{path}: no PEM private key found")]
    NoKey { path: String },
    #[error("invalid TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA {path}: {msg}")]
    ClientCa { path: String, msg: String },
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

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let f = File::open(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        source: e,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(f))
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read {
            path: path.display().to_string(),
            source: e,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let f = File::open(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        source: e,
    })?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|e| TlsError::Read {
            path: path.display().to_string(),
            source: e,
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: path.display().to_string(),
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

/// Build the server configurations for one TLS listener.
pub fn server_config(t: &TlsConfig) -> Result<ServerTls, TlsError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match t.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder =
        ServerConfig::builder_with_provider(server_provider()).with_protocol_versions(versions)?;
    let builder = match &t.client_ca {
        Some(ca) => {
            let roots = load_roots(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: ca.display().to_string(),
                    msg: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
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
}
