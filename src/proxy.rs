//! PROXY protocol (HAProxy's v1 text and v2 binary header): read from trusted upstream
//! balancers on listeners with `proxy_protocol = true`, and written to brokers with
//! `send_proxy_protocol`. The parser is a pure function over bytes.
//!
//! STUB: the hardening work replaces this with the real implementation.

use crate::config::ProxyProtocolOut;
use crate::conn::ClientCtx;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// What a PROXY header told us.
#[derive(Debug, Clone, Default)]
pub struct ProxyInfo {
    /// The real client address (None for LOCAL / UNKNOWN).
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
}

/// TLS details of a terminated connection, for PROXY v2 TLVs.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub version: Option<String>,
    pub cipher: Option<String>,
    pub sni: Option<String>,
    pub client_cn: Option<String>,
}

impl TlsInfo {
    pub fn from_server_conn(c: &rustls::ServerConnection) -> Self {
        TlsInfo {
            version: c.protocol_version().map(|v| format!("{v:?}")),
            cipher: c
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite())),
            sni: c.server_name().map(str::to_string),
            client_cn: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("PROXY header from untrusted source {0}")]
    Untrusted(SocketAddr),
    #[error("PROXY protocol is not implemented yet")]
    Unsupported,
}

/// Read and check the PROXY header at the start of an accepted connection.
pub async fn accept_header(
    _tcp: &mut TcpStream,
    peer: SocketAddr,
    trusted: &[IpNet],
    _deadline: Duration,
) -> Result<ProxyInfo, ProxyError> {
    if !trusted.iter().any(|n| n.contains(&peer.ip())) {
        return Err(ProxyError::Untrusted(peer));
    }
    Err(ProxyError::Unsupported)
}

/// The header to send to a broker before the client's bytes (empty when off).
pub fn header_out(mode: ProxyProtocolOut, _ctx: &ClientCtx, _local: Option<SocketAddr>) -> Vec<u8> {
    match mode {
        ProxyProtocolOut::Off => Vec::new(),
        ProxyProtocolOut::V1 | ProxyProtocolOut::V2 => Vec::new(),
    }
}
