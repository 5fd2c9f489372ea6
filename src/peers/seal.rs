//! Frame integrity on peer links without TLS.
//!
//! After AUTH, every frame in each direction carries an HMAC-SHA256 tag under a key
//! that both ends derive from the handshake (the shared secret, both nonces and both
//! names; see [`super::auth::frame_keys`]), over a per-direction sequence number and
//! the frame body:
//!
//! ```text
//! sealed frame := length:u32be body tag:[32]     length counts body + tag
//! tag          := HMAC-SHA256(key, seq:u64be body) seq = 0, 1, 2, … per direction
//! ```
//!
//! A frame written into the TCP stream by someone else, altered, replayed, reordered
//! or dropped fails the check of the next tag, and the link closes. The keys are fresh
//! for every link (both nonces), so frames of one link are useless on another. The
//! frames are not encrypted: use `[peers.tls]` for confidentiality. On TLS links
//! frames are not sealed (TLS already authenticates every record).

use super::frame::{FrameError, MAX_FRAME};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the tag after each sealed frame's body.
pub const TAG: usize = 32;

/// Largest `length` of a sealed frame (body and tag).
pub const MAX_SEALED: usize = MAX_FRAME + TAG;

fn keyed(key: &[u8; 32]) -> HmacSha256 {
    // HMAC takes keys of any length; a 32-byte key cannot be refused.
    match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => <HmacSha256 as Mac>::new(&Default::default()),
    }
}

/// Why a sealed frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The tag does not match: injected, altered, replayed or out-of-order frame.
    #[error("frame failed its integrity check (injected, altered or replayed)")]
    Tag,
    /// The length prefix is impossible for a sealed frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Keys that seal the frames of a link without TLS, one per direction (derived in
/// `auth`, used by the link's [`Sealer`] and [`Opener`]).
#[derive(Clone)]
pub struct FrameKeys {
    /// Frames this side sends.
    pub send: [u8; 32],
    /// Frames this side receives.
    pub recv: [u8; 32],
}

/// Adds tags to outgoing frames.
#[derive(Clone)]
pub struct Sealer {
    mac: HmacSha256,
    seq: u64,
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Sealer {
        Sealer {
            mac: keyed(key),
            seq: 0,
        }
    }

    /// Append `frames` (one or more whole encoded frames, as `frame::encode` writes
    /// them) to `out`, each with its length grown by [`TAG`] and its tag after it.
    /// Bytes after the last whole frame (none, from the encoders) are copied as they are.
    pub fn seal(&mut self, mut frames: &[u8], out: &mut Vec<u8>) {
        out.reserve(frames.len() + TAG * 4);
        while frames.len() >= 4 {
            let len = u32::from_be_bytes([frames[0], frames[1], frames[2], frames[3]]) as usize;
            let Some(body) = frames.get(4..4 + len) else {
                break;
            };
            out.extend_from_slice(&((len + TAG) as u32).to_be_bytes());
            out.extend_from_slice(body);
            out.extend_from_slice(&self.tag(body));
            frames = &frames[4 + len..];
        }
        out.extend_from_slice(frames);
    }

    fn tag(&mut self, body: &[u8]) -> [u8; TAG] {
        let mut m = self.mac.clone();
        m.update(&self.seq.to_be_bytes());
        m.update(body);
        self.seq = self.seq.wrapping_add(1);
        m.finalize().into_bytes().into()
    }
}

/// Checks and strips the tags of incoming frames.
pub struct Opener {
    mac: HmacSha256,
    seq: u64,
}

impl Opener {
    pub fn new(key: &[u8; 32]) -> Opener {
        Opener {
            mac: keyed(key),
            seq: 0,
        }
    }

    /// The total size (`4 + length`) of the sealed frame at the front of `buf`, once
    /// its length prefix is there; refuses impossible lengths before anything is
    /// buffered.
    pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, SealError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > MAX_SEALED {
            return Err(FrameError::TooLarge(len).into());
        }
        if len <= TAG {
            // Too short to hold a body and a tag: an unsealed (injected) frame.
            return Err(SealError::Tag);
        }
        Ok(Some(4 + len))
    }

    /// Check the tag of the whole sealed frame `frame` (`4 + length` bytes) and turn
    /// it, in place, into a plain frame: returns its size (the first `n` bytes of
    /// `frame` are then a frame as `frame::decode` reads it).
    pub fn open(&mut self, frame: &mut [u8]) -> Result<usize, SealError> {
        let total = Self::frame_len(frame)?.ok_or(SealError::Tag)?;
        if frame.len() != total {
            return Err(SealError::Tag);
        }
        let body_end = total - TAG;
        let mut m = self.mac.clone();
        m.update(&self.seq.to_be_bytes());
        m.update(&frame[4..body_end]);
        m.verify_slice(&frame[body_end..])
            .map_err(|_| SealError::Tag)?;
        self.seq = self.seq.wrapping_add(1);
        let len = (body_end - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        Ok(body_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::frame::{decode, encode, Frame, Interner};

    fn frames() -> Vec<u8> {
        let mut v = Vec::new();
        encode(&Frame::Heartbeat, &mut v);
        encode(&Frame::SyncEnd { entries: 7 }, &mut v);
        v
    }

    fn open_all(o: &mut Opener, mut sealed: Vec<u8>) -> Result<Vec<Frame>, SealError> {
        let mut out = Vec::new();
        while !sealed.is_empty() {
            let n = Opener::frame_len(&sealed)?.ok_or(SealError::Tag)?;
            let plain = o.open(&mut sealed[..n])?;
            let (f, used) =
                decode(&sealed[..plain], &mut Interner::default())?.ok_or(SealError::Tag)?;
            assert_eq!(used, plain);
            out.push(f);
            sealed.drain(..n);
        }
        Ok(out)
    }

    #[test]
    fn sealed_frames_open_in_order_with_the_same_key() {
        let key = [1u8; 32];
        let mut s = Sealer::new(&key);
        let mut sealed = Vec::new();
        s.seal(&frames(), &mut sealed);
        assert_eq!(sealed.len(), frames().len() + 2 * TAG);
        let got = open_all(&mut Opener::new(&key), sealed).expect("opens");
        assert_eq!(got, vec![Frame::Heartbeat, Frame::SyncEnd { entries: 7 }]);
    }

    #[test]
    fn wrong_key_altered_replayed_or_unsealed_frames_are_refused() {
        let key = [1u8; 32];
        let mut sealed = Vec::new();
        Sealer::new(&key).seal(&frames(), &mut sealed);
        // another key
        assert_eq!(
            open_all(&mut Opener::new(&[2u8; 32]), sealed.clone()),
            Err(SealError::Tag)
        );
        // one bit of the body flipped
        let mut altered = sealed.clone();
        altered[4] ^= 1;
        assert_eq!(
            open_all(&mut Opener::new(&key), altered),
            Err(SealError::Tag)
        );
        // the second frame alone (the first dropped), or the first one twice
        let first = Opener::frame_len(&sealed).unwrap().unwrap();
        assert_eq!(
            open_all(&mut Opener::new(&key), sealed[first..].to_vec()),
            Err(SealError::Tag)
        );
        let twice = [&sealed[..first], &sealed[..first]].concat();
        assert_eq!(open_all(&mut Opener::new(&key), twice), Err(SealError::Tag));
        // plain frames
        assert_eq!(
            open_all(&mut Opener::new(&key), frames()),
            Err(SealError::Tag)
        );
        // an impossible length is refused from the prefix alone
        assert!(matches!(
            Opener::frame_len(&[0x7F, 0xFF, 0xFF, 0xFF]),
            Err(SealError::Frame(FrameError::TooLarge(_)))
        ));
    }
}
