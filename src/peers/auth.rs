//! Who is on the other end of a peer link: the handshake that opens every link, and the
//! optional mutual TLS around it.
//!
//! The handshake proves that both ends hold the shared secret without sending it:
//!
//! ```text
//! dialer                                   acceptor
//!   HELLO(version, name_d, nonce_d)  ──▶     version and magic checked
//!                                    ◀──   HELLO(version, "", nonce_a)   (no name)
//!   AUTH(mac("dialer"))              ──▶     name_d, its certificate and the MAC checked
//!                                    ◀──   AUTH(mac("acceptor")), or ERROR "authentication failed"
//! mac(role) = HMAC-SHA256(key, "mqgate-peer/2" role nonce_d nonce_a name_d name_a binding)
//! ```
//!
//! Each nonce ends with a marked version (the dialer's offer, the acceptor's highest;
//! `nonce_with_version`), so the versions are proven with the MACs and a downgrade in
//! transit is refused.
//!
//! Fresh random nonces on both sides make every MAC single-use, and the role in the MAC
//! stops a reflection of one side's proof back at it. The acceptor's HELLO carries no
//! name: the dialer puts the name it dialed into its MAC, so a gateway never tells an
//! unauthenticated dialer who it is. Every refusal before the dialer has proven itself
//! (unknown name, wrong certificate, wrong MAC) is the same ERROR, sent at the same
//! point (after AUTH); the acceptor logs the real reason.
//!
//! `key` is the shared secret. With `[peers.tls]`, the link is TLS with certificates
//! checked against the peers CA on both sides, and each side checks that the other's
//! certificate names the peer it claims to be (a subjectAltName DNS entry equal to its
//! `name`, [`certificate_names`]); `binding` is then keying material exported from the
//! TLS session (RFC 5705), and it is also the key when no secret is set, so an empty
//! secret is never a key. Without TLS, `binding` is empty and every frame after AUTH is
//! sealed with keys derived the same way ([`frame_keys`], `super::seal`).

use super::frame::{Frame, FrameError, VERSION};
use super::link::{FrameReader, LinkError};
use crate::config::Secret;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

type HmacSha256 = Hmac<Sha256>;

pub use crate::tls::{peer_configs as tls, PeerTls};

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

/// Marks a nonce whose last two bytes carry a protocol version.
const VERSION_MARK: &[u8; 6] = b"mqgver";

/// A nonce of 24 random bytes that also carries `version`: the dialer's offer, or the
/// acceptor's highest version. Both nonces go into both MACs, so once the MACs check
/// out each side knows what the other really sent, whatever the HELLOs' version fields
/// said on the way: a version lowered in transit (a downgrade) is caught. A gateway of
/// protocol version 2 sends 32 random bytes and ignores this.
fn nonce_with_version(version: u16) -> [u8; 32] {
    let mut n = nonce();
    n[24..30].copy_from_slice(VERSION_MARK);
    n[30..32].copy_from_slice(&version.to_be_bytes());
    n
}

/// The version a nonce carries, if it carries one.
fn nonce_version(n: &[u8; 32]) -> Option<u16> {
    (&n[24..30] == VERSION_MARK).then(|| u16::from_be_bytes([n[30], n[31]]))
}

/// The label of the keying material exported from a peer link's TLS session.
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-mqgate-peer-link";

/// The one refusal an acceptor sends before the dialer has proven itself, whatever
/// was wrong (unknown name, certificate, MAC): it must not tell names apart.
pub const REFUSED: &str = "authentication failed";

/// What the handshake's MACs are keyed with and bound to.
pub struct Keys {
    key: Secret,
    binding: Vec<u8>,
    secret: bool,
}

impl Keys {
    /// The shared secret if one is set, else (TLS only) the TLS session's exported
    /// keying material `tls_binding`. Neither: an error (never an empty key).
    pub fn new(secret: &Secret, tls_binding: Option<[u8; 32]>) -> Result<Keys, LinkError> {
        let binding = tls_binding.map(|b| b.to_vec()).unwrap_or_default();
        if !secret.expose().is_empty() {
            return Ok(Keys {
                key: secret.clone(),
                binding,
                secret: true,
            });
        }
        match tls_binding {
            Some(b) => Ok(Keys {
                key: Secret::new(b.to_vec()),
                binding,
                secret: false,
            }),
            None => Err(LinkError::Auth(
                "no shared secret and no [peers.tls]: the link cannot be authenticated".into(),
            )),
        }
    }

    /// Whether a shared secret keys the MACs (else the TLS session does).
    pub fn has_secret(&self) -> bool {
        self.secret
    }
}

/// Keying material of a finished TLS session, as `export_keying_material` returns it
/// (`rustls` client or server connection) with [`TLS_EXPORTER_LABEL`].
pub fn tls_binding(exported: Result<[u8; 32], rustls::Error>) -> Result<[u8; 32], LinkError> {
    exported.map_err(|e| LinkError::Auth(format!("TLS keying material not available: {e}")))
}

/// Whether the DER certificate `der` names peer `name`: one of its subjectAltName DNS
/// entries equals `name` (ASCII case-insensitive; wildcards do not count, nor does the
/// subject CN).
pub fn certificate_names(der: &[u8], name: &str) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|g| {
        matches!(g, x509_parser::extensions::GeneralName::DNSName(d) if d.eq_ignore_ascii_case(name))
    })
}

fn mac_input(keys: &Keys, role: &[u8], nd: &[u8; 32], na: &[u8; 32], d: &str, a: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + 96 + d.len() + a.len() + keys.binding.len());
    m.extend_from_slice(b"mqgate-peer/2 ");
    for part in [role, nd, na, d.as_bytes(), a.as_bytes(), &keys.binding] {
        m.extend_from_slice(&(part.len() as u64).to_be_bytes());
        m.extend_from_slice(part);
    }
    m
}

fn hmac(keys: &Keys) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail (and `Keys` is never empty).
    match HmacSha256::new_from_slice(keys.key.expose()) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    }
}

#[cold]
fn unreachable_hmac() -> HmacSha256 {
    // new_from_slice only fails for fixed-size MACs; keep a defined value anyway.
    <HmacSha256 as Mac>::new(&Default::default())
}

/// The proof one side sends: `role` is `b"dialer"` or `b"acceptor"`, `d`/`a` the
/// names of the dialer and of the acceptor (as the dialer knows it).
pub fn prove(keys: &Keys, role: &[u8], nd: &[u8; 32], na: &[u8; 32], d: &str, a: &str) -> [u8; 32] {
    let mut m = hmac(keys);
    m.update(&mac_input(keys, role, nd, na, d, a));
    m.finalize().into_bytes().into()
}

fn verify(
    keys: &Keys,
    role: &[u8],
    nd: &[u8; 32],
    na: &[u8; 32],
    d: &str,
    a: &str,
    mac: &[u8; 32],
) -> bool {
    let mut m = hmac(keys);
    m.update(&mac_input(keys, role, nd, na, d, a));
    m.verify_slice(mac).is_ok()
}

pub use super::seal::FrameKeys;

/// The frame keys of a link, as the dialer sees them (`send` = dialer to acceptor);
/// the acceptor swaps them. Derived like the proofs, under roles no proof uses.
pub fn frame_keys(keys: &Keys, nd: &[u8; 32], na: &[u8; 32], d: &str, a: &str) -> FrameKeys {
    FrameKeys {
        send: prove(keys, b"frames dialer to acceptor", nd, na, d, a),
        recv: prove(keys, b"frames acceptor to dialer", nd, na, d, a),
    }
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
    let reason = e.to_string();
    refuse_saying(w, &reason, e).await
}

/// Send `reason` in an ERROR frame and close; fail with `e` (which may say more, for
/// this side's log).
async fn refuse_saying<W: AsyncWrite + Unpin>(w: &mut W, reason: &str, e: LinkError) -> LinkError {
    let _ = send(
        w,
        &Frame::Error {
            reason: reason.to_string(),
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

/// Dialer side: returns the acceptor's name once both sides have proven themselves;
/// with `seal` (a link without TLS) also the keys that seal its frames. `peer`: the
/// name dialed, or `None` for a discovered address whose name is not known yet (the
/// dialer's MAC then names no acceptor, and the acceptor, once the dialer has proven
/// itself, sends a HELLO with its name, which its own MAC and the frame keys bind).
pub async fn dial<R, W>(
    r: &mut FrameReader<R>,
    w: &mut W,
    own: &str,
    peer: Option<&str>,
    keys: &Keys,
    seal: bool,
    offer: u16,
) -> Result<(String, Option<FrameKeys>, u16), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let nd = nonce_with_version(offer);
    send(
        w,
        &Frame::Hello {
            version: offer,
            name: own.to_string(),
            nonce: nd,
        },
    )
    .await?;
    // The acceptor's HELLO carries no name: `peer` (whom we dialed) goes into the MACs,
    // so reaching another gateway fails its proof. Its version is the link's: the
    // lower of our offer and its own.
    let (na, version) = match expect(r).await {
        Ok(Frame::Hello { nonce, version, .. }) if version <= offer => (nonce, version),
        Ok(Frame::Hello { version, .. }) => {
            return Err(refuse(
                w,
                LinkError::Protocol(format!(
                    "the peer answered an offer of protocol version {offer} with version {version}"
                )),
            )
            .await)
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
            mac: prove(keys, b"dialer", &nd, &na, own, peer.unwrap_or("")),
        },
    )
    .await?;
    let peer = match peer {
        Some(p) => p.to_string(),
        None => match expect(r).await? {
            Frame::Hello { name, .. } if !name.is_empty() && name != own => name,
            Frame::Hello { name, .. } => {
                return Err(refuse(
                    w,
                    LinkError::Protocol(format!("the discovered peer names itself {name:?}")),
                )
                .await)
            }
            f => return Err(refuse(w, LinkError::unexpected(&f)).await),
        },
    };
    match expect(r).await? {
        Frame::Auth { mac } if verify(keys, b"acceptor", &nd, &na, own, &peer, &mac) => {
            // The acceptor's highest version, now proven: the link's version must be
            // the lower of it and this build's. Compared with this build's, not with
            // `offer`: an offer lowered after a refusal claiming an older build is
            // caught too when the refusal did not come from that peer.
            if let Some(max) = nonce_version(&na).filter(|&m| VERSION.min(m) != version) {
                return Err(refuse(
                    w,
                    LinkError::Auth(format!(
                        "protocol version changed in transit: offered {offer} (this build \
                         speaks {VERSION}), the peer supports {max}, its HELLO said {version}"
                    )),
                )
                .await);
            }
            let sealing = seal.then(|| frame_keys(keys, &nd, &na, own, &peer));
            Ok((peer, sealing, version))
        }
        Frame::Auth { .. } => Err(refuse(
            w,
            LinkError::Auth(format!(
                "the peer could not prove {}",
                if keys.has_secret() {
                    "the shared secret"
                } else {
                    "its TLS session"
                }
            )),
        )
        .await),
        f => Err(refuse(w, LinkError::unexpected(&f)).await),
    }
}

/// The acceptor's judgement of the name a dialer claims, made before AUTH but told
/// only after it.
pub enum Claim {
    /// A configured peer that may dial in.
    Ok,
    /// Not acceptable (unknown name, certificate not issued to it): the dialer gets
    /// the uniform refusal; the reason is for this side's log.
    Denied(String),
    /// A configured peer that should not dial this gateway (the name that sorts first
    /// dials); said to the dialer once it has proven itself.
    WrongWay(String),
}

/// Acceptor side: returns the authenticated peer's name and, with `seal` (a link
/// without TLS), the keys that seal its frames. `judge` says whether the name the
/// dialer claims may dial in. Until the dialer's AUTH has been checked, nothing said
/// depends on the name: every failure up to then is answered with [`REFUSED`].
/// `discovered`: also accept a dialer that did not know this gateway's name (it found
/// the address through DNS); once it has proven itself, it is told the name.
pub async fn accept<R, W>(
    r: &mut FrameReader<R>,
    w: &mut W,
    own: &str,
    judge: impl Fn(&str) -> Claim,
    keys: &Keys,
    seal: bool,
    discovered: bool,
) -> Result<(String, Option<FrameKeys>, u16), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (name, nd, offer) = match expect(r).await {
        Ok(Frame::Hello {
            name,
            nonce,
            version,
        }) => (name, nonce, version),
        Ok(f) => return Err(refuse(w, LinkError::unexpected(&f)).await),
        Err(e @ LinkError::Frame(_)) => return Err(refuse(w, e).await),
        Err(e) => return Err(e),
    };
    let claim = judge(&name);
    let na = nonce_with_version(VERSION);
    let version = offer.min(VERSION);
    send(
        w,
        &Frame::Hello {
            version,
            name: String::new(),
            nonce: na,
        },
    )
    .await?;
    let mac = match expect(r).await {
        Ok(Frame::Auth { mac }) => mac,
        Ok(f) => return Err(refuse(w, LinkError::unexpected(&f)).await),
        Err(e @ LinkError::Frame(_)) => return Err(refuse(w, e).await),
        Err(e) => return Err(e),
    };
    // Checked whatever the claim, so that the answer takes the same path.
    let named = verify(keys, b"dialer", &nd, &na, &name, own, &mac);
    let unnamed = discovered && verify(keys, b"dialer", &nd, &na, &name, "", &mac);
    let proven = named || unnamed;
    match claim {
        Claim::Denied(why) => {
            return Err(refuse_saying(w, REFUSED, LinkError::Auth(why)).await);
        }
        _ if !proven => {
            let why = if keys.has_secret() {
                format!(
                    "peer `{name}` failed authentication (wrong shared secret, or it dialed \
                     this gateway under another name than `{own}`)"
                )
            } else {
                format!(
                    "peer `{name}` failed authentication (it dialed this gateway under another \
                     name than `{own}`)"
                )
            };
            return Err(refuse_saying(w, REFUSED, LinkError::Auth(why)).await);
        }
        Claim::WrongWay(why) => return Err(refuse(w, LinkError::Auth(why)).await),
        Claim::Ok => {}
    }
    // The dialer's real offer, now proven: a HELLO whose version was lowered on the way.
    if let Some(sent) = nonce_version(&nd).filter(|&s| s != offer) {
        return Err(refuse(
            w,
            LinkError::Auth(format!(
                "protocol version changed in transit: peer `{name}` offered {sent}, its \
                 HELLO said {offer}"
            )),
        )
        .await);
    }
    if unnamed && !named {
        send(
            w,
            &Frame::Hello {
                version,
                name: own.to_string(),
                nonce: na,
            },
        )
        .await?;
    }
    send(
        w,
        &Frame::Auth {
            mac: prove(keys, b"acceptor", &nd, &na, &name, own),
        },
    )
    .await?;
    let sealing = seal.then(|| {
        let k = frame_keys(keys, &nd, &na, &name, own);
        FrameKeys {
            send: k.recv,
            recv: k.send,
        }
    });
    Ok((name, sealing, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &[u8]) -> Keys {
        Keys::new(&Secret::new(secret.to_vec()), None).expect("keys")
    }

    #[test]
    fn proofs_depend_on_secret_role_nonces_names_and_binding() {
        let s = keys(b"s3cret");
        let base = prove(&s, b"dialer", &[1; 32], &[2; 32], "a", "b");
        assert!(verify(&s, b"dialer", &[1; 32], &[2; 32], "a", "b", &base));
        let other = keys(b"other");
        assert!(!verify(
            &other, b"dialer", &[1; 32], &[2; 32], "a", "b", &base
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
        let bound = Keys::new(&Secret::new(b"s3cret".to_vec()), Some([4; 32])).expect("keys");
        assert!(!verify(
            &bound, b"dialer", &[1; 32], &[2; 32], "a", "b", &base
        ));
        // Frame keys differ by direction and from every proof.
        let fk = frame_keys(&s, &[1; 32], &[2; 32], "a", "b");
        assert_ne!(fk.send, fk.recv);
        assert_ne!(fk.send, base);
    }

    #[test]
    fn an_empty_secret_is_never_a_key() {
        let empty = Secret::new(Vec::new());
        assert!(matches!(Keys::new(&empty, None), Err(LinkError::Auth(_))));
        let tls_only = Keys::new(&empty, Some([9; 32])).expect("TLS keys");
        assert!(!tls_only.has_secret());
        assert_eq!(tls_only.key.expose(), &[9; 32]);
    }

    #[test]
    fn certificates_name_a_peer_only_by_an_exact_dns_subject_alt_name() {
        let key = rcgen::KeyPair::generate().expect("key");
        let der = |sans: &[&str], cn: &str| {
            let mut p = rcgen::CertificateParams::new(
                sans.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
            .expect("params");
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.self_signed(&key).expect("cert").der().to_vec()
        };
        let c = der(&["gate-a", "127.0.0.1"], "gate-x");
        assert!(certificate_names(&c, "gate-a"));
        assert!(certificate_names(&c, "GATE-A"));
        assert!(!certificate_names(&c, "gate-x"), "the CN does not count");
        assert!(
            !certificate_names(&c, "127.0.0.1"),
            "an IP entry is not a name"
        );
        assert!(!certificate_names(
            &der(&["*.example"], "x"),
            "gate-a.example"
        ));
        assert!(!certificate_names(b"not a certificate", "gate-a"));
    }

    type Outcome = (
        Result<Option<FrameKeys>, LinkError>,
        Result<(String, Option<FrameKeys>), LinkError>,
    );

    async fn run(sd: &[u8], sa: &[u8], dialed: &str, claim: fn(&str) -> Claim) -> Outcome {
        let (d, a) = run_as(sd, sa, Some(dialed), claim, false).await;
        (d.map(|(_, k)| k), a)
    }

    async fn run_as(
        sd: &[u8],
        sa: &[u8],
        dialed: Option<&str>,
        claim: fn(&str) -> Claim,
        discovered: bool,
    ) -> (
        Result<(String, Option<FrameKeys>), LinkError>,
        Result<(String, Option<FrameKeys>), LinkError>,
    ) {
        let (d, a) = tokio::io::duplex(4096);
        let (dr, mut dw) = tokio::io::split(d);
        let (ar, mut aw) = tokio::io::split(a);
        let (kd, ka) = (keys(sd), keys(sa));
        let dialed = dialed.map(str::to_string);
        let dial = async move {
            let mut r = FrameReader::new(dr);
            dial(
                &mut r,
                &mut dw,
                "gate-a",
                dialed.as_deref(),
                &kd,
                true,
                VERSION,
            )
            .await
            .map(|(n, k, _)| (n, k))
        };
        let acc = async move {
            let mut r = FrameReader::new(ar);
            accept(&mut r, &mut aw, "gate-b", claim, &ka, true, discovered)
                .await
                .map(|(n, k, _)| (n, k))
        };
        tokio::join!(dial, acc)
    }

    fn refused_uniformly(d: &Result<Option<FrameKeys>, LinkError>) {
        match d {
            Err(LinkError::Refused(reason)) => assert_eq!(reason, REFUSED),
            Err(e) => panic!("dialer should be refused: {e}"),
            Ok(_) => panic!("dialer should be refused"),
        }
    }

    #[tokio::test]
    async fn handshake_succeeds_with_the_same_secret_and_fails_otherwise() {
        let (d, a) = run(b"same", b"same", "gate-b", |_| Claim::Ok).await;
        let dk = d.expect("dialer linked").expect("frame keys");
        let (name, ak) = a.expect("acceptor linked");
        assert_eq!(name, "gate-a");
        let ak = ak.expect("frame keys");
        assert_eq!((dk.send, dk.recv), (ak.recv, ak.send));

        let (d, a) = run(b"wrong", b"right", "gate-b", |_| Claim::Ok).await;
        refused_uniformly(&d);
        match a {
            Err(LinkError::Auth(why)) => assert!(why.contains("wrong shared secret"), "{why}"),
            other => panic!("acceptor should refuse: {:?}", other.map(|x| x.0)),
        }
        // Dialing the right secret under the wrong name for the acceptor fails too.
        let (d, _) = run(b"same", b"same", "gate-c", |_| Claim::Ok).await;
        refused_uniformly(&d);
    }

    /// A dialer that found the address through DNS learns the acceptor's name only
    /// after proving itself, and only from an acceptor that accepts discovered peers.
    #[tokio::test]
    async fn a_discovered_dialer_learns_the_name_after_proving_itself() {
        let (d, a) = run_as(b"s", b"s", None, |_| Claim::Ok, true).await;
        let (name, dk) = d.expect("dialer linked");
        assert_eq!(name, "gate-b");
        let (name, ak) = a.expect("acceptor linked");
        assert_eq!(name, "gate-a");
        let (dk, ak) = (dk.expect("keys"), ak.expect("keys"));
        assert_eq!((dk.send, dk.recv), (ak.recv, ak.send));
        // Wrong secret: the uniform refusal, no name.
        let (d, _) = run_as(b"x", b"s", None, |_| Claim::Ok, true).await;
        refused_uniformly(&d.map(|(_, k)| k));
        // An acceptor without discovery refuses unnamed dials.
        let (d, _) = run_as(b"s", b"s", None, |_| Claim::Ok, false).await;
        refused_uniformly(&d.map(|(_, k)| k));
        // A dialer that knows the name still links with a discovering acceptor.
        let (d, a) = run_as(b"s", b"s", Some("gate-b"), |_| Claim::Ok, true).await;
        assert!(d.is_ok() && a.is_ok());
    }

    #[tokio::test]
    async fn refusals_before_proof_are_uniform_and_after_it_explain() {
        let (d, a) = run(b"s", b"s", "gate-b", |n| {
            Claim::Denied(format!("`{n}` is not a configured peer"))
        })
        .await;
        refused_uniformly(&d);
        assert!(
            matches!(&a, Err(LinkError::Auth(w)) if w.contains("not a configured peer")),
            "{:?}",
            a.map(|x| x.0)
        );
        // A wrong direction is explained, but only to a dialer that proved itself ...
        let (d, _) = run(b"s", b"s", "gate-b", |_| {
            Claim::WrongWay("dial the other way".into())
        })
        .await;
        assert!(matches!(&d, Err(LinkError::Refused(r)) if r == "dial the other way"));
        // ... not to one that did not.
        let (d, _) = run(b"x", b"s", "gate-b", |_| {
            Claim::WrongWay("dial the other way".into())
        })
        .await;
        refused_uniformly(&d);
    }
}
