//! The peer wire format: versioned, length-prefixed frames. Pure functions over bytes
//! (no I/O), so they are unit-tested and fuzzed alone (`fuzz/fuzz_targets/peer_frame.rs`).
//!
//! ```text
//! frame   := length:u32be body            (length of body, 1 ..= MAX_FRAME)
//! body    := type:u8 payload
//! HELLO   1  magic "MQGP" version:u16 name:str nonce:[32]   (the acceptor's name is "")
//! AUTH    2  mac:[32]                      HMAC-SHA256, see `auth`
//! UPDATES 3  cluster:str count:u32 update*
//!            update := flags:u8 (bit 0 = deletion) key:str [node:str] stamp:u64
//!                      origin:str idle_ms:u64
//! SYNC_BEGIN 4                             a full table follows
//! SYNC_END   5  entries:u64                the full table has been sent
//! HEARTBEAT  6
//! ERROR      7  reason:str                 the sender closes the link after it
//! SUBS       12 cluster:str count:u32 client*     (packet-aware sessions)
//!            client := key:str stamp:u64 n:u16 sub*   (n = 0: the client has none
//!            left; stamp: µs since the epoch, the newer set wins, `sticky::subs`)
//!            sub := topic:str options:u8 properties:bin
//!            (type 8, the same without stamps, from earlier builds and snapshots, is
//!            still read: stamp 0, older than any stamped set)
//! LIVE       9  cluster:str count:u32 live*       (one live session per client id)
//!            live := id:str stamp:u64 addr:str   (stamp: µs since the epoch)
//! SYNC_REQUEST 10  scope:u8                 version 3: send me your table (0: all of
//!                                          it; 1: only the entries you wrote)
//! SYNC_DONE    11  scope:u8 entries:u64     version 3: that table has been sent
//! str     := length:u16be UTF-8 bytes
//! bin     := length:u16be bytes
//! ```
//!
//! SUBS (LIVE) is only sent for clusters with `[sessions] restore_subscriptions`
//! (`single_live`) on: a build from before it closes the link on this unknown frame
//! type, so turn those on once every gateway of the mesh knows them (docs/peers.md).
//!
//! The HELLO magic and version sit at fixed offsets so that any future version can
//! still be told apart and refused with a clear error.
//!
//! On a link without TLS, every frame after AUTH is sealed (`super::seal`): its length
//! also counts a 32-byte tag after the body.
//!
//! Version 2 (security round 2): the acceptor's HELLO carries no name, the AUTH MACs
//! changed (see `super::auth`) and frames after AUTH are sealed without TLS. Version 1
//! peers are refused with the version error.
//!
//! Version 3 (issue 30): after AUTH nothing is sent in bulk until asked: each side asks
//! with SYNC_REQUEST and the other answers with SYNC_BEGIN, UPDATES…, SYNC_DONE (a
//! joining gateway asks one peer for its whole table and the others only for their own
//! entries, `super::pull`). The versions are negotiated in the HELLOs: the dialer
//! offers 3, the acceptor answers with the lower of the offer and its own; a version 2
//! acceptor refuses the offer with the version error, and the dialer then dials it
//! again offering 2. A link of version 2 works as before (each side sends its full
//! table unasked, SYNC_END after it); SYNC_REQUEST and SYNC_DONE are never sent on it.
//!
//! UPDATES frames of a full sync carry up to [`SYNC_BATCH`] updates (any version reads
//! them: the count is only bounded by the frame size).

use crate::sticky::subs::Sub;
use crate::sticky::{Update, UpdateRef};
use std::collections::HashSet;
use std::sync::Arc;

/// Protocol version spoken by this build.
pub const VERSION: u16 = 3;
/// Oldest protocol version this build still links with (see the module doc).
pub const MIN_VERSION: u16 = 2;
/// Largest frame body accepted or produced.
pub const MAX_FRAME: usize = 1 << 20;
/// Magic at the start of a HELLO.
pub const MAGIC: &[u8; 4] = b"MQGP";
/// Updates per UPDATES frame when sending (keeps frames far below `MAX_FRAME`:
/// a key is at most 64 KiB, so a frame of `BATCH` worst-case keys could exceed it;
/// the encoder also cuts a batch when it passes `MAX_FRAME / 2`).
pub const BATCH: usize = 1000;
/// Updates per UPDATES frame in a full sync: frames of up to `MAX_FRAME / 2` bytes
/// (a receiver of any version takes any count that fits a frame).
pub const SYNC_BATCH: usize = 64 * 1024;

const T_HELLO: u8 = 1;
const T_AUTH: u8 = 2;
const T_UPDATES: u8 = 3;
const T_SYNC_BEGIN: u8 = 4;
const T_SYNC_END: u8 = 5;
const T_HEARTBEAT: u8 = 6;
const T_ERROR: u8 = 7;
const T_SUBS_UNSTAMPED: u8 = 8;
const T_LIVE: u8 = 9;
const T_SYNC_REQUEST: u8 = 10;
const T_SYNC_DONE: u8 = 11;
const T_SUBS: u8 = 12;

/// Most subscriptions of one client in a SUBS frame (the largest
/// `max_subscriptions_per_client`).
pub const MAX_SUBS_PER_CLIENT: usize = 10_000;

/// Smallest encoded update: flags, empty key, stamp, empty origin, idle.
const MIN_UPDATE: usize = 1 + 2 + 8 + 2 + 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        version: u16,
        name: String,
        nonce: [u8; 32],
    },
    Auth {
        mac: [u8; 32],
    },
    Updates {
        cluster: String,
        updates: Vec<Update>,
    },
    /// An UPDATES frame as [`decode_lazy`] returns it: checked, not yet unpacked.
    Batch(Batch),
    SyncBegin,
    SyncEnd {
        entries: u64,
    },
    Heartbeat,
    Error {
        reason: String,
    },
    /// Clients' whole sets of subscriptions: (key, stamp, set).
    Subs {
        cluster: String,
        clients: Vec<crate::sticky::subs::StampedSet>,
    },
    /// Version 3: send me your table (`scope` 0: all of it; 1: the entries you wrote).
    SyncRequest {
        scope: u8,
    },
    /// Version 3: a table asked for (or a full one sent unasked) has been sent.
    SyncDone {
        scope: u8,
        entries: u64,
    },
    /// Client ids that went live on the sender: (id, stamp, source address).
    Live {
        cluster: String,
        ids: Vec<(Arc<str>, u64, Arc<str>)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is larger than the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("frame truncated: {0}")]
    Truncated(&'static str),
    #[error("{0} bytes left over at the end of a frame")]
    Trailing(usize),
    #[error("not an mqgate peer (bad magic)")]
    BadMagic,
    #[error("peer speaks protocol version {0}, this gateway speaks version {VERSION}")]
    Version(u16),
    #[error("invalid UTF-8 in {0}")]
    Utf8(&'static str),
    #[error("unknown update flags {0:#04x}")]
    Flags(u8),
    #[error("unknown sync scope {0}")]
    Scope(u8),
}

/// Shares the `Arc<str>` of repeated strings (node and origin names) across decoded
/// updates, so a full sync of a million entries does not allocate a million copies.
#[derive(Default)]
pub struct Interner {
    set: HashSet<Arc<str>>,
}

impl Interner {
    const MAX: usize = 4096;
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.set.get(s) {
            return a.clone();
        }
        if self.set.len() >= Self::MAX {
            self.set.clear();
        }
        let a: Arc<str> = Arc::from(s);
        self.set.insert(a.clone());
        a
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Truncated(what));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn str(&mut self, what: &'static str) -> Result<&'a str, FrameError> {
        let n = self.u16(what)? as usize;
        std::str::from_utf8(self.take(n, what)?).map_err(|_| FrameError::Utf8(what))
    }
    fn arr32(&mut self, what: &'static str) -> Result<[u8; 32], FrameError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32, what)?);
        Ok(a)
    }
}

/// One update of an UPDATES frame, borrowed from the frame's bytes.
fn read_update<'a>(r: &mut Reader<'a>) -> Result<UpdateRef<'a>, FrameError> {
    let flags = r.u8("update flags")?;
    if flags & !1 != 0 {
        return Err(FrameError::Flags(flags));
    }
    let key = r.str("key")?;
    let node = if flags & 1 == 0 {
        Some(r.str("node")?)
    } else {
        None
    };
    let stamp = r.u64("stamp")?;
    let origin = r.str("origin")?;
    let idle_ms = r.u64("idle")?;
    Ok(UpdateRef {
        key,
        node,
        stamp,
        origin,
        idle_ms,
    })
}

/// The updates of an UPDATES frame, checked whole when decoded and read in place
/// ([`Batch::iter`]): a full sync merges them without allocating per entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub cluster: String,
    count: u32,
    /// The encoded updates (after the count).
    bytes: bytes::Bytes,
}

impl Batch {
    fn check(cluster: String, count: u32, bytes: &[u8]) -> Result<Batch, FrameError> {
        let mut r = Reader { buf: bytes };
        for _ in 0..count {
            read_update(&mut r)?;
        }
        if !r.buf.is_empty() {
            return Err(FrameError::Trailing(r.buf.len()));
        }
        Ok(Batch {
            cluster,
            count,
            bytes: bytes::Bytes::copy_from_slice(bytes),
        })
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The updates, borrowed from the frame.
    pub fn iter(&self) -> impl Iterator<Item = UpdateRef<'_>> + '_ {
        let mut r = Reader { buf: &self.bytes };
        // Checked when decoded: every read succeeds.
        (0..self.count).map_while(move |_| read_update(&mut r).ok())
    }

    /// The updates, owned (tests, tools).
    pub fn to_updates(&self) -> Vec<Update> {
        self.iter().map(|u| u.to_update()).collect()
    }
}

/// Decode one frame from the front of `buf`: `Ok(None)` when more bytes are needed,
/// else the frame and how many bytes it used. The size limit is checked from the
/// length prefix alone, before anything is buffered.
pub fn decode(buf: &[u8], interner: &mut Interner) -> Result<Option<(Frame, usize)>, FrameError> {
    decode_front(buf, interner, false)
}

/// [`decode`], but an UPDATES frame comes back as a [`Frame::Batch`], checked and
/// read in place later (the peer links and the snapshot loader).
pub fn decode_lazy(
    buf: &[u8],
    interner: &mut Interner,
) -> Result<Option<(Frame, usize)>, FrameError> {
    decode_front(buf, interner, true)
}

fn decode_front(
    buf: &[u8],
    interner: &mut Interner,
    lazy: bool,
) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let frame = decode_body(&buf[4..4 + len], interner, lazy)?;
    Ok(Some((frame, 4 + len)))
}

/// How many bytes the frame at the front of `buf` needs in total, if its header is there.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= 4).then(|| 4 + u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize)
}

fn decode_body(body: &[u8], interner: &mut Interner, lazy: bool) -> Result<Frame, FrameError> {
    let mut r = Reader { buf: body };
    let kind = r.u8("type")?;
    let frame = match kind {
        T_HELLO => {
            if r.take(4, "magic")? != MAGIC {
                return Err(FrameError::BadMagic);
            }
            let version = r.u16("version")?;
            if !(MIN_VERSION..=VERSION).contains(&version) {
                return Err(FrameError::Version(version));
            }
            let name = r.str("name")?.to_string();
            let nonce = r.arr32("nonce")?;
            Frame::Hello {
                version,
                name,
                nonce,
            }
        }
        T_AUTH => Frame::Auth {
            mac: r.arr32("mac")?,
        },
        T_UPDATES if lazy => {
            let cluster = r.str("cluster")?.to_string();
            let count = r.u32("count")?;
            let rest = std::mem::take(&mut r.buf);
            Frame::Batch(Batch::check(cluster, count, rest)?)
        }
        T_UPDATES => {
            let cluster = r.str("cluster")?.to_string();
            let count = r.u32("count")? as usize;
            let mut updates = Vec::with_capacity(count.min(r.buf.len() / MIN_UPDATE));
            for _ in 0..count {
                let u = read_update(&mut r)?;
                updates.push(Update {
                    key: Arc::from(u.key),
                    node: u.node.map(|n| interner.get(n)),
                    stamp: u.stamp,
                    origin: interner.get(u.origin),
                    idle_ms: u.idle_ms,
                });
            }
            Frame::Updates { cluster, updates }
        }
        T_SYNC_BEGIN => Frame::SyncBegin,
        T_SYNC_END => Frame::SyncEnd {
            entries: r.u64("entries")?,
        },
        T_HEARTBEAT => Frame::Heartbeat,
        T_SYNC_REQUEST => Frame::SyncRequest {
            scope: scope(r.u8("scope")?)?,
        },
        T_SYNC_DONE => Frame::SyncDone {
            scope: scope(r.u8("scope")?)?,
            entries: r.u64("entries")?,
        },
        T_ERROR => Frame::Error {
            reason: r.str("reason")?.to_string(),
        },
        T_SUBS | T_SUBS_UNSTAMPED => {
            let stamped = kind == T_SUBS;
            let cluster = r.str("cluster")?.to_string();
            let count = r.u32("count")? as usize;
            // Smallest client: empty key, n = 0.
            let mut clients = Vec::with_capacity(count.min(r.buf.len() / 4));
            for _ in 0..count {
                let key: Arc<str> = Arc::from(r.str("client key")?);
                let stamp = if stamped { r.u64("stamp")? } else { 0 };
                let n = r.u16("subscription count")? as usize;
                if n > MAX_SUBS_PER_CLIENT {
                    return Err(FrameError::Truncated("too many subscriptions"));
                }
                // Smallest subscription: empty topic, options, empty properties.
                let mut subs = Vec::with_capacity(n.min(r.buf.len() / 5));
                for _ in 0..n {
                    let topic: Box<str> = r.str("topic")?.into();
                    let options = r.u8("options")?;
                    let len = r.u16("properties")? as usize;
                    let properties: Box<[u8]> = r.take(len, "properties")?.into();
                    subs.push(Sub {
                        topic,
                        options,
                        properties,
                    });
                }
                clients.push((key, stamp, subs));
            }
            Frame::Subs { cluster, clients }
        }
        T_LIVE => {
            let cluster = r.str("cluster")?.to_string();
            let count = r.u32("count")? as usize;
            // Smallest entry: empty id, stamp, empty address.
            let mut ids = Vec::with_capacity(count.min(r.buf.len() / 12));
            for _ in 0..count {
                let id: Arc<str> = Arc::from(r.str("client id")?);
                let stamp = r.u64("stamp")?;
                let addr: Arc<str> = Arc::from(r.str("address")?);
                ids.push((id, stamp, addr));
            }
            Frame::Live { cluster, ids }
        }
        t => return Err(FrameError::UnknownType(t)),
    };
    if !r.buf.is_empty() {
        return Err(FrameError::Trailing(r.buf.len()));
    }
    Ok(frame)
}

fn scope(s: u8) -> Result<u8, FrameError> {
    if s <= 1 {
        Ok(s)
    } else {
        Err(FrameError::Scope(s))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Strings longer than u16 are cut at a char boundary (keys come from MQTT, whose
    // strings are at most 65535 bytes; names and reasons are short).
    let mut n = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..n]);
}

/// Start a frame in `out`; returns the position of its length prefix.
fn begin(out: &mut Vec<u8>, t: u8) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, t]);
    at
}

fn finish(out: &mut [u8], at: usize) {
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Append one encoded frame to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    match frame {
        Frame::Hello {
            version,
            name,
            nonce,
        } => {
            let at = begin(out, T_HELLO);
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&version.to_be_bytes());
            put_str(out, name);
            out.extend_from_slice(nonce);
            finish(out, at);
        }
        Frame::Auth { mac } => {
            let at = begin(out, T_AUTH);
            out.extend_from_slice(mac);
            finish(out, at);
        }
        Frame::Updates { cluster, updates } => {
            encode_updates(cluster, updates, out);
        }
        Frame::Batch(b) => {
            let mut w = UpdatesWriter::new(&b.cluster, usize::MAX);
            for u in b.iter() {
                w.push(out, &u);
            }
            w.finish(out);
        }
        Frame::SyncBegin => {
            let at = begin(out, T_SYNC_BEGIN);
            finish(out, at);
        }
        Frame::SyncEnd { entries } => {
            let at = begin(out, T_SYNC_END);
            out.extend_from_slice(&entries.to_be_bytes());
            finish(out, at);
        }
        Frame::Heartbeat => {
            let at = begin(out, T_HEARTBEAT);
            finish(out, at);
        }
        Frame::SyncRequest { scope } => {
            let at = begin(out, T_SYNC_REQUEST);
            out.push(*scope);
            finish(out, at);
        }
        Frame::SyncDone { scope, entries } => {
            let at = begin(out, T_SYNC_DONE);
            out.push(*scope);
            out.extend_from_slice(&entries.to_be_bytes());
            finish(out, at);
        }
        Frame::Error { reason } => {
            let at = begin(out, T_ERROR);
            put_str(out, reason);
            finish(out, at);
        }
        Frame::Subs { cluster, clients } => encode_subs(cluster, clients, out),
        Frame::Live { cluster, ids } => encode_live(cluster, ids, out),
    }
}

/// Append LIVE frames for `ids` to `out`, cutting a new frame when one passes half
/// of [`MAX_FRAME`].
pub fn encode_live(cluster: &str, ids: &[(Arc<str>, u64, Arc<str>)], out: &mut Vec<u8>) {
    let mut rest = ids;
    loop {
        let at = begin(out, T_LIVE);
        put_str(out, cluster);
        let count_at = out.len();
        out.extend_from_slice(&[0, 0, 0, 0]);
        let mut n: u32 = 0;
        while let Some(((id, stamp, addr), tail)) = rest.split_first() {
            if n > 0 && out.len() - at > MAX_FRAME / 2 {
                break;
            }
            put_str(out, id);
            out.extend_from_slice(&stamp.to_be_bytes());
            put_str(out, addr);
            n += 1;
            rest = tail;
        }
        out[count_at..count_at + 4].copy_from_slice(&n.to_be_bytes());
        finish(out, at);
        if rest.is_empty() {
            return;
        }
    }
}

/// Append SUBS frames for `clients` to `out`, cutting a new frame when one passes half
/// of [`MAX_FRAME`] (a client's set is never split).
pub fn encode_subs(cluster: &str, clients: &[crate::sticky::subs::StampedSet], out: &mut Vec<u8>) {
    let mut rest = clients;
    loop {
        let at = begin(out, T_SUBS);
        put_str(out, cluster);
        let count_at = out.len();
        out.extend_from_slice(&[0, 0, 0, 0]);
        let mut n: u32 = 0;
        while let Some(((key, stamp, subs), tail)) = rest.split_first() {
            if n > 0 && out.len() - at > MAX_FRAME / 2 {
                break;
            }
            put_str(out, key);
            out.extend_from_slice(&stamp.to_be_bytes());
            let subs = &subs[..subs.len().min(MAX_SUBS_PER_CLIENT)];
            out.extend_from_slice(&(subs.len() as u16).to_be_bytes());
            for s in subs {
                put_str(out, &s.topic);
                out.push(s.options);
                let p = &s.properties[..s.properties.len().min(u16::MAX as usize)];
                out.extend_from_slice(&(p.len() as u16).to_be_bytes());
                out.extend_from_slice(p);
            }
            n += 1;
            rest = tail;
        }
        out[count_at..count_at + 4].copy_from_slice(&n.to_be_bytes());
        finish(out, at);
        if rest.is_empty() {
            return;
        }
    }
}

/// Append UPDATES frames for `updates` to `out`, cutting a new frame every [`BATCH`]
/// updates or when a frame passes half of [`MAX_FRAME`].
pub fn encode_updates(cluster: &str, updates: &[Update], out: &mut Vec<u8>) {
    let mut w = UpdatesWriter::new(cluster, BATCH);
    for u in updates {
        w.push(out, &u.view());
    }
    w.finish(out);
}

/// Writes updates as UPDATES frames one at a time (a full sync encodes a shard
/// straight from the table): a frame is cut every `per_frame` updates or when it
/// passes half of [`MAX_FRAME`].
pub struct UpdatesWriter<'c> {
    cluster: &'c str,
    per_frame: usize,
    /// The frame being written: where it starts, where its count is, its count.
    open: Option<(usize, usize, u32)>,
    /// Whether any frame was written (no update at all still makes one empty frame).
    wrote: bool,
}

impl<'c> UpdatesWriter<'c> {
    pub fn new(cluster: &'c str, per_frame: usize) -> Self {
        UpdatesWriter {
            cluster,
            per_frame: per_frame.max(1),
            open: None,
            wrote: false,
        }
    }

    fn close(&mut self, out: &mut [u8]) {
        if let Some((at, count_at, n)) = self.open.take() {
            out[count_at..count_at + 4].copy_from_slice(&n.to_be_bytes());
            finish(out, at);
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        let at = begin(out, T_UPDATES);
        put_str(out, self.cluster);
        let count_at = out.len();
        out.extend_from_slice(&[0, 0, 0, 0]);
        self.open = Some((at, count_at, 0));
        self.wrote = true;
    }

    pub fn push(&mut self, out: &mut Vec<u8>, u: &UpdateRef<'_>) {
        if let Some((at, _, n)) = self.open {
            if n as usize >= self.per_frame || out.len() - at > MAX_FRAME / 2 {
                self.close(out);
            }
        }
        if self.open.is_none() {
            self.start(out);
        }
        out.push(u8::from(u.node.is_none()));
        put_str(out, u.key);
        if let Some(node) = u.node {
            put_str(out, node);
        }
        out.extend_from_slice(&u.stamp.to_be_bytes());
        put_str(out, u.origin);
        out.extend_from_slice(&u.idle_ms.to_be_bytes());
        if let Some((_, _, n)) = self.open.as_mut() {
            *n += 1;
        }
    }

    /// Close the last frame (or write an empty one if there was no update).
    pub fn finish(mut self, out: &mut Vec<u8>) {
        if !self.wrote {
            self.start(out);
        }
        self.close(out);
    }

    /// Close the frame being written, if any (a full sync between two shards).
    pub fn flush(&mut self, out: &mut [u8]) {
        self.close(out);
    }
}

#[cfg(test)]
mod tests;
