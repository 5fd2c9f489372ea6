//! Connecting to a target (plain TCP or TLS with rustls) and opening an MQTT session.

use crate::mqtt;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Stream = Box<dyn Io>;

#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    /// MQTT over WebSocket on this request path (`--ws PATH`).
    pub ws: Option<String>,
    /// Sessions with clean session 0 (`--persistent 1`): mqgate's packet-aware relay
    /// takes them when the cluster has `[sessions] restore_subscriptions`.
    pub persistent: bool,
}

impl Target {
    /// `ca`: PEM file of the CA that signed the server's certificate (TLS), or None.
    /// TLS session resumption is off: every connection pays a full handshake.
    pub fn new(addr: SocketAddr, ca: Option<&str>, ws: Option<&str>) -> Result<Target, String> {
        let tls = match ca {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| format!("read {path}: {e}"))?;
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&pem) {
                    let c = c.map_err(|e| format!("{path}: {e}"))?;
                    roots.add(c).map_err(|e| format!("{path}: {e}"))?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                cfg.resumption = rustls::client::Resumption::disabled();
                let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
                Some((TlsConnector::from(Arc::new(cfg)), name))
            }
        };
        Ok(Target {
            addr,
            tls,
            ws: ws.map(str::to_string),
            persistent: false,
        })
    }

    pub async fn connect(&self, linger0: bool) -> io::Result<Stream> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        if linger0 {
            // Close with a reset: thousands of short connections leave no TIME_WAIT.
            tcp.set_zero_linger()?;
        }
        let mut s: Stream = match &self.tls {
            None => Box::new(tcp),
            Some((c, name)) => Box::new(c.connect(name.clone(), tcp).await?),
        };
        if let Some(path) = &self.ws {
            crate::ws::upgrade(&mut s, path).await?;
            s = Box::new(crate::ws::WsStream::new(s));
        }
        Ok(s)
    }

    /// Connect, send CONNECT, wait for a CONNACK that accepts the session.
    pub async fn session(&self, client_id: &str, linger0: bool) -> io::Result<Stream> {
        let mut s = self.connect(linger0).await?;
        s.write_all(&mqtt::connect(client_id, 0, !self.persistent))
            .await?;
        s.flush().await?;
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).await?;
        if ack[0] != 0x20 || ack[1] != 2 || ack[3] != 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("CONNACK refused or malformed: {ack:02x?}"),
            ));
        }
        Ok(s)
    }
}

/// What a CONNECT got: the session, or the refusing CONNACK's return code.
pub enum ConnackResult {
    Accepted(Stream),
    Refused(u8),
}

impl Target {
    /// Connect (closing with a reset, so thousands of attempts leave no TIME_WAIT), send
    /// CONNECT, and read the CONNACK: accepted or refused with its return code.
    pub async fn session_or_code(&self, client_id: &str) -> io::Result<ConnackResult> {
        let mut s = self.connect(true).await?;
        s.write_all(&mqtt::connect(client_id, 0, !self.persistent))
            .await?;
        s.flush().await?;
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).await?;
        if ack[0] != 0x20 || ack[1] != 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("malformed CONNACK: {ack:02x?}"),
            ));
        }
        Ok(match ack[3] {
            0 => ConnackResult::Accepted(s),
            code => ConnackResult::Refused(code),
        })
    }
}

/// Subscribe on an open session and wait for the SUBACK.
pub async fn subscribe(s: &mut Stream, filter: &str, qos: u8) -> io::Result<()> {
    s.write_all(&mqtt::subscribe(1, filter, qos)).await?;
    s.flush().await?;
    let mut ack = [0u8; 5];
    s.read_exact(&mut ack).await?;
    if ack[0] != 0x90 || ack[4] > 2 {
        return Err(io::Error::other(format!("SUBACK refused: {ack:02x?}")));
    }
    Ok(())
}
