//! The boundary-tracking relay: the byte relay's job for MQTT 5 clients of a cluster
//! with `[clusters.X.shaping] close_rate`, plus a [`Scanner`] on the broker→client
//! direction (fixed headers only: no packet is copied), so that when the gateway
//! closes the session (paced close, evacuation, shutdown) the client first gets a
//! DISCONNECT with the node's close reason (`crate::pacing`: 0x9C "use another
//! server", 0x8B "server shutting down") at a packet boundary. A session whose close
//! has no reason (node down: its broker is gone) closes at once, as on the byte relay.
//!
//! With `[clusters.X.sessions] single_live`, MQTT 5 clients take this relay too, so that
//! a session closed because its client id went live elsewhere (`crate::live`) gets
//! DISCONNECT 0x8E "session taken over".
//!
//! If the broker→client stream is mid-packet when the close comes, relaying goes on
//! until the next boundary, for at most [`BOUNDARY_WAIT`]; past it the close is plain.
//!
//! The two directions and their ending (`duplex`: half-closes and [`CLOSE_LINGER`],
//! a client's abort passed on, the DISCONNECT at a boundary, the access-log line) are
//! shared with the packet-aware relay (`super::packets`), whose persistent clients are
//! thus closed exactly as these are.

use super::task::{connack_timeout_reply, BrokerStream, Keep, CLOSE_LINGER};
use super::{ConnackObserver, CHUNK};
use crate::access::{Close, ConnackSeen};
use crate::mqtt::scanner::Scanner;
use crate::sessions::SessionScope;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Longest wait for a packet boundary before a close with a reason.
pub const BOUNDARY_WAIT: Duration = Duration::from_secs(2);

/// An MQTT 5 DISCONNECT with `reason` and no properties.
pub fn disconnect_v5(reason: u8) -> [u8; 4] {
    [0xE0, 0x02, reason, 0x00]
}

/// MQTT 5 reason "session taken over": a newer connection with the client's id went
/// live (`crate::live`).
pub const SESSION_TAKEN_OVER: u8 = 0x8E;

/// The close reason of a session closed because its client id went live elsewhere.
fn taken_over(keep: &Keep) -> Option<u8> {
    keep.live
        .as_ref()
        .filter(|l| l.taken_over())
        .map(|_| SESSION_TAKEN_OVER)
}

/// How the broker→client direction of [`duplex`] ended.
enum Down {
    /// The broker closed (passed on as a half-close).
    Eof,
    /// The gateway closed the session (after a DISCONNECT or not).
    Closed,
    /// The broker sent no CONNACK within `connack_timeout` (the client was told).
    ConnackTimeout,
}

/// Relay `client` ⇄ `broker` (plain TCP, or TLS with `[clusters.X.tls]`) until either
/// ends or `scope` closes; see the module comment.
pub async fn run<S, B>(
    client: S,
    mut broker: B,
    started: Instant,
    connack_timeout: Duration,
    scope: SessionScope,
    mut keep: Keep,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    B: BrokerStream + Send,
{
    let mut observer = ConnackObserver::new(started);
    let connack_at = (!connack_timeout.is_zero()).then(|| started + connack_timeout);
    duplex(
        client,
        &mut broker,
        Vec::new(),
        &scope,
        &mut keep,
        connack_at,
        Scanner::new(&[], 0),
        |_| {},
        |data, scan, keep| {
            scan.feed(data, |_| {});
            let mut sink = keep.observed();
            observer.feed(data, &mut sink);
            observer.done
        },
    )
    .await;
    drop(keep);
}

/// What an MQTT 5 client of a session the gateway closes now is told, if anything:
/// 0x8E when its id went live elsewhere, else the node's paced-close or shutdown
/// reason. 3.x clients are told nothing (a plain close).
pub(super) fn close_reason(keep: &Keep) -> Option<u8> {
    if !keep.v5 {
        return None;
    }
    taken_over(keep).or_else(|| keep.node.node().pacing.close_reason())
}

/// Send `reason` as a DISCONNECT (counted), then close the client's write side.
pub(super) async fn say_disconnect<W: AsyncWrite + Unpin>(w: &mut W, keep: &Keep, reason: u8) {
    tracing::debug!(reason, "DISCONNECT sent before the gateway's close");
    keep.metrics
        .shaping
        .disconnects_sent
        .with_label_values(&[
            &keep.lst.cluster.name,
            crate::cluster::pacing::reason_label(reason),
        ])
        .inc();
    let _ = w.write_all(&disconnect_v5(reason)).await;
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

/// The two directions of the boundary-tracking relays (this module's [`run`] and the
/// packet-aware relay's last step), and how they end: half-closes passed on with
/// [`CLOSE_LINGER`], a client's abort passed on as a reset, the gateway's close told
/// to MQTT 5 clients at a packet boundary of the broker→client stream (followed by
/// `scan`, which `on_down` feeds), and the access-log line.
///
/// `first` goes to the broker before anything read from the client. `on_up` sees every
/// chunk of client bytes before it is forwarded; `on_down` every chunk of broker
/// bytes (with the scanner and `keep`) and answers whether the broker's CONNACK has
/// been seen: until then `connack_at`, if any, is the CONNACK deadline.
#[allow(clippy::too_many_arguments)]
pub(super) async fn duplex<S, B, U, D>(
    client: S,
    broker: &mut B,
    first: Vec<u8>,
    scope: &SessionScope,
    keep: &mut Keep,
    connack_at: Option<Instant>,
    mut scan: Scanner,
    mut on_up: U,
    mut on_down: D,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    B: BrokerStream,
    U: FnMut(&[u8]),
    D: FnMut(&[u8], &mut Scanner, &mut Keep) -> bool,
{
    let node = keep.node.node().clone();
    // Replaced when a hash rebalance closes the lane and this session's slot stays.
    let mut scope = scope.clone();
    let (to_broker, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
    let (mut cr, mut cw) = tokio::io::split(client);
    let (client_broke, close) = {
        let (mut br, mut bw) = tokio::io::split(&mut *broker);
        let up_fut = async {
            let mut buf = vec![0u8; CHUNK];
            let mut first = Some(first).filter(|f| !f.is_empty());
            loop {
                let n = match first.take() {
                    Some(f) => {
                        on_up(&f);
                        bw.write_all(&f).await.map_err(|e| (false, e))?;
                        f.len()
                    }
                    None => {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) => {
                                let _ = bw.shutdown().await;
                                return Ok(());
                            }
                            Ok(n) => n,
                            Err(e) => return Err((true, e)),
                        };
                        on_up(&buf[..n]);
                        bw.write_all(&buf[..n]).await.map_err(|e| (false, e))?;
                        n
                    }
                };
                node.metrics.to_broker.inc_by(n as u64);
                to_broker.fetch_add(n as u64, Ordering::Relaxed);
            }
        };
        let down_fut = async {
            let mut buf = vec![0u8; CHUNK];
            let mut close_by: Option<Instant> = None;
            let mut connack_seen = connack_at.is_none();
            loop {
                if close_by.is_some() && scan.at_boundary() {
                    if let Some(reason) = close_reason(keep) {
                        say_disconnect(&mut cw, keep, reason).await;
                    }
                    return Ok(Down::Closed);
                }
                let connack_wait = connack_at.filter(|_| !connack_seen);
                let idle = connack_at.unwrap_or_else(Instant::now);
                tokio::select! {
                    r = br.read(&mut buf) => {
                        let n = match r {
                            Ok(0) => {
                                let _ = cw.shutdown().await;
                                return Ok(Down::Eof);
                            }
                            Ok(n) => n,
                            Err(e) => return Err((false, e)),
                        };
                        connack_seen |= on_down(&buf[..n], &mut scan, keep);
                        cw.write_all(&buf[..n]).await.map_err(|e| (true, e))?;
                        node.metrics.to_client.inc_by(n as u64);
                        to_client.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    _ = scope.closed(), if close_by.is_none() => {
                        if let Some(next) = keep.survive() {
                            scope = next;
                            continue;
                        }
                        tracing::debug!("session closed by the gateway (node down, maintenance, evacuation, rebalance, takeover, removal or shutdown)");
                        keep.record_gateway_close();
                        if close_reason(keep).is_none() {
                            return Ok(Down::Closed);
                        }
                        close_by = Some(Instant::now() + BOUNDARY_WAIT);
                    }
                    _ = tokio::time::sleep_until(close_by.unwrap_or(idle)), if close_by.is_some() => {
                        tracing::debug!(wait = ?BOUNDARY_WAIT, "no packet boundary in time: plain close");
                        return Ok(Down::Closed);
                    }
                    _ = tokio::time::sleep_until(connack_wait.unwrap_or(idle)), if connack_wait.is_some() => {
                        let reply = connack_timeout_reply(keep);
                        let _ = cw.write_all(&reply).await;
                        let _ = cw.shutdown().await;
                        return Ok(Down::ConnackTimeout);
                    }
                }
            }
        };
        tokio::pin!(up_fut, down_fut);
        let (mut up_done, mut down_done) = (false, false);
        let linger = tokio::time::sleep(CLOSE_LINGER);
        tokio::pin!(linger);
        let mut client_broke = false;
        let mut close: Option<Close> = None;
        loop {
            tokio::select! {
                r = &mut up_fut, if !up_done => match r {
                    Ok(()) => {
                        up_done = true;
                        close.get_or_insert(Close::Client);
                        linger.as_mut().reset(Instant::now() + CLOSE_LINGER);
                    }
                    Err((c, e)) => {
                        tracing::debug!(error = %e, "connection ended with an error");
                        client_broke = c;
                        close = Some(if c { Close::ClientError } else { Close::BrokerError });
                        break;
                    }
                },
                r = &mut down_fut, if !down_done => match r {
                    Ok(Down::Eof) => {
                        down_done = true;
                        close.get_or_insert(Close::Broker);
                        linger.as_mut().reset(Instant::now() + CLOSE_LINGER);
                    }
                    // The cause is in the access entry already.
                    Ok(Down::Closed) => break,
                    Ok(Down::ConnackTimeout) => {
                        close = Some(Close::ConnackTimeout);
                        break;
                    }
                    Err((c, e)) => {
                        tracing::debug!(error = %e, "connection ended with an error");
                        client_broke = c;
                        close = Some(if c { Close::ClientError } else { Close::BrokerError });
                        break;
                    }
                },
                _ = &mut linger, if up_done || down_done => {
                    tracing::debug!(linger = ?CLOSE_LINGER, "one side closed and the other did not follow; closing");
                    close = Some(Close::Linger);
                    break;
                }
            }
            if up_done && down_done {
                tracing::debug!("connection closed");
                break;
            }
        }
        (client_broke, close)
    };
    if client_broke {
        // As the byte relay: pass the client's abort on.
        let _ = broker.tcp().set_zero_linger();
    }
    if close == Some(Close::ConnackTimeout) {
        if let Some(e) = keep.access.as_mut() {
            e.connack(ConnackSeen::Timeout);
        }
    }
    keep.finish_access(
        close,
        to_broker.load(Ordering::Relaxed),
        to_client.load(Ordering::Relaxed),
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn disconnect_is_a_well_formed_v5_packet() {
        assert_eq!(super::disconnect_v5(0x9C), [0xE0, 0x02, 0x9C, 0x00]);
    }
}
