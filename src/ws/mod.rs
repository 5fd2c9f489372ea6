//! MQTT over WebSocket (RFC 6455, subprotocol `mqtt`): the layer between TLS and the
//! session on listeners with `[listeners.websocket]`.
//!
//! [`accept`] reads the HTTP upgrade request (at most [`handshake::MAX_HEAD`] bytes,
//! under the connection's `connect_timeout`), answers `101` or a refusal, and returns
//! a [`WsStream`]: from there the session reads the CONNECT inside the frames and the
//! relay moves bytes, neither knowing about WebSocket. The parsers
//! ([`handshake`], [`frame`]) are pure functions over bytes, fuzzed
//! (`fuzz/fuzz_targets/websocket.rs`).

pub mod frame;
pub mod handshake;
pub mod stream;

pub use stream::{reject_of, WsError, WsStream};

use crate::metrics::Reject;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout_at;
use tokio::time::Instant;

/// A refused or failed upgrade, counted and logged by the caller.
#[derive(Debug)]
pub struct Failure {
    pub reason: Reject,
    pub why: String,
}

/// The handshake: read the request head, answer it, and wrap the stream.
pub async fn accept<S>(
    mut s: S,
    policy: handshake::Policy<'_>,
    deadline: Instant,
    max_connect: usize,
) -> Result<WsStream<S>, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let fail = |reason, why: String| Failure { reason, why };
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let end = loop {
        if let Some(end) = handshake::head_end(&buf) {
            break end;
        }
        if let Some(r) = handshake::early_refusal(&buf) {
            answer(&mut s, &r.response(), deadline).await;
            return Err(fail(r.reason, format!("HTTP {}: {}", r.status, r.why)));
        }
        if buf.len() > handshake::MAX_HEAD {
            let r = handshake::Refusal {
                status: 431,
                reason: Reject::TooLarge,
                why: format!("request head over {} bytes", handshake::MAX_HEAD),
            };
            answer(&mut s, &r.response(), deadline).await;
            return Err(fail(r.reason, r.why));
        }
        if buf.capacity() == buf.len() {
            buf.reserve(1024);
        }
        match timeout_at(deadline, s.read_buf(&mut buf)).await {
            Err(_) => {
                let why = format!("upgrade request incomplete after {} bytes", buf.len());
                return Err(fail(Reject::Timeout, why));
            }
            Ok(Ok(0)) => {
                let why = format!("client closed after {} bytes of upgrade request", buf.len());
                return Err(fail(Reject::Closed, why));
            }
            Ok(Err(e)) => return Err(fail(Reject::Closed, format!("read error: {e}"))),
            Ok(Ok(_)) => {}
        }
    };
    match handshake::respond(&buf[..end], &policy) {
        Ok(resp) => {
            let wrote = timeout_at(deadline, s.write_all(&resp)).await;
            match wrote {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(fail(Reject::Closed, format!("write error: {e}"))),
                Err(_) => return Err(fail(Reject::Timeout, "101 response not taken".into())),
            }
            let early = buf.split_off(end);
            Ok(WsStream::new(s, early, max_connect))
        }
        Err(r) => {
            answer(&mut s, &r.response(), deadline).await;
            Err(fail(r.reason, format!("HTTP {}: {}", r.status, r.why)))
        }
    }
}

/// Send an HTTP refusal and close: write, shut down the write side, then read and
/// discard briefly so that the close does not reset the answer away.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, resp: &[u8], deadline: Instant) {
    let linger = deadline.min(Instant::now() + Duration::from_millis(500));
    let send = async {
        s.write_all(resp).await?;
        s.flush().await?;
        s.shutdown().await
    };
    if !matches!(timeout_at(linger, send).await, Ok(Ok(()))) {
        return;
    }
    let mut sink = [0u8; 512];
    let mut drained = 0usize;
    while drained < 64 * 1024 {
        match timeout_at(linger, s.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}
