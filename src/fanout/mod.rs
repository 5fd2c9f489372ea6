//! Fan-out sessions (`[[clusters.X.fanout]]`, dynsec clusters): a client matched by
//! a rule — a backend service that must see every device — is connected to every up
//! node of the cluster at once and sees one ordinary MQTT session (docs/fanout.md).
//!
//! Entered from [`crate::session`] once the CONNECT is read and admitted, instead of
//! routing to one node. Layers: `session` (the task and its loop) uses `io` (the
//! client's and the nodes' sockets, polled in the session task), `link` (setting up
//! one node connection), `handle` (the packet handlers), and the pure parts:
//! `ids` (packet identifier tables), `merge` (SUBACK and acknowledgement merging),
//! `packet` (PUBLISH views, acknowledgements, topic matching).

mod backoff;
mod batch;
mod closing;
mod handle;
pub mod ids;
mod io;
mod link;
mod logline;
pub mod merge;
mod outbox;
pub mod packet;
mod session;
mod setup;

pub use session::End;

use crate::config::{ClusterConfig, FanoutRule, Mode};
use crate::metrics::Reject;
use crate::mqtt::Connect;
use crate::proxy::ClientCtx;
use crate::runtime::{DataPath, ListenerRt};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// The fan-out rule that takes this client, if any: the first matching rule of a
/// dynsec cluster. A client with an empty client id is never fanned out (each node
/// would assign it an id of its own).
pub fn rule_for<'a>(cfg: &'a ClusterConfig, c: &Connect<'_>) -> Option<&'a FanoutRule> {
    if cfg.mode != Mode::Dynsec || c.client_id.is_empty() {
        return None;
    }
    cfg.fanout.iter().find(|r| r.takes(c.client_id, c.username))
}

/// What [`serve`] needs of the CONNECT already read.
pub struct Client<S> {
    pub stream: S,
    pub ctx: ClientCtx,
    /// The bytes read: the CONNECT (`len` bytes) and what followed it.
    pub buf: Vec<u8>,
    pub len: usize,
    pub v5: bool,
    pub keep_alive: u16,
    pub client_id: String,
    /// The access-log line in the making (`None` when the access log is off).
    pub access: Option<Box<crate::access::Entry>>,
}

/// Run a fan-out session for a client `rule` matched; `keep` (the connection's
/// slot) is held until it ends.
pub async fn serve<S, K>(
    data: &Arc<DataPath>,
    lst: &Arc<ListenerRt>,
    cfg: Arc<ClusterConfig>,
    rule: FanoutRule,
    mut client: Client<S>,
    keep: K,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    K: Send + 'static,
{
    let cluster = lst.cluster.name.clone();
    let lname = lst.config.name.as_str();
    let gauge = data.metrics.fanout.sessions.with_label_values(&[&cluster]);
    if gauge.get() >= rule.max_sessions as i64 {
        tracing::debug!(
            reason = "busy",
            max = rule.max_sessions,
            "refused: fan-out sessions at max_sessions"
        );
        data.metrics.reject(lname, Reject::Busy);
        let code = if client.v5 { 0x89 } else { 0x03 };
        crate::reply::refuse(&mut client.stream, client.v5, code).await;
        if let Some(mut e) = client.access.take() {
            e.connack(crate::access::ConnackSeen::Code(code));
            e.rejected(Reject::Busy);
            e.finish(0, 0);
        }
        return;
    }
    gauge.inc();
    data.metrics
        .relay_connections
        .with_label_values(&[cluster.as_str(), "fanout"])
        .inc();
    tracing::debug!(client_id = %client.client_id, "fan-out session starts");
    // One session per client id on this gateway — and with `single_live`, across
    // the gateways: a newer one takes the id over (`crate::live`, docs/fanout.md).
    let scope = lst.closed.child();
    let live = lst.cluster.live.handle(
        &client.client_id,
        client.ctx.peer.ip(),
        scope.clone(),
        cfg.sessions.single_live,
    );
    let first_read = client.buf.len() as u64;
    let mut buf = client.buf;
    let rest = buf.split_off(client.len.min(buf.len()));
    let start = session::Start {
        data: data.clone(),
        lst: lst.clone(),
        cfg,
        rule,
        ctx: Arc::new(client.ctx),
        connect: buf,
        rest,
        v5: client.v5,
        keep_alive: client.keep_alive,
        client_id: client.client_id,
        scope,
        live,
    };
    let outcome = session::run(start, client.stream).await;
    let end = outcome.end;
    if let Some(e) = client.access {
        let o = session::Outcome {
            from_client: outcome.from_client + first_read,
            ..outcome
        };
        logline::finish(e, &o);
    }
    tracing::debug!(reason = end.as_str(), "fan-out session ended");
    data.metrics
        .fanout
        .closes
        .with_label_values(&[&cluster, end.as_str()])
        .inc();
    gauge.dec();
    drop(keep);
}
