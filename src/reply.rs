//! What mqgate itself answers a client it refuses (a CONNACK of its own, or a plain
//! close, without resetting the connection) and the access-log line of the refusal;
//! shared by the session, the identity check and the admission rates.

use crate::metrics::Reject;
use crate::mqtt::{self, connack_reply};
use crate::proxy::ClientCtx;
use crate::runtime::{DataPath, ListenerRt};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

/// Write the access-log line of a connection refused here (nothing when the log is off).
pub(crate) fn log_refusal(
    data: &DataPath,
    lst: &ListenerRt,
    ctx: &ClientCtx,
    connect: Option<&mqtt::Connect<'_>>,
    reason: Reject,
    connack: Option<u8>,
) {
    data.access.refused(crate::access::Refusal {
        listener: &lst.config.name,
        cluster: &lst.cluster.name,
        peer: ctx.peer,
        accepted: ctx.accepted,
        tls: ctx.tls_info.as_ref(),
        connect,
        reason,
        connack,
    });
}

/// Send our own CONNACK and close cleanly: half-close, then drain what the client
/// still sends for a moment so that the close does not turn into a reset that eats the reply.
pub(crate) async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, v5: bool, code: u8) {
    let (reply, n) = connack_reply(v5, code);
    refuse_with(s, &reply[..n]).await
}

/// Send `reply` (nothing: a plain close) and close as [`refuse`] does.
pub(crate) async fn refuse_with<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, reply: &[u8]) {
    if !reply.is_empty() && s.write_all(reply).await.is_err() {
        return;
    }
    let _ = s.flush().await;
    let _ = s.shutdown().await;
    let mut sink = [0u8; 512];
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut drained = 0usize;
    while drained < 64 * 1024 {
        match timeout_at(deadline, s.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}
