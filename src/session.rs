//! Session: read the client's CONNECT (deadline, size cap), decide where it goes
//! (`cluster.pick`, holding it while no node can take it), connect upstream, and hand
//! both sockets to the relay. The relay is chosen here, per connection, after routing:
//! the byte relay ([`crate::relay::task`]) for every client, except persistent clients
//! of a dynsec cluster with `[sessions] restore_subscriptions`, which get the
//! packet-aware relay ([`crate::relay::packets`]).

use crate::cluster::{Node, StickyWrite};
use crate::metrics::Reject;
use crate::mqtt::{self, ConnectError, Parse};
use crate::proxy::ClientCtx;
use crate::relay::packets::PacketRelay;
use crate::relay::task::{Keep, RelayTask};
use crate::reply::{log_refusal, refuse, refuse_with};
use crate::runtime::{DataPath, ListenerRt, Runtime};
use crate::sessions::SessionScope;
use crate::upstream::Broker;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout_at;
use tokio::time::Instant;
use tracing::Instrument;

/// A connection's place under `max_connections`. Taken at accept time, before the
/// PROXY header and the TLS handshake, so that every open client socket counts.
pub struct Slot {
    /// Held until the connection closes.
    pub permit: OwnedSemaphorePermit,
    /// False when over the limit: the CONNECT is still read (so that the refusal
    /// speaks the client's protocol version), then answered "server busy". At most
    /// `MAX_REJECTING` (gateway.rs) such clients are being refused at once.
    pub granted: bool,
    /// Its count in its listener's connections (for the listener's `max_connections`).
    pub listener: ListenerCount,
}

/// One connection counted in its listener's `active`; uncounted on drop, or by the
/// relay task's `Keep` once [`ListenerCount::hand_over`] gave the count to it (so that
/// an idle relayed connection does not carry a second pointer to the counter).
pub struct ListenerCount(Option<Arc<std::sync::atomic::AtomicUsize>>);

impl ListenerCount {
    /// Count a connection; answers the count with it.
    pub fn new(active: &Arc<std::sync::atomic::AtomicUsize>) -> (Self, usize) {
        let n = active.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        (ListenerCount(Some(active.clone())), n)
    }

    /// The count is now the relay's to undo (`ListenerRt::active`, the same counter).
    pub fn hand_over(mut self) {
        self.0 = None;
    }
}

impl Drop for ListenerCount {
    fn drop(&mut self) {
        if let Some(a) = &self.0 {
            a.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
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
    match timeout_at(deadline, s.read_buf(buf)).await {
        Err(_) => Err(ReadError::Reject(
            Reject::Timeout,
            format!("CONNECT incomplete after {} bytes", buf.len()),
        )),
        Ok(Err(e)) => Err(ReadError::Reject(
            // A WebSocket client's bad frame has a reason of its own.
            crate::ws::reject_of(&e).unwrap_or(Reject::Closed),
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
pub async fn serve<S>(
    data: &Arc<DataPath>,
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
            data.metrics.reject(lname, reason);
            log_refusal(data, lst, &ctx, None, reason, None);
            return;
        }
        Err(ReadError::Protocol(level)) => {
            tracing::debug!(level, "refused: unsupported protocol level");
            data.metrics.reject(lname, Reject::Protocol);
            log_refusal(data, lst, &ctx, None, Reject::Protocol, Some(0x01));
            Box::pin(refuse(&mut client, false, 0x01)).await;
            return;
        }
    };
    // Client-certificate identity: the CONNECT forwarded (and routed on) may be a
    // rewritten one (`crate::identity`).
    // (Checked here, so that other listeners' connections box nothing for it.)
    let policy = lst.config.tls.as_ref().map(|t| t.identity);
    let (buf, len) = match policy.filter(|p| p.is_active()) {
        None => (buf, len),
        Some(policy) => {
            let step = crate::identity::enforce(data, lst, &ctx, &mut client, buf, len, &policy);
            match Box::pin(step).await {
                Some(x) => x,
                None => return,
            }
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
            data.metrics.reject(lname, reason);
            log_refusal(data, lst, &ctx, None, reason, level.map(|_| 0x01));
            if level.is_some() {
                Box::pin(refuse(&mut client, false, 0x01)).await;
            }
            return;
        }
    };
    let v5 = connect.version.is_v5();
    tracing::Span::current().record("client_id", connect.client_id);
    data.metrics
        .connect_packets
        .with_label_values(&[lname, connect.version.as_str()])
        .inc();
    if !slot.granted {
        tracing::debug!("refused: max_connections reached");
        data.metrics.reject(lname, Reject::Busy);
        let code = if v5 { 0x89 } else { 0x03 };
        log_refusal(data, lst, &ctx, Some(&connect), Reject::Busy, Some(code));
        Box::pin(refuse(&mut client, v5, code)).await;
        return;
    }
    let cluster = &lst.cluster;
    let cfg = cluster.config();
    if !cluster.admission.allow(cfg.shaping.connect_rate) {
        Box::pin(crate::shaping::refuse_busy(
            data,
            lname,
            &cluster.name,
            crate::shaping::Refused::ClusterRate,
            &mut client,
            v5,
        ))
        .await;
        return;
    }
    let single_live = cfg.sessions.single_live;
    if single_live.enabled && !connect.client_id.is_empty() {
        if let Some(last) = cluster.live.held(connect.client_id) {
            crate::live::log_held(&cluster.name, connect.client_id, &last, ctx.peer.ip());
            data.metrics.reject(lname, Reject::IdFight);
            let code = if v5 { 0x85 } else { 0x02 };
            log_refusal(data, lst, &ctx, Some(&connect), Reject::IdFight, Some(code));
            Box::pin(refuse(&mut client, v5, code)).await;
            return;
        }
    }
    // `[[clusters.X.fanout]]`: connected to every up node at once (`crate::fanout`).
    if let Some(rule) = crate::fanout::rule_for(&cfg, &connect).cloned() {
        let access = data.access.sink().map(|sink| {
            crate::access::Entry::new(
                sink,
                data.stopping.clone(),
                crate::access::Started {
                    listener: lname,
                    cluster: &cluster.name,
                    node: "",
                    peer: ctx.peer,
                    accepted: ctx.accepted,
                    tls: ctx.tls_info.as_ref(),
                    connect: &connect,
                },
            )
        });
        let c = crate::fanout::Client {
            access,
            ctx,
            v5,
            keep_alive: connect.keep_alive,
            client_id: connect.client_id.to_string(),
            stream: client,
            buf,
            len,
        };
        return Box::pin(crate::fanout::serve(data, lst, cfg, rule, c, slot)).await;
    }
    // A clean session of a client whose subscriptions are stored takes the packet
    // path once too: the broker drops its session, and so does mqgate once the broker
    // has accepted the login (not before: a refused login must not wipe them).
    let packet = packet_aware(&cfg, &connect)
        || (cfg.sessions.restore_subscriptions
            && !connect.client_id.is_empty()
            && cluster.subs.total() > 0
            && cluster.subs.contains(connect.client_id));
    let route = Box::pin(route(
        lst,
        &cfg,
        &mut client,
        &connect,
        if packet { &buf[..len] } else { &buf },
        &ctx,
        limits.max_connect_size,
        packet,
    ));
    let Routed {
        node,
        broker,
        sticky,
        closed,
        hash_slot,
        started,
        held,
        forwarded,
    } = match route.await {
        Ok(r) => r,
        Err(Unrouted::ClientGone(why)) => {
            tracing::debug!(reason = "closed", "client left while held: {why}");
            data.metrics.reject(lname, Reject::Closed);
            log_refusal(data, lst, &ctx, Some(&connect), Reject::Closed, None);
            return;
        }
        Err(Unrouted::ListenerClosed) => {
            tracing::debug!("listener closed while the client was held");
            return;
        }
        Err(Unrouted::Busy) => {
            Box::pin(crate::shaping::refuse_busy(
                data,
                lname,
                &cluster.name,
                crate::shaping::Refused::NodeRate,
                &mut client,
                v5,
            ))
            .await;
            return;
        }
        Err(Unrouted::NoNode { why }) => {
            let reply = cfg.no_node_reply;
            tracing::debug!(reply = reply.as_str(), "refused: {why}");
            data.metrics.reject(lname, Reject::NoNode);
            let bytes = if reply.connack_for(v5) {
                mqtt::unavailable_reply(v5, &format!("mqgate: {why}"))
            } else {
                Vec::new()
            };
            let code = (!bytes.is_empty()).then_some(if v5 { 0x88 } else { 0x03 });
            log_refusal(data, lst, &ctx, Some(&connect), Reject::NoNode, code);
            Box::pin(refuse_with(&mut client, &bytes)).await;
            return;
        }
    };
    let mut rest = Vec::new();
    if packet {
        rest.extend_from_slice(&buf[len..]);
        rest.extend_from_slice(&held);
    }
    let client_id = if packet {
        connect.client_id.to_string()
    } else {
        String::new()
    };
    let clean_start = connect.clean_session;
    let persistent = connect.keeps_session();
    let access = data.access.sink().map(|sink| {
        let mut e = crate::access::Entry::new(
            sink,
            data.stopping.clone(),
            crate::access::Started {
                listener: lname,
                cluster: &cluster.name,
                node: &node.name,
                peer: ctx.peer,
                accepted: ctx.accepted,
                tls: ctx.tls_info.as_ref(),
                connect: &connect,
            },
        );
        e.forwarded(forwarded);
        e
    });
    // `single_live`: the session gets a scope of its own, closed when a newer
    // connection with its id goes live.
    let (closed, live) = if single_live.enabled && !connect.client_id.is_empty() {
        let own = closed.child();
        let h = cluster
            .live
            .handle(connect.client_id, ctx.peer.ip(), own.clone(), single_live);
        (own, Some(Box::new(h)))
    } else {
        (closed, None)
    };
    drop(buf);
    // The relay runs as a task of its own that holds only what relaying needs: this
    // set-up task (CONNECT buffer, pick, timers, TLS handshake state) ends here and
    // its memory is freed, which keeps an idle proxied connection small.
    let labels = [lname, cluster.name.as_str(), node.name.as_str()];
    data.metrics
        .connections_total
        .with_label_values(&labels)
        .inc();
    let active = data.metrics.connections_active.with_label_values(&labels);
    active.inc();
    let guard = node.connection_guard(hash_slot);
    let keep = Keep {
        metrics: data.metrics.clone(),
        lst: lst.clone(),
        node: guard,
        sticky: sticky.map(Box::new),
        active,
        v5,
        permit: slot.permit,
        access,
        live,
    };
    // `Keep` uncounts the connection from `lst.active` when it ends.
    slot.listener.hand_over();
    data.metrics
        .relay_connections
        .with_label_values(&[
            cluster.name.as_str(),
            if packet { "packet" } else { "byte" },
        ])
        .inc();
    // One relay instance per broker stream type: plain TCP is relayed as before, with
    // no indirection.
    if packet {
        macro_rules! packet_relay {
            ($broker:expr) => {
                PacketRelay {
                    client,
                    broker: $broker,
                    held: rest,
                    hold_cap: limits.max_connect_size,
                    client_id,
                    clean_start,
                    persistent,
                    started,
                    scope: closed,
                    cfg,
                    keep,
                }
                .run()
            };
        }
        match broker {
            Broker::Plain(tcp) => spawn_relay(data, packet_relay!(tcp)),
            Broker::Tls(tls) => spawn_relay(data, packet_relay!(tls)),
        }
        return;
    }
    if v5 && (cfg.shaping.close_rate > 0 || single_live.enabled) {
        // MQTT 5 clients of a cluster with a close_rate or single_live are told why
        // they are closed (DISCONNECT at a packet boundary).
        use crate::relay::polite::run as polite;
        let ct = cfg.connack_timeout;
        match broker {
            Broker::Plain(tcp) => spawn_relay(data, polite(client, tcp, started, ct, closed, keep)),
            Broker::Tls(tls) => spawn_relay(data, polite(client, tls, started, ct, closed, keep)),
        }
        return;
    }
    match broker {
        Broker::Plain(tcp) => spawn_relay(
            data,
            RelayTask::new(client, tcp, started, cfg.connack_timeout, &closed, keep),
        ),
        Broker::Tls(tls) => spawn_relay(
            data,
            RelayTask::new(client, tls, started, cfg.connack_timeout, &closed, keep),
        ),
    }
}

/// Run a relay as a task of its own. The connection's span exists only when debug
/// logging is on; otherwise the task carries no span at all.
fn spawn_relay<F>(data: &DataPath, task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let span = tracing::Span::current();
    if span.is_none() {
        data.tracker.spawn(task);
    } else {
        data.tracker.spawn(task.instrument(span));
    }
}

/// A client with a node: the broker connection (CONNECT and what followed already
/// forwarded), the sticky write to do once the broker accepts, and the token that
/// closes the session.
struct Routed {
    node: Arc<Node>,
    broker: Broker,
    sticky: Option<StickyWrite>,
    closed: SessionScope,
    /// The session's hash slot (`balance = "hash"`; `crate::cluster::slots`).
    hash_slot: Option<u16>,
    started: Instant,
    /// Bytes forwarded before the relay (the CONNECT and what followed it).
    forwarded: u64,
    /// Packet-aware relay: what the client sent while held, not forwarded yet.
    held: Vec<u8>,
}

/// Does this client take the packet-aware relay? Persistent clients with a client id
/// in a dynsec cluster with `[sessions] restore_subscriptions` or `clean_orphans`.
fn packet_aware(cfg: &crate::config::ClusterConfig, connect: &mqtt::Connect<'_>) -> bool {
    cfg.mode == crate::config::Mode::Dynsec
        && cfg.sessions.packet_aware()
        && connect.keeps_session()
        && !connect.client_id.is_empty()
}

enum Unrouted {
    /// No node took the client within `queue_timeout` (or `queue_max` were held).
    NoNode { why: String },
    /// The client closed or failed while held.
    ClientGone(String),
    /// The listener was removed, or shutdown's grace ended, while the client was held.
    ListenerClosed,
    /// Every node picked is over `node_connect_rate` (`crate::shaping`).
    Busy,
}

/// Pick nodes and connect, holding the client while no node can take it (full-sync
/// between leaders, dynsec with every node down) up to the cluster's `queue_timeout`,
/// at most `queue_max` clients at once (HAProxy's `timeout queue` / `maxqueue`). A held
/// client is routed as soon as a node is usable: every change of the cluster's state
/// wakes it, and a node that refused is tried again after a short, growing pause.
/// Bytes the client sends while held (up to `cap`) are kept and forwarded after its
/// CONNECT (`hold`: kept for the packet-aware relay instead); a client that closes
/// while held is let go.
#[allow(clippy::too_many_arguments)]
async fn route<S: AsyncRead + Unpin>(
    lst: &ListenerRt,
    cfg: &crate::config::ClusterConfig,
    client: &mut S,
    connect: &mqtt::Connect<'_>,
    buf: &[u8],
    ctx: &ClientCtx,
    cap: usize,
    hold: bool,
) -> Result<Routed, Unrouted> {
    let cluster = &lst.cluster;
    let lname = lst.config.name.as_str();
    let mut queue = crate::hold::Hold::new(lst, cfg, cap);
    let mut extra: Vec<u8> = Vec::new();
    let tls = cluster.tls();
    // `balance = "hash"`: the session waits on its key's slot's lane, so that a
    // rebalance can move exactly the clients whose owner changed.
    let hash_slot = (cfg.balance == crate::config::Balance::Hash)
        .then(|| crate::cluster::sticky_key(cfg.sticky.key, connect))
        .flatten()
        .map(crate::cluster::balance::slot);
    loop {
        // Receives every `notify_waiters` from its creation on, unpolled: no change
        // between this pick and the wait below is missed, and nothing is locked here
        // (connect storms take this path for every client).
        let changed = cluster.changed();
        tokio::pin!(changed);
        let pick = cluster.pick(connect);
        let mut over_rate = 0;
        for node in &pick.nodes {
            if !node.admission.allow(cfg.shaping.node_connect_rate) {
                tracing::debug!(node = %node.name, "node over node_connect_rate; trying the next");
                over_rate += 1;
                continue;
            }
            let broker = match crate::upstream::connect(node, cfg.connect_timeout).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(node = %node.name, error = %e, "node refused; trying the next");
                    continue;
                }
            };
            // Subscribe to the node's session handle before forwarding, so that a
            // node marked down from now on also closes this session.
            let closed =
                node.pacing
                    .lane(lname, &node.session_token(lname, &lst.closed), hash_slot);
            let extra_now: &[u8] = if hold { &[] } else { &extra };
            let first = crate::upstream::forward_first(
                cfg,
                tls.as_deref(),
                node,
                ctx,
                broker,
                buf,
                extra_now,
            );
            match first.await {
                Ok(broker) => {
                    // After the TLS handshake to the broker, if any: CONNECT→CONNACK
                    // latency and `connack_timeout` count from the CONNECT's write.
                    let started = Instant::now();
                    node.metrics
                        .to_broker
                        .inc_by((buf.len() + extra_now.len()) as u64);
                    if queue.is_held() {
                        tracing::debug!(node = %node.name, waited = ?queue.began.elapsed(), "held client routed");
                        queue.end("routed");
                    }
                    tracing::Span::current().record("node", node.name.as_str());
                    return Ok(Routed {
                        node: node.clone(),
                        broker,
                        sticky: pick.sticky,
                        closed,
                        hash_slot,
                        started,
                        forwarded: (buf.len() + extra_now.len()) as u64,
                        held: if hold {
                            std::mem::take(&mut extra)
                        } else {
                            Vec::new()
                        },
                    });
                }
                Err(e) => {
                    tracing::debug!(node = %node.name, error = %e, "forwarding CONNECT to the node failed; trying the next");
                }
            }
        }
        if over_rate > 0 && over_rate == pick.nodes.len() {
            queue.end("closed");
            return Err(Unrouted::Busy);
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
        if queue.expired() {
            queue.end("timeout");
            return Err(Unrouted::NoNode {
                why: why(!cfg.queue_timeout.is_zero()),
            });
        }
        if let Err(why) = queue.enter(&why(false)) {
            return Err(Unrouted::NoNode { why });
        }
        // Nothing picked: only a change of state can help. Nodes picked but refusing:
        // try again after a pause too (their checks may not have noticed yet).
        match queue
            .wait(changed, !pick.nodes.is_empty(), client, &mut extra)
            .await
        {
            Ok(()) => {}
            Err(crate::hold::Gone::ListenerClosed) => return Err(Unrouted::ListenerClosed),
            Err(crate::hold::Gone::Client(why)) => return Err(Unrouted::ClientGone(why)),
        }
    }
}
