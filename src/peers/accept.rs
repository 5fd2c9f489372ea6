//! The peers listener: admission of inbound connections ([`super::admission`]), TLS,
//! and the acceptor side of the handshake, with the acceptor's judgement of the name
//! the dialer claims (a configured peer, or with `discover` any name proven from an
//! address in the current DNS answer).

use super::link::{FrameReader, LinkError};
use super::{admission, auth, Ctx, Settings, Stream, HANDSHAKE_TIMEOUT};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(super) async fn accept_loop(
    ctx: Ctx,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) {
    let admission = admission::Admission::new(admission::Limits::DEFAULT);
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("peers accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let waiting = admission.arrive();
        let admission = admission.clone();
        let ctx = ctx.clone();
        let tracker = ctx.host.bg_tracker.clone();
        tracker.spawn(async move {
            // The first byte, without holding a handshake slot.
            let mut first = [0u8; 1];
            let got = tokio::select! {
                r = tokio::time::timeout(admission::FIRST_BYTE_TIMEOUT, tcp.peek(&mut first)) => r,
                _ = waiting.evicted() => {
                    tracing::debug!(%addr, "peers port: closed a connection that had sent nothing, to make room");
                    return;
                }
            };
            drop(waiting);
            match got {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return, // closed, or failed, before sending anything
                Err(_) => {
                    tracing::debug!(%addr, "peers port: nothing received within {:?}; closed", admission::FIRST_BYTE_TIMEOUT);
                    return;
                }
            }
            let source = addr.ip().to_canonical();
            // Configured peers' addresses and those of the discovery answer.
            let peer_address = ctx.peer_addresses.load().contains(&source)
                || ctx.discovered.load().contains(&source);
            let Some(slot) = admission.handshake(source, peer_address) else {
                tracing::debug!(%addr, "too many peer handshakes in progress; connection dropped");
                return;
            };
            let settings = ctx.settings.load_full();
            let hs = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_one(&ctx, &settings, tcp, source)).await;
            drop(slot);
            let (peer, (r, w, sealing, version)) = match hs {
                Ok(Ok(x)) => x,
                Ok(Err(e @ LinkError::Auth(_))) => {
                    tracing::warn!(%addr, "peer refused: {e}");
                    return;
                }
                Ok(Err(e @ LinkError::Frame(_))) => {
                    tracing::warn!(%addr, "peer connection refused: {e}");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(%addr, "peer handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "peer handshake timed out");
                    return;
                }
            };
            let peer: Arc<str> = Arc::from(peer.as_str());
            if let Err(e) = ctx.serve(peer.clone(), Some(source), r, w, sealing, version, false).await {
                super::log_link_end(&peer, &e);
            }
        });
    }
}

pub(super) type Halves = (
    FrameReader<tokio::io::ReadHalf<Stream>>,
    tokio::io::WriteHalf<Stream>,
    Option<auth::FrameKeys>,
    u16,
);

/// The end-entity certificate the other side presented, as DER.
pub(super) fn peer_certificate(c: &rustls::CommonState) -> Option<&[u8]> {
    c.peer_certificates()
        .and_then(|certs| certs.first())
        .map(|c| c.as_ref())
}

async fn accept_one(
    ctx: &Ctx,
    settings: &Settings,
    tcp: tokio::net::TcpStream,
    source: IpAddr,
) -> Result<(String, Halves), LinkError> {
    let (stream, cert, binding): (Stream, Option<Vec<u8>>, Option<[u8; 32]>) = match &settings.tls {
        Some(t) => {
            let s = t
                .acceptor
                .accept(tcp)
                .await
                .map_err(|e| LinkError::Auth(format!("TLS handshake failed: {e}")))?;
            let conn = s.get_ref().1;
            let cert = peer_certificate(conn).map(<[u8]>::to_vec);
            let binding = auth::tls_binding(conn.export_keying_material(
                [0u8; 32],
                auth::TLS_EXPORTER_LABEL,
                None,
            ))?;
            (Box::new(s), cert, Some(binding))
        }
        None => (Box::new(tcp), None, None),
    };
    let keys = auth::Keys::new(&settings.secret, binding)?;
    let tls = settings.tls.is_some();
    let (r, mut w) = tokio::io::split(stream);
    let mut r = FrameReader::new(r);
    let own = settings.own.clone();
    // Decided before AUTH, told after it (uniformly, unless the dialer proved itself).
    let judge = |name: &str| -> auth::Claim {
        if name == &*own {
            return auth::Claim::Denied(format!(
                "the dialer claims this gateway's own name `{own}`"
            ));
        }
        if !settings.peers.iter().any(|p| p.name == name) {
            if !settings.discover {
                return auth::Claim::Denied(format!(
                    "`{name}` is not a configured peer of `{own}`"
                ));
            }
            if !ctx.discovered.load().contains(&source) {
                // A gateway that just joined: look again (at most once per second).
                ctx.rediscover.notify_one();
                return auth::Claim::Denied(format!(
                    "`{name}` is not a configured peer of `{own}`, and its address {source} \
                     is not in the discovery answer"
                ));
            }
        }
        if tls
            && !cert
                .as_deref()
                .is_some_and(|c| auth::certificate_names(c, name))
        {
            return auth::Claim::Denied(format!(
                "the certificate presented for `{name}` does not name it (a subjectAltName \
                 DNS entry `{name}` is required)"
            ));
        }
        if name > &*own {
            return auth::Claim::WrongWay(format!(
                "`{own}` dials `{name}`, not the other way round (the name that sorts first dials)"
            ));
        }
        auth::Claim::Ok
    };
    let (name, sealing, version) = auth::accept(
        &mut r,
        &mut w,
        &settings.own,
        judge,
        &keys,
        !tls,
        settings.discover,
    )
    .await?;
    Ok((name, (r, w, sealing, version)))
}
