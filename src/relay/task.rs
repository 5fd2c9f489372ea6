//! The relay phase of one connection as a task of its own: both sockets, the relay
//! state ([`super::Pipe`]), the session scope it waits on, the CONNACK deadline and
//! what is released at the end.

use super::{ConnackSink, Pipe, Side};
use crate::access::{Close, ConnackSeen};
use crate::cluster::{ActiveGuard, Cluster, Node, StickyWrite};
use crate::metrics::Metrics;
use crate::mqtt::{self, ConnackInfo};
use crate::runtime::ListenerRt;
use crate::sessions::{CloseCause, SessionScope};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;

/// What the relay phase of a connection keeps besides its sockets and relay state;
/// dropped when the connection ends.
pub struct Keep {
    pub metrics: Arc<Metrics>,
    pub lst: Arc<ListenerRt>,
    /// The node, counted as one of its active connections while this lives.
    pub node: ActiveGuard,
    /// Boxed: it is gone once the broker answered, so idle connections do not carry
    /// its room.
    pub sticky: Option<Box<StickyWrite>>,
    /// `mqgate_connections_active` of this listener and node; decremented on drop.
    pub active: prometheus::IntGauge,
    /// The client speaks MQTT 5 (for a refusal of our own).
    pub v5: bool,
    /// The connection's place under `max_connections`, held until it closes.
    pub permit: OwnedSemaphorePermit,
    /// The access-log line in the making; `None` (8 bytes) when the log is off.
    pub access: Option<Box<crate::access::Entry>>,
    /// `single_live`: goes live on CONNACK 0, released on drop; `None` when off.
    pub live: Option<Box<crate::live::LiveHandle>>,
}

impl Keep {
    fn set_close(&mut self, close: Close) {
        if let Some(e) = self.access.as_mut() {
            e.close.get_or_insert(close);
        }
    }

    /// What the relays report the broker's CONNACK and traffic to.
    pub(super) fn observed(&mut self) -> Observed<'_> {
        Observed {
            metrics: &self.metrics,
            cluster: &self.lst.cluster,
            node: self.node.node(),
            sticky: &mut self.sticky,
            access: &mut self.access,
            live: &mut self.live,
            pipes: self.lst.pipes.as_ref(),
        }
    }

    /// The session's scope closed: when a hash rebalance closed its lane and its slot
    /// stays on this node, the scope to wait on from now on (`None`: it ends). A
    /// `single_live` session gets a scope of its own under the lane again.
    pub(super) fn survive(&mut self) -> Option<SessionScope> {
        if self.live.as_ref().is_some_and(|l| l.taken_over()) {
            return None;
        }
        let lane = self.node.survive(&self.lst.config.name)?;
        match self.live.as_mut() {
            Some(live) => {
                let own = lane.child();
                live.rescope(own.clone());
                Some(own)
            }
            None => Some(lane),
        }
    }

    /// The gateway closed the session: its cause for the access log (a takeover, the
    /// node's close cause, the listener's removal or the shutdown). Every relay
    /// records it the same way.
    pub(super) fn record_gateway_close(&mut self) {
        let Some(e) = self.access.as_mut() else {
            return;
        };
        let taken = self.live.as_ref().is_some_and(|l| l.taken_over());
        let cause = if taken {
            Some(Close::TakenOver)
        } else {
            self.node.node().close_cause().map(|c| match c {
                CloseCause::NodeDown => Close::NodeDown,
                CloseCause::Maint => Close::Maint,
                CloseCause::LeaderChange => Close::LeaderChange,
                CloseCause::Removed => Close::NodeRemoved,
                CloseCause::Rebalance => Close::Rebalance,
            })
        };
        e.closed_by_gateway(self.lst.closed.is_closed(), cause);
    }

    /// Send the access-log line, if the log is on: `close` unless a cause was recorded
    /// already, and the bytes relayed each way.
    pub(super) fn finish_access(&mut self, close: Option<Close>, to_broker: u64, to_client: u64) {
        if let Some(c) = close {
            self.set_close(c);
        }
        if let Some(e) = self.access.take() {
            e.finish(to_broker, to_client);
        }
    }
}

impl Drop for Keep {
    fn drop(&mut self) {
        self.active.dec();
        // The connection's count under its listener's `max_connections`
        // (`session::ListenerCount::hand_over`).
        self.lst
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// The relay phase of one connection, written out as a future of its own: its
    /// fields are all that an idle proxied connection holds (an `async fn` kept
    /// its arguments and their moved copies both, and three cancellation waits).
    ///
    /// Closing by the gateway (node down or in maintenance, listener removed,
    /// shutdown): one session scope covers them all (`Node::session_token`). Its wait
    /// registers the task's waker on the first poll; polling it again would take two
    /// shared locks on every wake-up of every connection, so it is polled again only
    /// after the close epoch moved (`crate::sessions`: closing bumps it before it
    /// cancels, and the cancel wakes this task).
    pub struct RelayTask<S, B = TcpStream> {
        client: S,
        broker: B,
        pipe: Pipe,
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

/// The broker side of a relay: plain TCP, or TLS over it (`[clusters.X.tls]`). Each
/// is its own instance of [`RelayTask`], so a plain broker connection is relayed with
/// no indirection at all.
pub trait BrokerStream: AsyncRead + AsyncWrite + Unpin {
    /// The TCP socket under the stream.
    fn tcp(&self) -> &TcpStream;
}

impl BrokerStream for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl BrokerStream for Box<tokio_rustls::client::TlsStream<TcpStream>> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl<S, B> RelayTask<S, B> {
    /// The relay of a connection whose CONNECT (and what followed) has been forwarded
    /// at `started`; it ends when `scope` closes. With `connack_timeout` (non-zero) the
    /// broker must answer by `started + connack_timeout`. Large flows are spliced when
    /// both sides are plain TCP and the listener has pipes (`limits.splice`).
    pub fn new(
        client: S,
        broker: B,
        started: Instant,
        connack_timeout: Duration,
        scope: &SessionScope,
        keep: Keep,
    ) -> Self {
        RelayTask {
            client,
            broker,
            pipe: Pipe::new(started),
            linger: None,
            connack_deadline: (!connack_timeout.is_zero())
                .then(|| Box::pin(tokio::time::sleep_until(started + connack_timeout))),
            seen_epoch: u64::MAX,
            closed: scope.wait(),
            keep,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + 'static, B: BrokerStream + 'static> Future
    for RelayTask<S, B>
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let epoch = crate::sessions::epoch();
        if *this.seen_epoch != epoch {
            *this.seen_epoch = epoch;
            while this.closed.as_mut().poll(cx).is_ready() {
                // A hash rebalance closed the lane, and this session's slot stays:
                // wait on the lane anew (polled at once, so it registers the waker).
                if let Some(next) = this.keep.survive() {
                    this.closed.set(next.wait());
                    continue;
                }
                tracing::debug!(
                    "session closed by the gateway (node down, maintenance, removal or shutdown)"
                );
                let keep = &mut *this.keep;
                keep.record_gateway_close();
                finish(this.pipe, keep);
                return Poll::Ready(());
            }
        }
        let keep = &mut *this.keep;
        let mut sink = keep.observed();
        let node = sink.node;
        let pipes = sink.pipes;
        match this.pipe.poll(
            cx,
            this.client,
            this.broker,
            &mut sink,
            &node.metrics,
            pipes,
        ) {
            Poll::Ready(Ok(t)) => {
                tracing::debug!(
                    to_broker = t.to_broker,
                    to_client = t.to_client,
                    "connection closed"
                );
                let close = match this.pipe.first_close() {
                    Some(Side::Broker) => Close::Broker,
                    _ => Close::Client,
                };
                keep.set_close(close);
                finish(this.pipe, keep);
                return Poll::Ready(());
            }
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "connection ended with an error");
                if e.side == Side::Client {
                    // The client's connection broke (reset, or a write it can no
                    // longer take): pass the abort on, as the broker would have seen
                    // it from a directly connected client. A FIN instead would leave
                    // this side in TIME_WAIT on an ephemeral port for every aborted
                    // client, and connect() slows down as they pile up (port search).
                    let _ = this.broker.tcp().set_zero_linger();
                }
                keep.set_close(match e.side {
                    Side::Client => Close::ClientError,
                    Side::Broker => Close::BrokerError,
                });
                finish(this.pipe, keep);
                return Poll::Ready(());
            }
            Poll::Pending => {}
        }
        if let Some(deadline) = this.connack_deadline.as_mut() {
            if this.pipe.connack_seen() {
                *this.connack_deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                connack_timed_out(cx, this.client, keep);
                if let Some(e) = keep.access.as_mut() {
                    e.connack(ConnackSeen::Timeout);
                }
                keep.set_close(Close::ConnackTimeout);
                finish(this.pipe, keep);
                return Poll::Ready(());
            }
        }
        if this.pipe.half_closed() {
            let t = this
                .linger
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_LINGER)));
            if t.as_mut().poll(cx).is_ready() {
                tracing::debug!(linger = ?CLOSE_LINGER, "one side closed and the other did not follow; closing");
                keep.set_close(Close::Linger);
                finish(this.pipe, keep);
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

/// Send the access-log line, if the log is on (bytes relayed so far, each way).
fn finish(pipe: &Pipe, keep: &mut Keep) {
    if let Some(e) = keep.access.take() {
        let t = pipe.totals();
        e.finish(t.to_broker, t.to_client);
    }
}

/// The broker did not answer the CONNECT within `connack_timeout`: count it against
/// the node, answer the client "server unavailable" (3.x: CONNACK 0x03; 5: 0x88 with a
/// reason string) as far as its socket takes it right now, and close both sides.
fn connack_timed_out<S: AsyncWrite + Unpin>(cx: &mut Context<'_>, client: &mut S, keep: &Keep) {
    let reply = connack_timeout_reply(keep);
    let mut client = Pin::new(client);
    if let Poll::Ready(Ok(_)) = client.as_mut().poll_write(cx, &reply) {
        let _ = client.as_mut().poll_flush(cx);
        let _ = client.as_mut().poll_shutdown(cx);
    }
}

/// Count a missed CONNACK against the node and build the client's "server
/// unavailable" reply (shared with the packet-aware relay).
pub(super) fn connack_timeout_reply(keep: &Keep) -> Vec<u8> {
    let node = keep.node.node();
    let cluster = &keep.lst.cluster;
    let timeout = cluster.config().connack_timeout;
    tracing::debug!(?timeout, "refused: the node sent no CONNACK in time");
    keep.metrics
        .connack
        .with_label_values(&[&cluster.name, &node.name, "timeout"])
        .inc();
    cluster.connack_missed(node);
    mqtt::unavailable_reply(
        keep.v5,
        &format!("mqgate: no CONNACK from the broker within {timeout:?}"),
    )
}

/// How long a relayed connection stays half-closed. Once one side's close has been
/// passed on (every byte delivered, then FIN), the other side has this long to close
/// too. MQTT has no use for a half-open session — Mosquitto closes the connection
/// when it reads EOF, and a broker that closed (session takeover, kick) will not read
/// again — so this only ends connections of clients that ignore the broker's close,
/// which would otherwise hold their `max_connections` slot forever.
pub const CLOSE_LINGER: Duration = Duration::from_secs(5);

pub(super) struct Observed<'a> {
    pub(super) metrics: &'a Metrics,
    pub(super) cluster: &'a Cluster,
    pub(super) node: &'a Node,
    /// Written only once the broker accepted the client (CONNACK code 0), so that
    /// clients that fail to log in cannot fill the table and push real entries out.
    pub(super) sticky: &'a mut Option<Box<StickyWrite>>,
    pub(super) access: &'a mut Option<Box<crate::access::Entry>>,
    pub(super) live: &'a mut Option<Box<crate::live::LiveHandle>>,
    /// Where large flows get pipes (`crate::relay::splice`), if anywhere.
    pub(super) pipes: Option<&'a std::sync::Arc<crate::pipes::PipePool>>,
}

impl ConnackSink for Observed<'_> {
    fn connack(&mut self, info: Option<ConnackInfo>, latency: Duration) {
        self.cluster.connack_seen(self.node);
        if info.is_none_or(|i| i.code != 0) {
            self.node.count_connack_failure();
        }
        if let Some(e) = self.access.as_mut() {
            e.connack(match info {
                Some(i) => ConnackSeen::Code(i.code),
                None => ConnackSeen::Invalid,
            });
        }
        let code = match info {
            Some(i) => {
                if i.code == 0 {
                    self.cluster
                        .landed(self.sticky.take().map(|b| *b), self.node);
                    if let Some(l) = self.live.as_mut() {
                        l.activate();
                    }
                }
                self.node
                    .metrics
                    .connack_latency
                    .observe(latency.as_secs_f64());
                crate::metrics::code_label(i.code)
            }
            None => "invalid",
        };
        self.metrics
            .connack
            .with_label_values(&[&self.cluster.name, &self.node.name, code])
            .inc();
    }
}
