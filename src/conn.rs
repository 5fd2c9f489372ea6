//! One client connection, from accept to close. See `src/LIFECYCLE.md`.
//!
//! accept → `max_connections` slot → [PROXY header] → [TLS handshake] → read CONNECT
//! (deadline, size cap) → pick node(s) → connect upstream (timeout, retries) → forward
//! the original bytes → relay both ways (CONNACK observed, half-closes passed on, at
//! most [`CLOSE_LINGER`] half-open) → close on EOF, error, node/listener cancellation
//! or shutdown. Every refusal is counted once and logged once at debug.

use crate::cluster::{ActiveGuard, Cluster, Node, StickyWrite};
use crate::config::ProxyProtocolOut;
use crate::gateway::{ListenerRt, Runtime, Shared};
use crate::metrics::Reject;
use crate::mqtt::{self, connack_reply, ConnackInfo, ConnectError, Parse};
use crate::relay::{self, ConnackSink};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout_at;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{field, Instrument};

/// Entry point of a connection task.
pub async fn handle(
    shared: Arc<Shared>,
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
        let Some(slot) = take_slot(&shared, &lst.config.name) else {
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
                    if crate::listener::over_rate(&shared, &lst.config.name, peer, rate) {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "refused: PROXY header");
                    shared.metrics.reject(&lst.config.name, Reject::Proxy);
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
            None => Box::pin(serve(&shared, &rt, &lst, tcp, ctx, slot)).await,
            Some(server_tls) => {
                let tls = handshake_then_serve(&shared, &rt, &lst, server_tls, tcp, ctx, slot);
                Box::pin(tls).await
            }
        }
    }
    .instrument(span)
    .await
}

/// The TLS handshake (under `tls_handshake_timeout`), then [`serve`].
async fn handshake_then_serve(
    shared: &Arc<Shared>,
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
    match timeout_at(deadline.into(), handshake).await {
        Ok(Ok(stream)) => {
            if lst.cluster.config().send_proxy_protocol != ProxyProtocolOut::Off {
                ctx.tls_info = Some(crate::proxy::TlsInfo::from_server_conn(stream.get_ref().1));
            }
            Box::pin(serve(shared, rt, lst, stream, ctx, slot)).await
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "refused: TLS handshake failed");
            tls_failed(shared, lst);
        }
        Err(_) => {
            tracing::debug!("refused: TLS handshake timed out");
            tls_failed(shared, lst);
        }
    }
}

/// A connection's place under `max_connections`. Taken at accept time, before the
/// PROXY header and the TLS handshake, so that every open client socket counts.
struct Slot {
    /// Held until the connection closes.
    _permit: OwnedSemaphorePermit,
    /// False when over the limit: the CONNECT is still read (so that the refusal
    /// speaks the client's protocol version), then answered "server busy". At most
    /// `MAX_REJECTING` (gateway.rs) such clients are being refused at once.
    granted: bool,
}

fn take_slot(shared: &Shared, listener: &str) -> Option<Slot> {
    if let Ok(p) = shared.conn_limit.clone().try_acquire_owned() {
        return Some(Slot {
            _permit: p,
            granted: true,
        });
    }
    match shared.rejecting.clone().try_acquire_owned() {
        Ok(p) => Some(Slot {
            _permit: p,
            granted: false,
        }),
        Err(_) => {
            tracing::debug!("refused: max_connections reached (closed without reading)");
            shared.metrics.reject(listener, Reject::Busy);
            None
        }
    }
}

fn tls_failed(shared: &Shared, lst: &ListenerRt) {
    shared
        .metrics
        .tls_handshake_failures
        .with_label_values(&[&lst.config.name])
        .inc();
    shared.metrics.reject(&lst.config.name, Reject::Tls);
}

/// What the gateway knows about the client beyond its bytes (for PROXY headers out).
pub struct ClientCtx {
    pub peer: SocketAddr,
    /// The address the client connected to (our listener side of its socket).
    pub local: Option<SocketAddr>,
    pub proxied: Option<crate::proxy::ProxyInfo>,
    pub tls_info: Option<crate::proxy::TlsInfo>,
}

enum ReadError {
    Reject(Reject, String),
    /// Protocol level not 3/4/5: answered with CONNACK 0x01.
    Protocol(u8),
}

/// Read one complete CONNECT (and whatever follows it in the same reads).
/// Returns the bytes read and the CONNECT's length.
async fn read_connect<S: AsyncRead + Unpin>(
    s: &mut S,
    max: usize,
    deadline: Instant,
) -> Result<(Vec<u8>, usize), ReadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let total = loop {
        match mqtt::frame_len(&buf, max) {
            Ok(Parse::Complete(n)) => break n,
            Ok(Parse::Incomplete) => {}
            Err(e) => return Err(map_connect_error(e)),
        }
        read_more(s, &mut buf, 256, deadline).await?;
    };
    while buf.len() < total {
        let want = total - buf.len();
        read_more(s, &mut buf, want, deadline).await?;
    }
    Ok((buf, total))
}

async fn read_more<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    want: usize,
    deadline: Instant,
) -> Result<(), ReadError> {
    if buf.capacity() - buf.len() == 0 {
        buf.reserve_exact(want.max(64));
    }
    match timeout_at(deadline.into(), s.read_buf(buf)).await {
        Err(_) => Err(ReadError::Reject(
            Reject::Timeout,
            format!("CONNECT incomplete after {} bytes", buf.len()),
        )),
        Ok(Err(e)) => Err(ReadError::Reject(
            Reject::Closed,
            format!("read error before a complete CONNECT: {e}"),
        )),
        Ok(Ok(0)) => Err(ReadError::Reject(
            Reject::Closed,
            format!("client closed after {} bytes of CONNECT", buf.len()),
        )),
        Ok(Ok(_)) => Ok(()),
    }
}

fn map_connect_error(e: ConnectError) -> ReadError {
    match e {
        ConnectError::NotConnect => ReadError::Reject(
            Reject::Invalid,
            "first bytes are not an MQTT CONNECT".into(),
        ),
        ConnectError::Malformed(why) => {
            ReadError::Reject(Reject::Malformed, format!("malformed CONNECT: {why}"))
        }
        ConnectError::UnsupportedProtocol(level) => ReadError::Protocol(level),
        ConnectError::TooLarge(n) => ReadError::Reject(
            Reject::TooLarge,
            format!("CONNECT of {n} bytes is over max_connect_size"),
        ),
    }
}

/// Everything after transport setup, for plain and TLS streams alike.
async fn serve<S>(
    shared: &Arc<Shared>,
    rt: &Runtime,
    lst: &Arc<ListenerRt>,
    mut client: S,
    ctx: ClientCtx,
    slot: Slot,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &rt.config.limits;
    let lname = lst.config.name.as_str();
    let deadline = Instant::now() + limits.connect_timeout;
    // Set-up futures are boxed so that their state is freed before the relay runs
    // instead of staying part of every idle connection's task.
    let reading = Box::pin(read_connect(&mut client, limits.max_connect_size, deadline));
    let (buf, len) = match reading.await {
        Ok(x) => x,
        Err(ReadError::Reject(reason, why)) => {
            tracing::debug!(reason = reason.as_str(), "refused: {why}");
            shared.metrics.reject(lname, reason);
            return;
        }
        Err(ReadError::Protocol(level)) => {
            tracing::debug!(level, "refused: unsupported protocol level");
            shared.metrics.reject(lname, Reject::Protocol);
            Box::pin(refuse(&mut client, false, 0x01)).await;
            return;
        }
    };
    let connect = match mqtt::parse_connect(&buf[..len]) {
        Ok(c) => c,
        Err(e) => {
            let (reason, why, level) = match map_connect_error(e) {
                ReadError::Reject(r, w) => (r, w, None),
                ReadError::Protocol(l) => (
                    Reject::Protocol,
                    "unsupported protocol level".to_string(),
                    Some(l),
                ),
            };
            tracing::debug!(reason = reason.as_str(), "refused: {why}");
            shared.metrics.reject(lname, reason);
            if level.is_some() {
                Box::pin(refuse(&mut client, false, 0x01)).await;
            }
            return;
        }
    };
    let v5 = connect.version.is_v5();
    tracing::Span::current().record("client_id", connect.client_id);
    shared
        .metrics
        .connect_packets
        .with_label_values(&[lname, connect.version.as_str()])
        .inc();
    if !slot.granted {
        tracing::debug!("refused: max_connections reached");
        shared.metrics.reject(lname, Reject::Busy);
        Box::pin(refuse(&mut client, v5, if v5 { 0x89 } else { 0x03 })).await;
        return;
    }
    let cluster = &lst.cluster;
    let cfg = cluster.config();
    let route = Box::pin(route(
        lst,
        &mut client,
        &connect,
        &buf,
        &ctx,
        limits.max_connect_size,
    ));
    let Routed {
        node,
        broker,
        sticky,
        closed,
        started,
    } = match route.await {
        Ok(r) => r,
        Err(Unrouted::ClientGone(why)) => {
            tracing::debug!(reason = "closed", "client left while held: {why}");
            shared.metrics.reject(lname, Reject::Closed);
            return;
        }
        Err(Unrouted::ListenerClosed) => {
            tracing::debug!("listener closed while the client was held");
            return;
        }
        Err(Unrouted::NoNode { why }) => {
            let reply = cfg.no_node_reply;
            tracing::debug!(reply = reply.as_str(), "refused: {why}");
            shared.metrics.reject(lname, Reject::NoNode);
            let bytes = if !reply.connack_for(v5) {
                Vec::new()
            } else if v5 {
                mqtt::connack_reply_v5_with_reason(0x88, &format!("mqgate: {why}"))
            } else {
                let (b, n) = connack_reply(false, 0x03);
                b[..n].to_vec()
            };
            Box::pin(refuse_with(&mut client, &bytes)).await;
            return;
        }
    };
    drop(buf);
    // The relay runs as a task of its own that holds only what relaying needs: this
    // set-up task (CONNECT buffer, pick, timers, TLS handshake state) ends here and
    // its memory is freed, which keeps an idle proxied connection small.
    let labels = [lname, cluster.name.as_str(), node.name.as_str()];
    shared
        .metrics
        .connections_total
        .with_label_values(&labels)
        .inc();
    let active = shared.metrics.connections_active.with_label_values(&labels);
    active.inc();
    let task = RelayTask {
        client,
        broker,
        pipe: relay::Pipe::new(started),
        linger: None,
        connack_deadline: (!cfg.connack_timeout.is_zero()).then(|| {
            Box::pin(tokio::time::sleep_until(
                (started + cfg.connack_timeout).into(),
            ))
        }),
        seen_epoch: u64::MAX,
        closed: closed.cancelled_owned(),
        keep: Keep {
            shared: shared.clone(),
            lst: lst.clone(),
            node: node.connection_guard(),
            sticky: sticky.map(Box::new),
            active,
            v5,
            _slot: slot,
        },
    };
    // The connection's span exists only when debug logging is on; otherwise the
    // task carries no span at all.
    let span = tracing::Span::current();
    if span.is_none() {
        shared.tracker.spawn(task);
    } else {
        shared.tracker.spawn(task.instrument(span));
    }
}

/// A client with a node: the broker connection (CONNECT and what followed already
/// forwarded), the sticky write to do once the broker accepts, and the token that
/// closes the session.
struct Routed {
    node: Arc<Node>,
    broker: TcpStream,
    sticky: Option<StickyWrite>,
    closed: CancellationToken,
    started: Instant,
}

enum Unrouted {
    /// No node took the client within `queue_timeout` (or `queue_max` were held).
    NoNode { why: String },
    /// The client closed or failed while held.
    ClientGone(String),
    /// The listener was removed, or shutdown's grace ended, while the client was held.
    ListenerClosed,
}

/// Longest pause between two attempts while held, when a node that the cluster still
/// counts as usable refuses connections (a leader that just died, before its health
/// checks notice). Any change of the cluster's state ends a pause at once.
const HELD_RETRY_MAX: Duration = Duration::from_secs(1);

/// Pick nodes and connect, holding the client while no node can take it (full-sync
/// between leaders, dynsec with every node down) up to the cluster's `queue_timeout`,
/// at most `queue_max` clients at once (HAProxy's `timeout queue` / `maxqueue`). A held
/// client is routed as soon as a node is usable: every change of the cluster's state
/// wakes it, and a node that refused is tried again after a short, growing pause.
/// Bytes the client sends while held (up to `cap`) are kept and forwarded after its
/// CONNECT; a client that closes while held is let go.
async fn route<S: AsyncRead + Unpin>(
    lst: &ListenerRt,
    client: &mut S,
    connect: &mqtt::Connect<'_>,
    buf: &[u8],
    ctx: &ClientCtx,
    cap: usize,
) -> Result<Routed, Unrouted> {
    let cluster = &lst.cluster;
    let cfg = cluster.config();
    let lname = lst.config.name.as_str();
    let began = Instant::now();
    let deadline = began + cfg.queue_timeout;
    let mut extra: Vec<u8> = Vec::new();
    let mut queued = None;
    let mut pause = Duration::from_millis(50);
    loop {
        // Receives every `notify_waiters` from its creation on, unpolled: no change
        // between this pick and the wait below is missed, and nothing is locked here
        // (connect storms take this path for every client).
        let changed = cluster.changed();
        tokio::pin!(changed);
        let pick = cluster.pick(connect);
        for node in &pick.nodes {
            let broker = match connect_upstream(node, cfg.connect_timeout).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(node = %node.name, error = %e, "node refused; trying the next");
                    continue;
                }
            };
            // Subscribe to the node's session handle before forwarding, so that a
            // node marked down from now on also closes this session.
            let closed = node.session_token(lname, &lst.closed);
            let started = Instant::now();
            match forward_first(&cfg, ctx, broker, buf, &extra).await {
                Ok(broker) => {
                    node.metrics
                        .to_broker
                        .inc_by((buf.len() + extra.len()) as u64);
                    if queued.is_some() {
                        cluster.queue_result("routed");
                        tracing::debug!(node = %node.name, waited = ?began.elapsed(), "held client routed");
                    }
                    tracing::Span::current().record("node", node.name.as_str());
                    return Ok(Routed {
                        node: node.clone(),
                        broker,
                        sticky: pick.sticky,
                        closed,
                        started,
                    });
                }
                Err(e) => {
                    tracing::debug!(node = %node.name, error = %e, "forwarding CONNECT to the node failed; trying the next");
                }
            }
        }
        let why = |held: bool| {
            let what = match (cfg.mode, pick.nodes.len()) {
                (crate::config::Mode::FullSync, 0) => "no leader".to_string(),
                (_, 0) => "no node is up".to_string(),
                (_, n) => format!("{n} node(s) refused the connection"),
            };
            if held {
                format!(
                    "{what} after holding the client for {:?}",
                    cfg.queue_timeout
                )
            } else {
                what
            }
        };
        if Instant::now() >= deadline {
            if queued.is_some() {
                cluster.queue_result("timeout");
            }
            return Err(Unrouted::NoNode {
                why: why(!cfg.queue_timeout.is_zero()),
            });
        }
        if queued.is_none() {
            match cluster.enter_queue() {
                Some(g) => {
                    tracing::debug!(reason = %why(false), "no node can take the client: held");
                    queued = Some(g);
                }
                None => {
                    cluster.queue_result("full");
                    return Err(Unrouted::NoNode {
                        why: format!(
                            "{} and queue_max ({}) clients are held",
                            why(false),
                            cfg.queue_max
                        ),
                    });
                }
            }
        }
        // Nothing picked: only a change of state can help. Nodes picked but refusing:
        // try again after a pause too (their checks may not have noticed yet).
        let wake = if pick.nodes.is_empty() {
            deadline
        } else {
            deadline.min(Instant::now() + pause)
        };
        pause = (pause * 2).min(HELD_RETRY_MAX);
        tokio::select! {
            _ = &mut changed => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = lst.closed.cancelled() => {
                cluster.queue_result("closed");
                return Err(Unrouted::ListenerClosed);
            }
            r = client.read_buf(&mut extra), if extra.len() < cap => match r {
                Ok(0) => {
                    cluster.queue_result("closed");
                    return Err(Unrouted::ClientGone("client closed".into()));
                }
                Err(e) => {
                    cluster.queue_result("closed");
                    return Err(Unrouted::ClientGone(format!("read error: {e}")));
                }
                Ok(_) => {}
            },
        }
    }
}

/// Write `[PROXY header] + CONNECT (+ what followed) + bytes read while held` to a
/// freshly connected broker, in one write.
async fn forward_first(
    cfg: &crate::config::ClusterConfig,
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

/// Bumped before any token that relayed sessions wait on is cancelled (a node's
/// sessions, a listener's, shutdown): see [`RelayTask`].
static CANCEL_EPOCH: AtomicU64 = AtomicU64::new(0);

/// Cancel a token that relayed sessions wait on (a node's session token, a listener's
/// `closed`, `hard_stop`). Always use this rather than `token.cancel()` for those.
pub fn cancel_sessions(token: &CancellationToken) {
    CANCEL_EPOCH.fetch_add(1, Ordering::SeqCst);
    token.cancel();
}

/// What the relay phase of a connection keeps besides its sockets and relay state;
/// dropped when the connection ends.
struct Keep {
    shared: Arc<Shared>,
    lst: Arc<ListenerRt>,
    /// The node, counted as one of its active connections while this lives.
    node: ActiveGuard,
    /// Boxed: it is gone once the broker answered, so idle connections do not carry
    /// its room.
    sticky: Option<Box<StickyWrite>>,
    active: prometheus::IntGauge,
    /// The client speaks MQTT 5 (for a refusal of our own).
    v5: bool,
    _slot: Slot,
}

impl Drop for Keep {
    fn drop(&mut self) {
        self.active.dec();
    }
}

pin_project_lite::pin_project! {
    /// The relay phase of one connection, written out as a future of its own: its
    /// fields are all that an idle proxied connection holds (an `async fn` kept
    /// its arguments and their moved copies both, and three cancellation waits).
    ///
    /// Closing by the gateway (node down or in maintenance, listener removed,
    /// shutdown): one token covers them all (`Node::session_token`). Its wait
    /// registers the task's waker on the first poll; polling it again would take two
    /// shared locks on every wake-up of every connection, so it is polled again only
    /// after [`cancel_sessions`] bumped `CANCEL_EPOCH` (it does so before cancelling,
    /// and the cancel wakes this task).
    struct RelayTask<S> {
        client: S,
        broker: TcpStream,
        pipe: relay::Pipe,
        // Allocated only once a side has closed: an open connection carries no timer.
        linger: Option<Pin<Box<tokio::time::Sleep>>>,
        // The broker's CONNACK deadline (`connack_timeout`); freed once it answered.
        connack_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        seen_epoch: u64,
        #[pin]
        closed: WaitForCancellationFutureOwned,
        keep: Keep,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for RelayTask<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let epoch = CANCEL_EPOCH.load(Ordering::SeqCst);
        if *this.seen_epoch != epoch {
            *this.seen_epoch = epoch;
            if this.closed.as_mut().poll(cx).is_ready() {
                tracing::debug!(
                    "session closed by the gateway (node down, maintenance, removal or shutdown)"
                );
                return Poll::Ready(());
            }
        }
        let keep = &mut *this.keep;
        let node = keep.node.node();
        let mut sink = Observed {
            shared: &keep.shared,
            cluster: &keep.lst.cluster,
            node,
            sticky: &mut keep.sticky,
        };
        match this
            .pipe
            .poll(cx, this.client, this.broker, &mut sink, &node.metrics)
        {
            Poll::Ready(Ok(t)) => {
                tracing::debug!(
                    to_broker = t.to_broker,
                    to_client = t.to_client,
                    "connection closed"
                );
                return Poll::Ready(());
            }
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "connection ended with an error");
                if e.side == relay::Side::Client {
                    // The client's connection broke (reset, or a write it can no
                    // longer take): pass the abort on, as the broker would have seen
                    // it from a directly connected client. A FIN instead would leave
                    // this side in TIME_WAIT on an ephemeral port for every aborted
                    // client, and connect() slows down as they pile up (port search).
                    let _ = this.broker.set_zero_linger();
                }
                return Poll::Ready(());
            }
            Poll::Pending => {}
        }
        if let Some(deadline) = this.connack_deadline.as_mut() {
            if this.pipe.connack_seen() {
                *this.connack_deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                connack_timed_out(cx, this.client, keep);
                return Poll::Ready(());
            }
        }
        if this.pipe.half_closed() {
            let t = this
                .linger
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_LINGER)));
            if t.as_mut().poll(cx).is_ready() {
                tracing::debug!(linger = ?CLOSE_LINGER, "one side closed and the other did not follow; closing");
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

/// The broker did not answer the CONNECT within `connack_timeout`: count it against
/// the node, answer the client "server unavailable" (3.x: CONNACK 0x03; 5: 0x88 with a
/// reason string) as far as its socket takes it right now, and close both sides.
fn connack_timed_out<S: AsyncWrite + Unpin>(cx: &mut Context<'_>, client: &mut S, keep: &Keep) {
    let node = keep.node.node();
    let cluster = &keep.lst.cluster;
    let timeout = cluster.config().connack_timeout;
    tracing::debug!(?timeout, "refused: the node sent no CONNACK in time");
    keep.shared
        .metrics
        .connack
        .with_label_values(&[&cluster.name, &node.name, "timeout"])
        .inc();
    cluster.connack_missed(node);
    let reply = if keep.v5 {
        mqtt::connack_reply_v5_with_reason(
            0x88,
            &format!("mqgate: no CONNACK from the broker within {timeout:?}"),
        )
    } else {
        connack_reply(false, 0x03).0[..4].to_vec()
    };
    let mut client = Pin::new(client);
    if let Poll::Ready(Ok(_)) = client.as_mut().poll_write(cx, &reply) {
        let _ = client.as_mut().poll_flush(cx);
        let _ = client.as_mut().poll_shutdown(cx);
    }
}

/// How long a relayed connection stays half-closed. Once one side's close has been
/// passed on (every byte delivered, then FIN), the other side has this long to close
/// too. MQTT has no use for a half-open session — Mosquitto closes the connection
/// when it reads EOF, and a broker that closed (session takeover, kick) will not read
/// again — so this only ends connections of clients that ignore the broker's close,
/// which would otherwise hold their `max_connections` slot forever.
pub const CLOSE_LINGER: Duration = Duration::from_secs(5);

async fn connect_upstream(node: &Node, t: Duration) -> std::io::Result<TcpStream> {
    match tokio::time::timeout(t, crate::health::connect_node(node)).await {
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

/// Send our own CONNACK and close cleanly: half-close, then drain what the client still
/// sends for a moment so that the close does not turn into a reset that eats the reply.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, v5: bool, code: u8) {
    let (reply, n) = connack_reply(v5, code);
    refuse_with(s, &reply[..n]).await
}

/// Send `reply` (nothing: a plain close) and close as [`refuse`] does.
async fn refuse_with<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, reply: &[u8]) {
    if !reply.is_empty() && s.write_all(reply).await.is_err() {
        return;
    }
    let _ = s.flush().await;
    let _ = s.shutdown().await;
    let mut sink = [0u8; 512];
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut drained = 0usize;
    while drained < 64 * 1024 {
        match timeout_at(deadline.into(), s.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

struct Observed<'a> {
    shared: &'a Shared,
    cluster: &'a Cluster,
    node: &'a Node,
    /// Written only once the broker accepted the client (CONNACK code 0), so that
    /// clients that fail to log in cannot fill the table and push real entries out.
    sticky: &'a mut Option<Box<StickyWrite>>,
}

impl ConnackSink for Observed<'_> {
    fn connack(&mut self, info: Option<ConnackInfo>, latency: Duration) {
        self.cluster.connack_seen(self.node);
        let code = match info {
            Some(i) => {
                if i.code == 0 {
                    self.cluster
                        .landed(self.sticky.take().map(|b| *b), self.node);
                }
                self.node
                    .metrics
                    .connack_latency
                    .observe(latency.as_secs_f64());
                crate::metrics::code_label(i.code)
            }
            None => "invalid",
        };
        self.shared
            .metrics
            .connack
            .with_label_values(&[&self.cluster.name, &self.node.name, code])
            .inc();
    }
}
