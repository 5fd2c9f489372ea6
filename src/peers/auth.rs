//! Who is on the other end of a peer link: the handshake that opens every link, and the
//! optional mutual TLS around it.
//!
//! The handshake proves that both ends hold the shared secret without sending it:
//!
//! ```text
//! dialer                                   acceptor
//!   HELLO(version, name_d, nonce_d)  ──▶     version, magic and name checked
//!                                    ◀──   HELLO(version, name_a, nonce_a)
//!   AUTH(mac("dialer"))              ──▶     checked (constant time); ERROR + close if wrong
//!                                    ◀──   AUTH(mac("acceptor"))
//! mac(role) = HMAC-SHA256(secret, "mqgate-peer/1" role nonce_d nonce_a name_d name_a)
//! ```
//!
//! Fresh random nonces on both sides make every MAC single-use, and the role in the MAC
//! stops a reflection of one side's proof back at it. With `[peers.tls]`, the link is
//! TLS with certificates checked against the peers CA on both sides (the certificate is
//! then the proof of identity; the shared secret, if set, is checked as well).

use super::frame::{Frame, FrameError, VERSION};
use super::link::{FrameReader, LinkError};
use crate::config::{PeerTlsConfig, Secret};
use crate::tls::{load_certs, load_key, load_roots, provider, TlsError};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

type HmacSha256 = Hmac<Sha256>;

/// TLS for peer links: both directions, one CA.
#[derive(Clone)]
pub struct PeerTls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

/// Build the rustls server (client certificates required) and client configurations.
pub fn tls(t: &PeerTlsConfig) -> Result<PeerTls, TlsError> {
    let roots = Arc::new(load_roots(&t.ca)?);
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::ClientCa {
                path: t.ca.display().to_string(),
                msg: e.to_string(),
            })?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&t.cert)?, load_key(&t.key)?)?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(&t.cert)?, load_key(&t.key)?)?;
    Ok(PeerTls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
    })
}

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

fn mac_input(role: &[u8], nd: &[u8; 32], na: &[u8; 32], dialer: &str, acceptor: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + 96 + dialer.len() + acceptor.len());
    m.extend_from_slice(b"mqgate-peer/1 ");
    m.extend_from_slice(role);
    m.extend_from_slice(nd);
    m.extend_from_slice(na);
    for s in [dialer, acceptor] {
        m.extend_from_slice(&(s.len() as u64).to_be_bytes());
        m.extend_from_slice(s.as_bytes());
    }
    m
}

fn hmac(secret: &Secret) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail; an empty key (TLS-only
    // setups) still yields a well-defined MAC.
    match HmacSha256::new_from_slice(secret.expose()) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    }
}

#[cold]
fn unreachable_hmac() -> HmacSha256 {
    // new_from_slice only fails for fixed-size MACs; keep a defined value anyway.
    <HmacSha256 as Mac>::new(&Default::default())
}

/// The proof one side sends.
pub fn prove(
    secret: &Secret,
    role: &[u8],
    nd: &[u8; 32],
    na: &[u8; 32],
    d: &str,
    a: &str,
) -> [u8; 32] {
    let mut m = hmac(secret);
    m.update(&mac_input(role, nd, na, d, a));
    m.finalize().into_bytes().into()
}

fn verify(
    secret: &Secret,
    role: &[u8],
    nd: &[u8; 32],
    na: &[u8; 32],
    d: &str,
    a: &str,
    mac: &[u8; 32],
) -> bool {
    let mut m = hmac(secret);
    m.update(&mac_input(role, nd, na, d, a));
    m.verify_slice(mac).is_ok()
}

pub(super) async fn send<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> Result<(), LinkError> {
    let mut buf = Vec::with_capacity(64);
    super::frame::encode(f, &mut buf);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Tell the other side why, then fail.
async fn refuse<W: AsyncWrite + Unpin>(w: &mut W, e: LinkError) -> LinkError {
    let _ = send(
        w,
        &Frame::Error {
            reason: e.to_string(),
        },
    )
    .await;
    let _ = w.shutdown().await;
    e
}

/// Read the next frame, turning an ERROR from the other side into a failure.
async fn expect<R: AsyncRead + Unpin>(r: &mut FrameReader<R>) -> Result<Frame, LinkError> {
    match r.next().await? {
        None => Err(LinkError::Closed),
        Some(Frame::Error { reason }) => Err(LinkError::Refused(reason)),
        Some(f) => Ok(f),
    }
}

/// Dialer side: returns once both sides have proven the secret.
pub async fn dial<R, W>(
    r: &mut FrameReader<R>,
    w: &mut W,
    own: &str,
    peer: &str,
    secret: &Secret,
) -> Result<(), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let nd = nonce();
    send(
        w,
        &Frame::Hello {
            version: VERSION,
            name: own.to_string(),
            nonce: nd,
        },
    )
    .await?;
    let na = match expect(r).await {
        Ok(Frame::Hello { name, nonce, .. }) if name == peer => nonce,
        Ok(Frame::Hello { name, .. }) => {
            let e = LinkError::Auth(format!("expected peer `{peer}`, it says it is `{name}`"));
            return Err(refuse(w, e).await);
        }
        Ok(f) => return Err(refuse(w, LinkError::unexpected(&f)).await),
        Err(e @ LinkError::Frame(FrameError::Version(_) | FrameError::BadMagic)) => {
            return Err(refuse(w, e).await)
        }
        Err(e) => return Err(e),
    };
    send(
        w,
        &Frame::Auth {
            mac: prove(secret, b"dialer", &nd, &na, own, peer),
        },
    )
    .await?;
    match expect(r).await? {
        Frame::Auth { mac } if verify(secret, b"acceptor", &nd, &na, own, peer, &mac) => Ok(()),
        Frame::Auth { .. } => Err(refuse(
            w,
            LinkError::Auth("the peer could not prove the shared secret".into()),
        )
        .await),
        f => Err(refuse(w, LinkError::unexpected(&f)).await),
    }
}

/// Acceptor side: returns the authenticated peer's name. `allowed` says whether a
/// name may dial in (a configured peer whose name sorts before ours); the reason
/// otherwise.
pub async fn accept<R, W>(
    r: &mut FrameReader<R>,
    w: &mut W,
    own: &str,
    allowed: impl Fn(&str) -> Result<(), String>,
    secret: &Secret,
) -> Result<String, LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (name, nd) = match expect(r).await {
        Ok(Frame::Hello { name, nonce, .. }) => (name, nonce),
        Ok(f) => return Err(refuse(w, LinkError::unexpected(&f)).await),
        Err(e @ LinkError::Frame(_)) => return Err(refuse(w, e).await),
        Err(e) => return Err(e),
    };
    if let Err(why) = allowed(&name) {
        return Err(refuse(w, LinkError::Auth(why)).await);
    }
    let na = nonce();
    send(
        w,
        &Frame::Hello {
            version: VERSION,
            name: own.to_string(),
            nonce: na,
        },
    )
    .await?;
    match expect(r).await {
        Ok(Frame::Auth { mac }) if verify(secret, b"dialer", &nd, &na, &name, own, &mac) => {}
        Ok(Frame::Auth { .. }) => {
            let e = LinkError::Auth(format!(
                "peer `{name}` failed authentication (wrong shared secret)"
            ));
            return Err(refuse(w, e).await);
        }
        Ok(f) => return Err(refuse(w, LinkError::unexpected(&f)).await),
        Err(e @ LinkError::Frame(_)) => return Err(refuse(w, e).await),
        Err(e) => return Err(e),
    }
    send(
        w,
        &Frame::Auth {
            mac: prove(secret, b"acceptor", &nd, &na, &name, own),
        },
    )
    .await?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_depend_on_secret_role_nonces_and_names() {
        let s = Secret::new(b"s3cret".to_vec());
        let base = prove(&s, b"dialer", &[1; 32], &[2; 32], "a", "b");
        assert!(verify(&s, b"dialer", &[1; 32], &[2; 32], "a", "b", &base));
        assert!(!verify(
            &Secret::new(b"other".to_vec()),
            b"dialer",
            &[1; 32],
            &[2; 32],
            "a",
            "b",
            &base
        ));
        assert!(!verify(
            &s,
            b"acceptor",
            &[1; 32],
            &[2; 32],
            "a",
            "b",
            &base
        ));
        assert!(!verify(&s, b"dialer", &[3; 32], &[2; 32], "a", "b", &base));
        assert!(!verify(&s, b"dialer", &[1; 32], &[2; 32], "ab", "", &base));
    }

    #[tokio::test]
    async fn handshake_succeeds_with_the_same_secret_and_fails_otherwise() {
        async fn run(
            sd: &'static [u8],
            sa: &'static [u8],
        ) -> (Result<(), LinkError>, Result<String, LinkError>) {
            let (d, a) = tokio::io::duplex(4096);
            let (dr, mut dw) = tokio::io::split(d);
            let (ar, mut aw) = tokio::io::split(a);
            let dial = async move {
                let mut r = FrameReader::new(dr);
                dial(
                    &mut r,
                    &mut dw,
                    "gate-a",
                    "gate-b",
                    &Secret::new(sd.to_vec()),
                )
                .await
            };
            let acc = async move {
                let mut r = FrameReader::new(ar);
                accept(
                    &mut r,
                    &mut aw,
                    "gate-b",
                    |_| Ok(()),
                    &Secret::new(sa.to_vec()),
                )
                .await
            };
            tokio::join!(dial, acc)
        }
        let (d, a) = run(b"same", b"same").await;
        assert!(d.is_ok(), "{d:?}");
        assert_eq!(a.ok().as_deref(), Some("gate-a"));
        let (d, a) = run(b"wrong", b"right").await;
        assert!(matches!(a, Err(LinkError::Auth(_))), "{a:?}");
        match d {
            Err(LinkError::Refused(reason)) => {
                assert!(reason.contains("wrong shared secret"), "{reason}")
            }
            other => panic!("dialer should be refused: {other:?}"),
        }
    }
}
