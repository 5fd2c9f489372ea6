//! Upstream: connect to a broker node (resolved addresses in turn, under a deadline)
//! and forward what the client sent first, behind a PROXY header when the cluster
//! sends one, over TLS when the cluster has `[tls]` (the PROXY header goes first, in
//! the clear, before the handshake, as HAProxy sends it). Shared by the connection
//! path and the health checks.

use crate::broker_tls::BrokerTls;
use crate::cluster::Node;
use crate::config::{ClusterConfig, ProxyProtocolOut};
use crate::proxy::ClientCtx;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connection to a broker: plain TCP, or TLS over TCP. The relay takes either
/// stream type as it is (`crate::relay::task`), so the plain path has no indirection;
/// this enum is for set-up and health checks.
pub enum Broker {
    Plain(TcpStream),
    /// Boxed: the TLS state is large, and rare next to plain connections.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Broker {
    /// The TCP socket under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Broker::Plain(s) => s,
            Broker::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Broker {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Broker::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Broker::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Broker {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Broker::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Broker::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Broker::Plain(s) => Pin::new(s).poll_flush(cx),
            Broker::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Broker::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Broker::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Connect to the first reachable address of the node.
pub async fn connect_node(node: &Node) -> std::io::Result<TcpStream> {
    let addrs = node.resolved();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "address not resolved yet");
    for a in addrs.iter() {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connect to `node` within `t`, with TCP_NODELAY.
pub async fn connect(node: &Node, t: Duration) -> std::io::Result<TcpStream> {
    match tokio::time::timeout(t, connect_node(node)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

/// Write `[PROXY header] + CONNECT (+ what followed) + bytes read while held` to a
/// freshly connected broker, in one write. With `tls` (the cluster's `[tls]`), the
/// PROXY header goes first in the clear, then the handshake (within `handshake`),
/// then the rest over TLS.
pub async fn forward_first(
    cfg: &ClusterConfig,
    tls: Option<&BrokerTls>,
    node: &Node,
    ctx: &ClientCtx,
    mut broker: TcpStream,
    buf: &[u8],
    extra: &[u8],
) -> std::io::Result<Broker> {
    let header = match cfg.send_proxy_protocol {
        ProxyProtocolOut::Off => Vec::new(),
        mode => crate::proxy::header_out(mode, ctx, broker.local_addr().ok()),
    };
    if let Some(tls) = tls {
        if !header.is_empty() {
            broker.write_all(&header).await?;
        }
        let host = node.address().host.clone();
        let mut s =
            match tokio::time::timeout(cfg.connect_timeout, tls.handshake(broker, &host)).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    ))
                }
            };
        if extra.is_empty() {
            s.write_all(buf).await?;
        } else {
            let mut b = buf.to_vec();
            b.extend_from_slice(extra);
            s.write_all(&b).await?;
        }
        s.flush().await?;
        return Ok(Broker::Tls(Box::new(s)));
    }
    if header.is_empty() && extra.is_empty() {
        broker.write_all(buf).await?;
    } else {
        let mut b = header;
        b.extend_from_slice(buf);
        b.extend_from_slice(extra);
        broker.write_all(&b).await?;
    }
    Ok(Broker::Plain(broker))
}
