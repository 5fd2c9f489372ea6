//! The dialer side of peer links: a loop per configured peer (whose name sorts after
//! ours) and per discovered address, reconnecting with backoff.
//!
//! A discovered address has no name until the handshake: the dialer proves itself
//! without naming the acceptor and learns the name from it ([`auth::dial`]). Both
//! ends of a discovered pair dial; the one whose name sorts after the other's is told
//! so once it has proven itself, and then only retries every [`PARKED`] (the other end
//! dials it). An address that leads to a gateway already linked (a second address of
//! it) is parked the same way.

use super::accept::{peer_certificate, Halves};
use super::frame;
use super::link::{FrameReader, LinkError};
use super::{auth, Ctx, Settings, Stream, BACKOFF_MAX, BACKOFF_MIN, HANDSHAKE_TIMEOUT};
use rand::Rng;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A discovered address that leads to a gateway that dials us (or one already linked)
/// is tried again this often.
pub const PARKED: Duration = Duration::from_secs(30);

/// Connect from `local` (the peers bind address, unless it is unspecified), so that a
/// discovering acceptor sees the address its DNS answer has for us.
async fn connect(addr: &str, local: Option<IpAddr>) -> std::io::Result<tokio::net::TcpStream> {
    let Some(local) = local.filter(|ip| !ip.is_unspecified()) else {
        return tokio::net::TcpStream::connect(addr).await;
    };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "address resolves to nothing");
    for target in tokio::net::lookup_host(addr).await? {
        if target.is_ipv4() != local.is_ipv4() {
            continue;
        }
        let sock = if local.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.bind(SocketAddr::new(local, 0))?;
        match sock.connect(target).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Dial `addr` and run the handshake. `peer`: the name dialed, `None` for a discovered
/// address. Returns the peer's name and the link's halves.
pub(super) async fn dial_one(
    settings: &Settings,
    peer: Option<&str>,
    addr: &str,
    local: Option<IpAddr>,
    offer: u16,
) -> Result<(String, Halves), LinkError> {
    let tcp = connect(addr, local).await?;
    let _ = tcp.set_nodelay(true);
    let (stream, binding, cert): (Stream, Option<[u8; 32]>, Option<Vec<u8>>) = match &settings.tls {
        Some(t) => {
            // The acceptor's certificate must name the peer dialed, as ours must name us;
            // a discovered peer's name is checked against it after the handshake.
            let (connector, sni) = match peer {
                Some(p) => (&t.connector, p),
                None => (&t.discover_connector, crate::tls::any_name::DISCOVERED),
            };
            let name = rustls::pki_types::ServerName::try_from(sni.to_string()).map_err(|e| {
                LinkError::Auth(format!(
                    "peer name `{sni}` cannot be named by a certificate: {e}"
                ))
            })?;
            let s = connector
                .connect(name, tcp)
                .await
                .map_err(|e| LinkError::Auth(format!("TLS handshake failed: {e}")))?;
            let conn = s.get_ref().1;
            let cert = peer_certificate(conn).map(<[u8]>::to_vec);
            if let Some(p) = peer {
                if !cert
                    .as_deref()
                    .is_some_and(|c| auth::certificate_names(c, p))
                {
                    return Err(LinkError::Auth(format!(
                        "the certificate of `{addr}` does not name `{p}` (a subjectAltName DNS \
                         entry `{p}` is required)"
                    )));
                }
            }
            let binding = auth::tls_binding(conn.export_keying_material(
                [0u8; 32],
                auth::TLS_EXPORTER_LABEL,
                None,
            ))?;
            (Box::new(s), Some(binding), cert)
        }
        None => (Box::new(tcp), None, None),
    };
    let keys = auth::Keys::new(&settings.secret, binding)?;
    let (r, mut w) = tokio::io::split(stream);
    let mut r = FrameReader::new(r);
    let (name, sealing, version) = auth::dial(
        &mut r,
        &mut w,
        &settings.own,
        peer,
        &keys,
        settings.tls.is_none(),
        offer,
    )
    .await?;
    if peer.is_none() && settings.tls.is_some() {
        // The name the discovered peer proved must be one its certificate carries.
        if !cert
            .as_deref()
            .is_some_and(|c| auth::certificate_names(c, &name))
        {
            return Err(LinkError::Auth(format!(
                "the certificate of `{addr}` does not name `{name}`, the name it proved"
            )));
        }
    }
    Ok((name, (r, w, sealing, version)))
}

/// Whether a refusal is an older build's answer to our protocol version (its
/// `FrameError::Version`: "… this gateway speaks version N").
fn older_version(reason: &str) -> bool {
    (frame::MIN_VERSION..frame::VERSION)
        .any(|v| reason.ends_with(&format!("this gateway speaks version {v}")))
}

/// Dial `addr` until `stop`: `peer` is the configured name, or `None` for a discovered
/// address.
pub(super) async fn dial_loop(
    ctx: Ctx,
    peer: Option<Arc<str>>,
    addr: String,
    stop: CancellationToken,
) {
    let mut attempt: u32 = 0;
    let mut failing_logged = false;
    let label: Arc<str> = peer.clone().unwrap_or_else(|| Arc::from(addr.as_str()));
    // The protocol version offered: this build's, until a peer of an older build
    // refuses it (then that peer's, see `frame`).
    let mut offer = frame::VERSION;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let started = Instant::now();
        let settings = ctx.settings.load_full();
        let dialed = tokio::select! {
            r = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                dial_one(&settings, peer.as_deref(), &addr, ctx.local_ip, offer),
            ) => r,
            _ = stop.cancelled() => return,
        };
        let mut park = false;
        match dialed {
            Ok(Ok((name, (r, w, sealing, version)))) => {
                failing_logged = false;
                let name: Arc<str> = Arc::from(name.as_str());
                let remote = addr.parse::<SocketAddr>().ok().map(|a| a.ip());
                let served = tokio::select! {
                    r = ctx.serve(name.clone(), remote, r, w, sealing, version, peer.is_none()) => r,
                    _ = stop.cancelled() => Ok(()),
                };
                match served {
                    Err(LinkError::Duplicate) => {
                        tracing::debug!(peer = %name, %addr, "already linked to this peer through another address; parked");
                        park = true;
                    }
                    Err(e) => super::log_link_end(&name, &e),
                    Ok(()) => {}
                }
            }
            Ok(Err(LinkError::Refused(reason)))
                if offer > frame::MIN_VERSION && older_version(&reason) =>
            {
                // A gateway of the previous build: link with its version (full syncs
                // both ways, as it knows them), at once.
                tracing::info!(peer = %label, %addr, "peer speaks protocol version {}; linking with it ({reason})", offer - 1);
                offer -= 1;
                continue;
            }
            Ok(Err(LinkError::Refused(reason))) if peer.is_none() && reason != auth::REFUSED => {
                // Told after proving ourselves: that gateway dials us.
                tracing::debug!(%addr, "discovered peer dials this gateway ({reason}); parked");
                park = true;
            }
            Ok(Err(e)) => {
                // Offer this build's version again next time: a lowered offer stands
                // only while it links (a forged "older build" refusal is caught by the
                // handshake, `auth::dial`).
                offer = frame::VERSION;
                let loud = matches!(
                    e,
                    LinkError::Auth(_) | LinkError::Refused(_) | LinkError::Frame(_)
                );
                if loud && !(peer.is_none() && failing_logged) {
                    tracing::warn!(peer = %label, %addr, "cannot link to peer: {e}");
                } else if !failing_logged {
                    tracing::info!(peer = %label, %addr, "cannot reach peer (retrying): {e}");
                } else {
                    tracing::debug!(peer = %label, %addr, "cannot reach peer: {e}");
                }
                failing_logged = true;
            }
            Err(_) => {
                tracing::debug!(peer = %label, %addr, "peer handshake timed out");
            }
        }
        if peer.is_none() && !park {
            // A discovered address that failed (or whose link ended) may be gone: look again.
            ctx.rediscover.notify_one();
        }
        if started.elapsed() > Duration::from_secs(10) {
            attempt = 0;
        }
        let backoff = BACKOFF_MIN
            .saturating_mul(1u32 << attempt.min(16))
            .min(BACKOFF_MAX);
        attempt = attempt.saturating_add(1);
        let wait = if park {
            PARKED
        } else {
            backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0))
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}
