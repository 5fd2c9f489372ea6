//! Upstream: connect to a broker node (resolved addresses in turn, under a deadline)
//! and forward what the client sent first, behind a PROXY header when the cluster
//! sends one. Shared by the connection path and the health checks.

use crate::cluster::Node;
use crate::config::{ClusterConfig, ProxyProtocolOut};
use crate::proxy::ClientCtx;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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
/// freshly connected broker, in one write.
pub async fn forward_first(
    cfg: &ClusterConfig,
    ctx: &ClientCtx,
    mut broker: TcpStream,
    buf: &[u8],
    extra: &[u8],
) -> std::io::Result<TcpStream> {
    let header = match cfg.send_proxy_protocol {
        ProxyProtocolOut::Off => Vec::new(),
        mode => crate::proxy::header_out(mode, ctx, broker.local_addr().ok()),
    };
    if header.is_empty() && extra.is_empty() {
        broker.write_all(buf).await?;
    } else {
        let mut b = header;
        b.extend_from_slice(buf);
        b.extend_from_slice(extra);
        broker.write_all(&b).await?;
    }
    Ok(broker)
}
