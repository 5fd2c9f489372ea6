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

use super::task::{connack_timeout_reply, BrokerStream, Keep, Observed, CLOSE_LINGER};
use super::{ConnackObserver, CHUNK};
use crate::mqtt::scanner::Scanner;
use crate::sessions::SessionScope;
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

/// How the broker→client direction ended.
enum Down {
    /// The broker closed (passed on as a half-close).
    Eof,
    /// The gateway closed the session (after a DISCONNECT or not).
    Closed,
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
    let mut sticky = keep.sticky.take();
    let mut keep = keep;
    let node = keep.node.node().clone();
    let (mut cr, mut cw) = tokio::io::split(client);
    let client_broke = {
        let (mut br, mut bw) = tokio::io::split(&mut broker);
        let up_fut = async {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(0) => {
                        let _ = bw.shutdown().await;
                        return Ok(());
                    }
                    Ok(n) => n,
                    Err(e) => return Err((true, e)),
                };
                bw.write_all(&buf[..n]).await.map_err(|e| (false, e))?;
                node.metrics.to_broker.inc_by(n as u64);
            }
        };
        let down_fut = async {
            let mut scan = Scanner::new(&[], 0);
            let mut observer = ConnackObserver::new(started);
            let mut buf = vec![0u8; CHUNK];
            let mut close_by: Option<Instant> = None;
            let connack_at = (!connack_timeout.is_zero()).then(|| started + connack_timeout);
            loop {
                if close_by.is_some() && scan.at_boundary() {
                    if let Some(reason) = taken_over(&keep).or_else(|| node.pacing.close_reason()) {
                        tracing::debug!(reason, "DISCONNECT sent before the gateway's close");
                        keep.metrics
                            .shaping
                            .disconnects_sent
                            .with_label_values(&[
                                &keep.lst.cluster.name,
                                crate::cluster::pacing::reason_label(reason),
                            ])
                            .inc();
                        let _ = cw.write_all(&disconnect_v5(reason)).await;
                        let _ = cw.flush().await;
                        let _ = cw.shutdown().await;
                    }
                    return Ok(Down::Closed);
                }
                let connack_wait = connack_at.filter(|_| !observer.done);
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
                        scan.feed(&buf[..n], |_| {});
                        let mut sink = Observed {
                            metrics: &keep.metrics,
                            cluster: &keep.lst.cluster,
                            node: &node,
                            sticky: &mut sticky,
                            access: &mut keep.access,
                            live: &mut keep.live,
                        };
                        observer.feed(&buf[..n], &mut sink);
                        cw.write_all(&buf[..n]).await.map_err(|e| (true, e))?;
                        node.metrics.to_client.inc_by(n as u64);
                    }
                    _ = scope.closed(), if close_by.is_none() => {
                        tracing::debug!("session closed by the gateway (node down, maintenance, evacuation, removal or shutdown)");
                        if taken_over(&keep).or_else(|| node.pacing.close_reason()).is_none() {
                            return Ok(Down::Closed);
                        }
                        close_by = Some(Instant::now() + BOUNDARY_WAIT);
                    }
                    _ = tokio::time::sleep_until(close_by.unwrap_or(started)), if close_by.is_some() => {
                        tracing::debug!(wait = ?BOUNDARY_WAIT, "no packet boundary in time: plain close");
                        return Ok(Down::Closed);
                    }
                    _ = tokio::time::sleep_until(connack_wait.unwrap_or(started)), if connack_wait.is_some() => {
                        let reply = connack_timeout_reply(&keep);
                        let _ = cw.write_all(&reply).await;
                        let _ = cw.shutdown().await;
                        return Ok(Down::Closed);
                    }
                }
            }
        };
        tokio::pin!(up_fut, down_fut);
        let (mut up_done, mut down_done) = (false, false);
        let linger = tokio::time::sleep(CLOSE_LINGER);
        tokio::pin!(linger);
        let mut client_broke = false;
        loop {
            tokio::select! {
                r = &mut up_fut, if !up_done => match r {
                    Ok(()) => {
                        up_done = true;
                        linger.as_mut().reset(Instant::now() + CLOSE_LINGER);
                    }
                    Err((c, e)) => {
                        tracing::debug!(error = %e, "connection ended with an error");
                        client_broke = c;
                        break;
                    }
                },
                r = &mut down_fut, if !down_done => match r {
                    Ok(Down::Eof) => {
                        down_done = true;
                        linger.as_mut().reset(Instant::now() + CLOSE_LINGER);
                    }
                    Ok(Down::Closed) => break,
                    Err((c, e)) => {
                        tracing::debug!(error = %e, "connection ended with an error");
                        client_broke = c;
                        break;
                    }
                },
                _ = &mut linger, if up_done || down_done => {
                    tracing::debug!(linger = ?CLOSE_LINGER, "one side closed and the other did not follow; closing");
                    break;
                }
            }
            if up_done && down_done {
                tracing::debug!("connection closed");
                break;
            }
        }
        client_broke
    };
    if client_broke {
        // As the byte relay: pass the client's abort on.
        let _ = broker.tcp().set_zero_linger();
    }
    drop(keep);
}

#[cfg(test)]
mod tests {
    #[test]
    fn disconnect_is_a_well_formed_v5_packet() {
        assert_eq!(super::disconnect_v5(0x9C), [0xE0, 0x02, 0x9C, 0x00]);
    }
}
