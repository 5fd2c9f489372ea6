//! Transport: a client connection from accept to a byte stream and a [`ClientCtx`].
//!
//! `max_connections` slot → [PROXY header in, only from `trusted_proxies`; then
//! `per_ip_connect_rate` on the real source] → [TLS handshake under
//! `tls_handshake_timeout`] → [WebSocket upgrade (`crate::ws`) under
//! `connect_timeout`] → [`crate::session::serve`]. Every refusal here is counted once
//! and logged once at debug.

use crate::config::ProxyProtocolOut;
use crate::metrics::Reject;
use crate::proxy::ClientCtx;
use crate::runtime::{DataPath, ListenerRt, Runtime};
use crate::session::Slot;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout_at;
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;
use tracing::{field, Instrument};

/// Entry point of a connection task.
pub async fn handle(
    data: Arc<DataPath>,
    rt: Arc<Runtime>,
    lst: Arc<ListenerRt>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let span = tracing::debug_span!(
        "conn",
        client.addr = %peer,
        listener = %lst.config.name,
        client_id = field::Empty,
        node = field::Empty
    );
    async move {
        // TCP_NODELAY is inherited from the listening socket (`listener::bind`).
        let limits = &rt.config.limits;
        let Some(slot) = take_slot(&data, &lst.config.name) else {
            return;
        };
        let mut tcp = tcp;
        let mut peer = peer;
        let mut proxied = None;
        if lst.config.proxy_protocol {
            // Boxed, like every set-up step below: the task spawned per connection
            // stays small (a few hundred bytes, moved once into its task cell).
            let header = Box::pin(crate::proxy::accept_header(
                &mut tcp,
                peer,
                &lst.config.trusted_proxies,
                limits.connect_timeout,
            ));
            match header.await {
                Ok(info) => {
                    if let Some(src) = info.source {
                        tracing::Span::current().record("client.addr", field::display(src));
                        peer = src;
                    }
                    proxied = Some(info);
                    let rate = limits.per_ip_connect_rate;
                    if over_rate(&data, &lst.config.name, peer, rate) {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "refused: PROXY header");
                    data.metrics.reject(&lst.config.name, Reject::Proxy);
                    return;
                }
            }
        }
        // Our side of the client socket is only needed for a PROXY header to the
        // broker: skip the syscall otherwise (connect storms).
        let send_pp = lst.cluster.config().send_proxy_protocol != ProxyProtocolOut::Off;
        let ctx = ClientCtx {
            peer,
            local: if send_pp { tcp.local_addr().ok() } else { None },
            proxied,
            tls_info: None,
        };
        // Boxed: the task keeps only the future of the transport in use, not the
        // largest of plain, TLS handshake and TLS serve (idle memory per connection).
        match lst.tls.as_ref().map(|t| t.load_full()) {
            None => Box::pin(serve(&data, &rt, &lst, tcp, ctx, slot)).await,
            Some(server_tls) => {
                let tls = handshake_then_serve(&data, &rt, &lst, server_tls, tcp, ctx, slot);
                Box::pin(tls).await
            }
        }
    }
    .instrument(span)
    .await
}

/// The TLS handshake (under `tls_handshake_timeout`), then [`serve`].
async fn handshake_then_serve(
    data: &Arc<DataPath>,
    rt: &Runtime,
    lst: &Arc<ListenerRt>,
    server_tls: Arc<crate::tls::ServerTls>,
    tcp: TcpStream,
    mut ctx: ClientCtx,
    slot: Slot,
) {
    let deadline = Instant::now() + rt.config.limits.tls_handshake_timeout;
    // The ClientHello first: its cipher suites choose the configuration (`tls::ServerTls`).
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
        let config = server_tls.config_for(start.client_hello().cipher_suites());
        start.into_stream(config).await
    };
    match timeout_at(deadline, handshake).await {
        Ok(Ok(stream)) => {
            if lst.cluster.config().send_proxy_protocol != ProxyProtocolOut::Off {
                ctx.tls_info = Some(crate::proxy::TlsInfo::from_server_conn(stream.get_ref().1));
            }
            Box::pin(serve(data, rt, lst, stream, ctx, slot)).await
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "refused: TLS handshake failed");
            tls_failed(data, lst);
        }
        Err(_) => {
            tracing::debug!("refused: TLS handshake timed out");
            tls_failed(data, lst);
        }
    }
}

/// The session, behind the WebSocket upgrade on listeners that have one.
async fn serve<S>(
    data: &Arc<DataPath>,
    rt: &Runtime,
    lst: &Arc<ListenerRt>,
    stream: S,
    ctx: ClientCtx,
    slot: Slot,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(ws) = lst.config.websocket.as_ref() else {
        return crate::session::serve(data, rt, lst, stream, ctx, slot).await;
    };
    let limits = &rt.config.limits;
    let policy = crate::ws::handshake::Policy {
        path: &ws.path,
        allowed_origins: &ws.allowed_origins,
    };
    let deadline = Instant::now() + limits.connect_timeout;
    let upgrade = crate::ws::accept(stream, policy, deadline, limits.max_connect_size);
    match Box::pin(upgrade).await {
        Ok(ws) => Box::pin(crate::session::serve(data, rt, lst, ws, ctx, slot)).await,
        Err(f) => {
            tracing::debug!(
                reason = f.reason.as_str(),
                "refused: WebSocket upgrade: {}",
                f.why
            );
            data.metrics.reject(&lst.config.name, f.reason);
        }
    }
}

fn take_slot(data: &DataPath, listener: &str) -> Option<Slot> {
    if let Ok(p) = data.conn_limit.clone().try_acquire_owned() {
        return Some(Slot {
            permit: p,
            granted: true,
        });
    }
    match data.rejecting.clone().try_acquire_owned() {
        Ok(p) => Some(Slot {
            permit: p,
            granted: false,
        }),
        Err(_) => {
            tracing::debug!("refused: max_connections reached (closed without reading)");
            data.metrics.reject(listener, Reject::Busy);
            None
        }
    }
}

fn tls_failed(data: &DataPath, lst: &ListenerRt) {
    data.metrics
        .tls_handshake_failures
        .with_label_values(&[&lst.config.name])
        .inc();
    data.metrics.reject(&lst.config.name, Reject::Tls);
}

/// Apply `per_ip_connect_rate` to a new connection from `peer`; when it is over,
/// count and log the refusal and answer true (the caller closes the connection).
pub fn over_rate(data: &DataPath, listener: &str, peer: SocketAddr, rate: u32) -> bool {
    if data.rate.allow(peer.ip(), rate) {
        return false;
    }
    data.metrics.reject(listener, Reject::Rate);
    tracing::debug!(client.addr = %peer, listener, "refused: over per_ip_connect_rate");
    true
}
