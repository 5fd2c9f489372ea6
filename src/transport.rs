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
        let accepted = Instant::now();
        let Some(slot) = take_slot(&data, &lst, peer, accepted) else {
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
                        log_early(&data, &lst, peer, accepted, Reject::Rate);
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "refused: PROXY header");
                    data.metrics.reject(&lst.config.name, Reject::Proxy);
                    log_early(&data, &lst, peer, accepted, Reject::Proxy);
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
            accepted,
            cert_ids: None,
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
            let conn = stream.get_ref().1;
            if lst.cluster.config().send_proxy_protocol != ProxyProtocolOut::Off
                || data.access.is_on()
            {
                ctx.tls_info = Some(crate::proxy::TlsInfo::from_server_conn(conn));
            }
            let policy = lst.config.tls.as_ref().map(|t| t.identity);
            if let Some(p) = policy.filter(|p| p.is_active()) {
                let leaf = conn.peer_certificates().and_then(|c| c.first());
                ctx.cert_ids =
                    leaf.map(|der| Box::new(crate::identity::CertIds::from_der(der.as_ref(), &p)));
            }
            Box::pin(serve(data, rt, lst, stream, ctx, slot)).await
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "refused: TLS handshake failed");
            tls_failed(data, lst);
            log_early(data, lst, ctx.peer, ctx.accepted, Reject::Tls);
        }
        Err(_) => {
            tracing::debug!("refused: TLS handshake timed out");
            tls_failed(data, lst);
            log_early(data, lst, ctx.peer, ctx.accepted, Reject::Tls);
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

/// A place under `max_connections`, global and the listener's own; over either, a
/// "refusing" place (the CONNECT is read, then answered "server busy"), and with 1,024
/// refusals already running, none.
fn take_slot(
    data: &DataPath,
    lst: &ListenerRt,
    peer: SocketAddr,
    accepted: Instant,
) -> Option<Slot> {
    let (listener, n) = crate::session::ListenerCount::new(&lst.active);
    let listener_full = lst.config.max_connections.is_some_and(|max| n > max);
    if !listener_full {
        if let Ok(p) = data.conn_limit.clone().try_acquire_owned() {
            return Some(Slot {
                permit: p,
                granted: true,
                listener,
            });
        }
    }
    match data.rejecting.clone().try_acquire_owned() {
        Ok(p) => {
            if listener_full {
                tracing::debug!("listener max_connections reached: refusing");
            }
            Some(Slot {
                permit: p,
                granted: false,
                listener,
            })
        }
        Err(_) => {
            tracing::debug!("refused: max_connections reached (closed without reading)");
            data.metrics.reject(&lst.config.name, Reject::Busy);
            log_early(data, lst, peer, accepted, Reject::Busy);
            None
        }
    }
}

/// The access-log line of a connection refused before its CONNECT was read.
pub fn log_early(
    data: &DataPath,
    lst: &ListenerRt,
    peer: SocketAddr,
    accepted: Instant,
    r: Reject,
) {
    data.access.refused(crate::access::Refusal {
        listener: &lst.config.name,
        cluster: &lst.cluster.name,
        peer,
        accepted,
        tls: None,
        connect: None,
        reason: r,
        connack: None,
    });
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
