//! TLS from mqgate to the brokers (`[clusters.X.tls]`, HAProxy's `server … ssl verify
//! required ca-file … crt …`): a rustls client configuration per cluster, built from
//! its CA bundle, optional client certificate and minimum version, and the handshake
//! on a connected socket. The data path and the health checks both use it
//! (`crate::upstream`).
//!
//! The material is loaded with the rest of the configuration (start-up, `check`, every
//! reload), so a reload picks up changed files. TLS session resumption (rustls' default
//! in-memory cache) keeps reconnect storms to a broker cheap.

use crate::config::{BrokerTlsConfig, TlsVersion};
use crate::tls::{load_certs, load_key, load_roots, provider, TlsError};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// One cluster's client side of TLS to its brokers.
pub struct BrokerTls {
    connector: TlsConnector,
    /// `server_name`, when set: every node's certificate must be valid for it.
    server_name: Option<ServerName<'static>>,
}

/// Why a TLS connection to a broker failed: the name checked and what rustls said
/// (for a certificate of another name, the names it is valid for).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS: {host:?} is not a valid server name: set server_name in [clusters.X.tls]")]
    Name { host: String },
    #[error("TLS handshake (server name {name:?}): {error}")]
    Handshake { name: String, error: std::io::Error },
}

impl From<HandshakeError> for std::io::Error {
    fn from(e: HandshakeError) -> Self {
        let kind = match &e {
            HandshakeError::Name { .. } => std::io::ErrorKind::InvalidInput,
            HandshakeError::Handshake { error, .. } => error.kind(),
        };
        std::io::Error::new(kind, e)
    }
}

/// Build the client configuration of a cluster's `[tls]`.
pub fn client_config(t: &BrokerTlsConfig) -> Result<BrokerTls, TlsError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match t.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let roots = load_roots(&t.ca).map_err(|e| match e {
        TlsError::ClientCa { path, msg } => TlsError::BrokerCa { path, msg },
        e => e,
    })?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_root_certificates(roots);
    let cfg = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?
        }
        _ => builder.with_no_client_auth(),
    };
    let server_name = match &t.server_name {
        Some(n) => Some(server_name(n).ok_or_else(|| {
            TlsError::Rustls(rustls::Error::General(format!(
                "{n:?} is not a valid server name"
            )))
        })?),
        None => None,
    };
    Ok(BrokerTls {
        connector: TlsConnector::from(Arc::new(cfg)),
        server_name,
    })
}

/// `host` as a TLS server name: a DNS name or an IP address (IPv6 with or without
/// brackets).
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(h.to_string()).ok()
}

impl BrokerTls {
    /// The TLS handshake with a node whose address has host `host` (the name checked
    /// unless `server_name` is set).
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> Result<TlsStream<TcpStream>, HandshakeError> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => server_name(host).ok_or_else(|| HandshakeError::Name {
                host: host.to_string(),
            })?,
        };
        let shown = name.to_str().into_owned();
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|error| HandshakeError::Handshake { name: shown, error })
    }
}
