//! PROXY protocol (HAProxy's v1 text and v2 binary header).
//!
//! Why: mqgate often sits behind another balancer (a cloud NLB, HAProxy) and in front
//! of brokers that want to see the real client address. On listeners with
//! `proxy_protocol = true` it reads the header sent by a trusted upstream balancer, so
//! that logs, the per-IP rate and PROXY headers out name the real client; with
//! `send_proxy_protocol = "v1" | "v2"` it writes one to the broker (Mosquitto ≥ 2.1
//! reads it with `enable_proxy_protocol`), v2 carrying the TLS details when mqgate
//! terminated TLS.
//!
//! - [`parse`](mod@parse): the pure, incremental parser (fuzzed).
//! - [`encode`]: the headers mqgate sends.
//! - [`accept_header`]: reads exactly the header's bytes from a socket (peek, then
//!   consume only what belongs to the header), so no client byte is lost.

pub mod encode;
pub mod parse;

pub use encode::{header_out, v1_header, v2_header};
pub use parse::{parse, HeaderError, Parsed, ProxyInfo};

use ipnet::IpNet;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::timeout_at;
use tokio::time::Instant;

/// What the gateway knows about a client beyond its bytes: its addresses (the real
/// source behind a PROXY header) and the TLS details of its connection, for PROXY
/// headers out. Made by the transport layer, read by upstream.
pub struct ClientCtx {
    pub peer: SocketAddr,
    /// The address the client connected to (our listener side of its socket).
    pub local: Option<SocketAddr>,
    pub proxied: Option<ProxyInfo>,
    /// Made when a PROXY header out or the access log needs it.
    pub tls_info: Option<TlsInfo>,
    /// When the connection was accepted (access log durations).
    pub accepted: tokio::time::Instant,
    /// The client certificate's identity fields, on a listener with an identity
    /// policy (read by the identity step of the session).
    pub cert_ids: Option<Box<CertIds>>,
}

/// TLS details of a connection mqgate terminated, for PROXY v2 TLVs (PP2_TYPE_SSL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// OpenSSL-style version name, e.g. "TLSv1.3" (what HAProxy sends).
    pub version: Option<String>,
    /// IANA cipher suite name, e.g. "TLS_AES_128_GCM_SHA256".
    pub cipher: Option<String>,
    /// The SNI the client asked for (sent as PP2_TYPE_AUTHORITY).
    pub sni: Option<String>,
    /// Common name of the client certificate's subject (mTLS), if any.
    pub client_cn: Option<String>,
    /// The client presented a certificate (verified by rustls against `client_ca`), on
    /// this connection or, when `resumed`, in the handshake of the session it resumes.
    pub client_cert: bool,
    /// The TLS session was resumed: no certificate was sent on this connection (rustls
    /// restores the one of the session's full handshake).
    pub resumed: bool,
}

impl TlsInfo {
    pub fn from_server_conn(c: &rustls::ServerConnection) -> Self {
        let version = c.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
            other => format!("{other:?}"),
        });
        let cipher = c
            .negotiated_cipher_suite()
            .map(|s| iana_suite_name(&format!("{:?}", s.suite())));
        let leaf = c.peer_certificates().and_then(|certs| certs.first());
        TlsInfo {
            version,
            cipher,
            sni: c.server_name().map(str::to_string),
            client_cn: leaf.and_then(|der| common_name(der.as_ref())),
            client_cert: leaf.is_some(),
            resumed: c.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        }
    }
}

/// rustls names TLS 1.3 suites `TLS13_AES_128_GCM_SHA256`; IANA (and OpenSSL) say
/// `TLS_AES_128_GCM_SHA256`. TLS 1.2 names are already IANA's.
fn iana_suite_name(rustls_name: &str) -> String {
    match rustls_name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => rustls_name.to_string(),
    }
}

/// The subject CN of a DER certificate (the first one, if several).
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("PROXY header from untrusted source {0}")]
    Untrusted(SocketAddr),
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("PROXY header incomplete at the deadline")]
    Timeout,
    #[error("client closed after {0} bytes of PROXY header")]
    Closed(usize),
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Is `ip` inside one of the `trusted` networks? IPv4-mapped IPv6 sources (dual-stack
/// listeners) are compared as IPv4.
pub fn is_trusted(ip: std::net::IpAddr, trusted: &[IpNet]) -> bool {
    let ip = encode::unmap(ip);
    trusted.iter().any(|n| n.contains(&ip))
}

/// Read and check the PROXY header at the start of an accepted connection: only from
/// `trusted` sources, within `deadline`, consuming exactly the header's bytes.
pub async fn accept_header(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    trusted: &[IpNet],
    deadline: Duration,
) -> Result<ProxyInfo, ProxyError> {
    if !is_trusted(peer.ip(), trusted) {
        return Err(ProxyError::Untrusted(peer));
    }
    let until = Instant::now() + deadline;
    match timeout_at(until, read_header(tcp)).await {
        Ok(r) => r,
        Err(_) => Err(ProxyError::Timeout),
    }
}

/// Peek at what has arrived; consume the header if it is complete, else consume what
/// was seen (all of it is header, see [`parse`]) and wait for more. A peek after a
/// consuming read finds the socket empty and waits for readiness: no spinning.
async fn read_header(tcp: &mut TcpStream) -> Result<ProxyInfo, ProxyError> {
    let mut seen: Vec<u8> = Vec::new();
    let mut peek = [0u8; 512];
    loop {
        let n = tcp.peek(&mut peek).await?;
        if n == 0 {
            return Err(ProxyError::Closed(seen.len()));
        }
        let start = seen.len();
        seen.extend_from_slice(&peek[..n]);
        match parse(&seen)? {
            Parsed::Complete { len, info } => {
                let mut rest = vec![0u8; len - start];
                tcp.read_exact(&mut rest).await?;
                return Ok(info);
            }
            Parsed::Incomplete => {
                let mut took = vec![0u8; n];
                tcp.read_exact(&mut took).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, peer) = l.accept().await.unwrap();
        (c, s, peer)
    }

    fn localhost() -> Vec<IpNet> {
        vec!["127.0.0.0/8".parse().unwrap()]
    }

    #[tokio::test]
    async fn header_in_pieces_leaves_client_bytes() {
        let (mut c, mut s, peer) = pair().await;
        let task = tokio::spawn(async move {
            let info = accept_header(&mut s, peer, &localhost(), Duration::from_secs(5))
                .await
                .unwrap();
            let mut rest = [0u8; 4];
            s.read_exact(&mut rest).await.unwrap();
            (info, rest)
        });
        for piece in [
            &b"PRO"[..],
            b"XY TCP4 192.0.2.7 10.0.0.1 4",
            b"000 1883\r",
            b"\nMQTT",
        ] {
            c.write_all(piece).await.unwrap();
            c.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (info, rest) = task.await.unwrap();
        assert_eq!(info.source, Some("192.0.2.7:4000".parse().unwrap()));
        assert_eq!(&rest, b"MQTT");
    }

    #[tokio::test]
    async fn untrusted_garbage_and_timeout_are_refused() {
        let (_c, mut s, peer) = pair().await;
        let other: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let r = accept_header(&mut s, peer, &other, Duration::from_secs(1)).await;
        assert!(matches!(r, Err(ProxyError::Untrusted(_))));

        let (mut c, mut s, peer) = pair().await;
        c.write_all(b"\x10\x0c\x00\x04MQTT").await.unwrap();
        let r = accept_header(&mut s, peer, &localhost(), Duration::from_secs(1)).await;
        assert!(matches!(r, Err(ProxyError::Header(HeaderError::NotProxy))));

        let (mut c, mut s, peer) = pair().await;
        c.write_all(b"PROXY TCP4").await.unwrap();
        let r = accept_header(&mut s, peer, &localhost(), Duration::from_millis(200)).await;
        assert!(matches!(r, Err(ProxyError::Timeout)), "{r:?}");
    }

    #[test]
    fn suite_names_and_mapped_trust() {
        assert_eq!(
            iana_suite_name("TLS13_AES_256_GCM_SHA384"),
            "TLS_AES_256_GCM_SHA384"
        );
        assert_eq!(
            iana_suite_name("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        );
        let mapped: std::net::IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(is_trusted(mapped, &localhost()));
        assert!(!is_trusted("::1".parse().unwrap(), &localhost()));
    }
}

/// The identity fields a listener's policy needs, read from the client certificate.
/// `None`: the certificate does not carry that field (the client is refused).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIds {
    pub username: Option<String>,
    pub client_id: Option<String>,
}
