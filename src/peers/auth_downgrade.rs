//! The handshake catches a protocol version lowered in transit: a man in the middle
//! rewrites one HELLO's version field (not covered by the MACs) and the side that can
//! tell from the proven nonces refuses the link.

use super::auth::{accept, dial, Claim, Keys};
use super::frame::{decode, encode, Frame, Interner, VERSION};
use super::link::{FrameReader, LinkError};
use crate::config::Secret;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

fn keys() -> Keys {
    Keys::new(&Secret::new(b"one secret".to_vec()), None).expect("keys")
}

/// Copy `from` to `to`, with the first frame's HELLO version replaced by `version`.
async fn rewrite_first_hello<R, W>(mut from: R, mut to: W, version: Option<u16>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (frame, used) = loop {
        let Ok(n) = from.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        match decode(&buf, &mut Interner::default()) {
            Ok(Some(f)) => break f,
            Ok(None) => continue,
            Err(e) => panic!("not a frame: {e}"),
        }
    };
    let frame = match (frame, version) {
        (Frame::Hello { name, nonce, .. }, Some(v)) => Frame::Hello {
            version: v,
            name,
            nonce,
        },
        (f, _) => f,
    };
    let mut out = Vec::new();
    encode(&frame, &mut out);
    out.extend_from_slice(&buf[used..]);
    if to.write_all(&out).await.is_err() {
        return;
    }
    let _ = tokio::io::copy(&mut from, &mut to).await;
}

type Ends = (
    Result<(String, Option<super::auth::FrameKeys>, u16), LinkError>,
    Result<(String, Option<super::auth::FrameKeys>, u16), LinkError>,
);

/// A dialer and an acceptor with one secret, through a middle that rewrites the
/// dialer's HELLO version to `offer_seen` and the acceptor's to `answer_seen`.
async fn through_middle(offer_seen: Option<u16>, answer_seen: Option<u16>) -> Ends {
    let (d, md): (DuplexStream, DuplexStream) = tokio::io::duplex(4096);
    let (a, ma) = tokio::io::duplex(4096);
    let (mdr, mdw) = tokio::io::split(md);
    let (mar, maw) = tokio::io::split(ma);
    tokio::spawn(rewrite_first_hello(mdr, maw, offer_seen));
    tokio::spawn(rewrite_first_hello(mar, mdw, answer_seen));
    let (dr, mut dw) = tokio::io::split(d);
    let (ar, mut aw) = tokio::io::split(a);
    let (kd, ka) = (keys(), keys());
    let dialer = async move {
        let mut r = FrameReader::new(dr);
        dial(
            &mut r,
            &mut dw,
            "gate-a",
            Some("gate-b"),
            &kd,
            true,
            VERSION,
        )
        .await
    };
    let acceptor = async move {
        let mut r = FrameReader::new(ar);
        accept(&mut r, &mut aw, "gate-b", |_| Claim::Ok, &ka, true, false).await
    };
    tokio::join!(dialer, acceptor)
}

#[tokio::test]
async fn an_untouched_handshake_links_at_the_highest_version() {
    let (d, a) = through_middle(None, None).await;
    assert_eq!(d.expect("dialer linked").2, VERSION);
    assert_eq!(a.expect("acceptor linked").2, VERSION);
}

#[tokio::test]
async fn an_offer_lowered_in_transit_is_refused_by_the_acceptor() {
    let (d, a) = through_middle(Some(2), None).await;
    match a {
        Err(LinkError::Auth(why)) => assert!(why.contains("changed in transit"), "{why}"),
        Err(e) => panic!("the acceptor should refuse the downgrade, not fail with {e}"),
        Ok((_, _, v)) => panic!("the acceptor linked at version {v}"),
    }
    assert!(d.is_err(), "the dialer must not link");
}

#[tokio::test]
async fn an_answer_lowered_in_transit_is_refused_by_the_dialer() {
    let (d, _a) = through_middle(None, Some(2)).await;
    match d {
        Err(LinkError::Auth(why)) => assert!(why.contains("changed in transit"), "{why}"),
        Err(e) => panic!("the dialer should refuse the downgrade, not fail with {e}"),
        Ok((_, _, v)) => panic!("the dialer linked at version {v}"),
    }
}

/// A dialer that lowered its offer to 2 because a refusal claimed an older build, and
/// finds a version 3 acceptor: the refusal was forged, and the dialer says so.
#[tokio::test]
async fn a_forged_older_build_refusal_is_caught_on_the_next_dial() {
    let (d, md) = tokio::io::duplex(4096);
    let (dr, mut dw) = tokio::io::split(d);
    let (ar, mut aw) = tokio::io::split(md);
    let (kd, ka) = (keys(), keys());
    let dialer = async move {
        let mut r = FrameReader::new(dr);
        dial(&mut r, &mut dw, "gate-a", Some("gate-b"), &kd, true, 2).await
    };
    let acceptor = async move {
        let mut r = FrameReader::new(ar);
        accept(&mut r, &mut aw, "gate-b", |_| Claim::Ok, &ka, true, false).await
    };
    let (d, _a) = tokio::join!(dialer, acceptor);
    match d {
        Err(LinkError::Auth(why)) => assert!(why.contains("supports 3"), "{why}"),
        Err(e) => panic!("the dialer should refuse the downgrade, not fail with {e}"),
        Ok((_, _, v)) => panic!("the dialer linked at version {v}"),
    }
}
