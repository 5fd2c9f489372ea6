//! [`WsStream`]: MQTT bytes over an RFC 6455 connection, as a plain byte stream
//! (`AsyncRead + AsyncWrite`), so that the session and the relay run unchanged.
//!
//! Read side: raw bytes are read straight into the caller's buffer and de-framed in
//! place (headers dropped, payloads unmasked and moved together), so a read costs no
//! copy beyond that move. Binary and continuation frames carry data; a ping queues a
//! pong (the latest ping only, as RFC 6455 allows); a close frame is the end of the
//! stream (EOF). Text frames, unmasked frames, reserved bits, unknown opcodes and bad
//! fragmentation fail the read with a [`WsError`] and queue a close frame (1002, 1003
//! for text). Until the CONNECT has passed, a frame declaring more than
//! `max_connect_size` bytes fails at once (1009): nothing is buffered for it.
//!
//! Write side: every write becomes one unmasked binary frame, header and payload sent
//! with one vectored write (no copy). A short write leaves the rest of the frame owed:
//! the next writes continue its payload. Control frames wait for a frame boundary.
//! Shutdown sends a close frame (1000), then shuts the socket's write side.
//!
//! Memory: no buffer while idle. The state is a few dozen bytes inline; a control
//! frame's payload and a pending control reply live on the heap only until sent.

use super::frame::{self, FrameError, Opcode, MAX_HEADER};
use crate::metrics::Reject;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most raw bytes one read takes (the relay reads 16 KB at a time).
const READ_MAX: usize = 16 * 1024;
/// The first read's size. The part of the caller's buffer a read may fill must be
/// zeroed first (safe code cannot read into uninitialised memory), so the size
/// follows what reads return: doubled when a read fills it, halved when it is mostly
/// unused. Small messages then cost a small memset, bulk transfers full reads.
const READ_START: u16 = 2048;
const READ_MIN: u16 = 512;

/// Why a client's frames were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("continuation frame outside a message, or a new message inside one")]
    Sequence,
    #[error("frame of {0} bytes before the CONNECT is complete, over max_connect_size")]
    TooLarge(u64),
}

impl WsError {
    /// The `mqgate_connections_rejected_total` reason when this ends a connection
    /// before its CONNECT.
    pub fn reject(self) -> Reject {
        match self {
            WsError::Frame(FrameError::Text) => Reject::WsText,
            WsError::TooLarge(_) | WsError::Frame(FrameError::TooLong) => Reject::TooLarge,
            _ => Reject::WsFrame,
        }
    }

    fn close_code(self) -> u16 {
        match self {
            WsError::Frame(FrameError::Text) => 1003,
            WsError::TooLarge(_) | WsError::Frame(FrameError::TooLong) => 1009,
            _ => 1002,
        }
    }
}

/// The reason of a read error that came from a [`WsStream`], if it did.
pub fn reject_of(e: &io::Error) -> Option<Reject> {
    e.get_ref()?.downcast_ref::<WsError>().map(|w| w.reject())
}

/// Watches the first MQTT packet's fixed header to know when the CONNECT is over.
struct ConnectCap {
    max: u64,
    head: [u8; 5],
    head_len: u8,
    end: Option<u64>,
    seen: u64,
}

impl ConnectCap {
    fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if self.end.is_some() || self.head_len == 5 {
                break;
            }
            self.head[self.head_len as usize] = b;
            self.head_len += 1;
            let h = &self.head[..self.head_len as usize];
            if h.len() >= 2 && h[h.len() - 1] & 0x80 == 0 {
                let mut v = 0u64;
                for (i, x) in h[1..].iter().enumerate() {
                    v |= u64::from(x & 0x7F) << (7 * i);
                }
                self.end = Some(h.len() as u64 + v);
            } else if h.len() == 5 {
                // Malformed length: the session refuses it; lift the watch.
                self.end = Some(0);
            }
        }
        self.seen = self.seen.saturating_add(data.len() as u64);
    }

    fn done(&self) -> bool {
        self.end.is_some_and(|e| self.seen >= e)
    }
}

#[derive(Default)]
struct ReadState {
    /// A header cut by the end of a read.
    head: [u8; MAX_HEADER],
    head_len: u8,
    /// Payload bytes of the current frame still to come.
    left: u64,
    mask: [u8; 4],
    offset: u64,
    /// The current frame is a control frame (its payload is collected).
    control: Option<Opcode>,
    control_payload: Vec<u8>,
    /// A fragmented binary message is open.
    in_message: bool,
    eof: bool,
    failed: Option<WsError>,
    cap: Option<Box<ConnectCap>>,
    /// How many bytes the next read asks for (see [`READ_START`]).
    hint: u16,
}

#[derive(Default)]
struct WriteState {
    /// Bytes committed to the socket that must go before anything else.
    out: Option<Box<[u8]>>,
    out_pos: usize,
    /// Payload bytes of the current data frame not yet written.
    owe: u64,
    /// A control frame waiting for a frame boundary.
    control: Option<Box<[u8]>>,
    close_queued: bool,
}

/// A WebSocket connection after the handshake, read and written as MQTT bytes.
pub struct WsStream<S> {
    inner: S,
    rd: ReadState,
    wr: WriteState,
    /// Bytes that arrived with the handshake request, after its head.
    early: Option<Box<[u8]>>,
}

/// A close frame with a status code.
fn close_frame(code: u16) -> Box<[u8]> {
    let mut f = vec![0x88, 2];
    f.extend_from_slice(&code.to_be_bytes());
    f.into_boxed_slice()
}

impl<S> WsStream<S> {
    /// `early`: bytes read past the handshake head; `max_connect`: the frame cap
    /// until the CONNECT has passed.
    pub fn new(inner: S, early: Vec<u8>, max_connect: usize) -> Self {
        WsStream {
            inner,
            rd: ReadState {
                cap: Some(Box::new(ConnectCap {
                    max: max_connect as u64,
                    head: [0; 5],
                    head_len: 0,
                    end: None,
                    seen: 0,
                })),
                hint: READ_START,
                ..ReadState::default()
            },
            wr: WriteState::default(),
            early: (!early.is_empty()).then(|| early.into_boxed_slice()),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl ReadState {
    /// De-frame `raw` in place: payload bytes end up at `raw[..n]`, `n` returned.
    /// Control frames are acted on through `wr`.
    fn deframe(&mut self, raw: &mut [u8], wr: &mut WriteState) -> Result<usize, WsError> {
        let mut i = 0;
        let mut w = 0;
        while i < raw.len() && !self.eof {
            if self.left > 0 {
                let take = (self.left.min((raw.len() - i) as u64)) as usize;
                match self.control {
                    None => {
                        raw.copy_within(i..i + take, w);
                        frame::unmask(&mut raw[w..w + take], self.mask, self.offset);
                        if let Some(cap) = &mut self.cap {
                            cap.feed(&raw[w..w + take]);
                        }
                        w += take;
                    }
                    Some(_) => {
                        let start = self.control_payload.len();
                        self.control_payload.extend_from_slice(&raw[i..i + take]);
                        frame::unmask(&mut self.control_payload[start..], self.mask, self.offset);
                    }
                }
                i += take;
                self.left -= take as u64;
                self.offset += take as u64;
                if self.left == 0 {
                    self.end_frame(wr);
                }
                continue;
            }
            // A header: from `raw` alone, or completing one cut by the last read.
            let h = if self.head_len == 0 {
                match frame::parse_header(&raw[i..])? {
                    Some(h) => {
                        i += h.header_len;
                        h
                    }
                    None => {
                        let rest = raw.len() - i;
                        self.head[..rest].copy_from_slice(&raw[i..]);
                        self.head_len = rest as u8;
                        break;
                    }
                }
            } else {
                let had = self.head_len as usize;
                let add = (MAX_HEADER - had).min(raw.len() - i);
                self.head[had..had + add].copy_from_slice(&raw[i..i + add]);
                match frame::parse_header(&self.head[..had + add])? {
                    Some(h) => {
                        i += h.header_len - had;
                        self.head_len = 0;
                        h
                    }
                    None => {
                        self.head_len = (had + add) as u8;
                        i += add;
                        continue;
                    }
                }
            };
            self.start_frame(h)?;
            if h.len == 0 {
                self.end_frame(wr);
            }
        }
        if let Some(cap) = &self.cap {
            if cap.done() {
                self.cap = None;
            }
        }
        Ok(w)
    }

    fn start_frame(&mut self, h: frame::Header) -> Result<(), WsError> {
        match h.opcode {
            Opcode::Continuation if !self.in_message => return Err(WsError::Sequence),
            Opcode::Binary if self.in_message => return Err(WsError::Sequence),
            Opcode::Continuation | Opcode::Binary => {
                if let Some(cap) = &self.cap {
                    if !cap.done() && h.len > cap.max {
                        return Err(WsError::TooLarge(h.len));
                    }
                }
                self.in_message = !h.fin;
                self.control = None;
            }
            op => self.control = Some(op),
        }
        self.left = h.len;
        self.mask = h.mask;
        self.offset = 0;
        Ok(())
    }

    fn end_frame(&mut self, wr: &mut WriteState) {
        match self.control.take() {
            Some(Opcode::Ping) if !wr.close_queued => {
                let payload = std::mem::take(&mut self.control_payload);
                let mut f = Vec::with_capacity(2 + payload.len());
                f.extend_from_slice(&[0x80 | Opcode::Pong.bits(), payload.len() as u8]);
                f.extend_from_slice(&payload);
                wr.control = Some(f.into_boxed_slice());
            }
            Some(Opcode::Close) => self.eof = true,
            _ => {}
        }
        self.control_payload = Vec::new();
    }
}

/// The read side alone, for the fuzz target and tests: de-frame `data` delivered in
/// pieces cut at `cuts` (offsets), with `max_connect` as the CONNECT-time cap. Returns
/// the MQTT bytes, and whether a close frame ended the stream or the error that did.
pub fn deframe(
    data: &[u8],
    cuts: &[usize],
    max_connect: usize,
) -> (Vec<u8>, Result<bool, WsError>) {
    let mut ws = WsStream::new((), Vec::new(), max_connect);
    let mut out = Vec::new();
    let mut start = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(data.len())).collect();
    ends.sort_unstable();
    ends.push(data.len());
    for end in ends {
        if end <= start {
            continue;
        }
        let mut chunk = data[start..end].to_vec();
        start = end;
        match ws.rd.deframe(&mut chunk, &mut ws.wr) {
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) => return (out, Err(e)),
        }
        if ws.rd.eof {
            break;
        }
    }
    (out, Ok(ws.rd.eof))
}

impl<S: AsyncWrite + Unpin> WsStream<S> {
    /// Write what is committed (`out`), then, at a frame boundary, a queued control
    /// frame.
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Some(out) = self.wr.out.as_deref() {
                while self.wr.out_pos < out.len() {
                    let n =
                        ready!(Pin::new(&mut self.inner).poll_write(cx, &out[self.wr.out_pos..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    self.wr.out_pos += n;
                }
                self.wr.out = None;
                self.wr.out_pos = 0;
            }
            if self.wr.owe == 0 {
                if let Some(c) = self.wr.control.take() {
                    self.wr.out = Some(c);
                    continue;
                }
            }
            return Poll::Ready(Ok(()));
        }
    }

    fn fail(&mut self, e: WsError, cx: &mut Context<'_>) -> io::Error {
        self.rd.failed = Some(e);
        if !self.wr.close_queued {
            self.wr.close_queued = true;
            self.wr.control = Some(close_frame(e.close_code()));
            // Best effort: the connection is about to be dropped.
            let _ = self.poll_out(cx);
        }
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(e) = this.rd.failed {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
            if this.rd.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.wr.control.is_some() || this.wr.out.is_some() {
                // A pong (or the rest of a frame) to send; its waker is registered
                // if the socket is full. Errors show on the write side.
                let _ = this.poll_out(cx);
            }
            let want = buf.remaining().min(usize::from(this.rd.hint.max(READ_MIN)));
            let dst = buf.initialize_unfilled_to(want);
            let n = match this.early.take() {
                Some(early) => {
                    let n = early.len().min(dst.len());
                    dst[..n].copy_from_slice(&early[..n]);
                    if n < early.len() {
                        this.early = Some(early[n..].into());
                    }
                    n
                }
                None => {
                    let mut rb = ReadBuf::new(dst);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                    rb.filled().len()
                }
            };
            if n == 0 {
                this.rd.eof = true;
                return Poll::Ready(Ok(()));
            }
            let hint = usize::from(this.rd.hint);
            if n == want && hint < READ_MAX {
                this.rd.hint = (hint * 2).min(READ_MAX) as u16;
            } else if n < want / 4 && this.rd.hint > READ_MIN {
                this.rd.hint /= 2;
            }
            let w = match this.rd.deframe(&mut dst[..n], &mut this.wr) {
                Ok(w) => w,
                Err(e) => return Poll::Ready(Err(this.fail(e, cx))),
            };
            if w > 0 {
                buf.advance(w);
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.wr.close_queued {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        ready!(this.poll_out(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.wr.owe == 0 {
            let mut head = [0u8; 10];
            let h = frame::encode_header(Opcode::Binary, data.len() as u64, &mut head);
            let bufs = [IoSlice::new(&head[..h]), IoSlice::new(data)];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &bufs))?;
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            this.wr.owe = data.len() as u64;
            if n > h {
                let k = n - h;
                this.wr.owe -= k as u64;
                return Poll::Ready(Ok(k));
            }
            if n < h {
                // The header is committed: the rest of it goes first.
                this.wr.out = Some(head[n..h].into());
                this.wr.out_pos = 0;
                ready!(this.poll_out(cx))?;
            }
        }
        let take = (this.wr.owe.min(data.len() as u64)) as usize;
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &data[..take]))?;
        this.wr.owe -= n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_out(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.wr.close_queued && this.wr.owe == 0 {
            this.wr.close_queued = true;
            this.wr.control = Some(close_frame(1000));
        }
        ready!(this.poll_out(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A masked client frame.
    fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [9, 200, 33, 7];
        let mut v = vec![b0];
        if payload.len() < 126 {
            v.push(0x80 | payload.len() as u8);
        } else {
            v.push(0x80 | 126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    #[tokio::test]
    async fn deframes_split_fragmented_and_interleaved_frames_and_answers_ping() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut ws = WsStream::new(server, client_frame(0x82, b"AB"), 1024);
        let mut wire = client_frame(0x02, b"CDE"); // FIN clear: fragmented
        wire.extend(client_frame(0x89, b"hi")); // ping inside the message
        wire.extend(client_frame(0x80, &[b'F'; 200])); // final continuation
        wire.extend(client_frame(0x88, &[3, 232]));
        for chunk in wire.chunks(3) {
            client.write_all(chunk).await.unwrap();
        }
        let mut got = Vec::new();
        ws.read_to_end(&mut got).await.unwrap();
        let mut want = b"ABCDE".to_vec();
        want.extend([b'F'; 200]);
        assert_eq!(got, want);
        ws.write_all(b"xyz").await.unwrap();
        ws.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(
            back,
            [0x8A, 2, b'h', b'i', 0x82, 3, b'x', b'y', b'z', 0x88, 2, 3, 232]
        );
    }

    /// Server frames back to bytes (test side: unmasked, FIN set).
    fn unframe(mut wire: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            assert_eq!(wire[0], 0x82);
            let (len, at) = match wire[1] {
                126 => (usize::from(u16::from_be_bytes([wire[2], wire[3]])), 4),
                127 => (
                    usize::try_from(u64::from_be_bytes(wire[2..10].try_into().unwrap())).unwrap(),
                    10,
                ),
                n => (usize::from(n), 2),
            };
            out.extend_from_slice(&wire[at..at + len]);
            wire = &wire[at + len..];
        }
        out
    }

    #[tokio::test]
    async fn short_writes_finish_their_frame_and_a_queued_pong_goes_first() {
        // A pipe of 7 bytes: headers and payloads are cut everywhere.
        let (mut client, server) = tokio::io::duplex(7);
        let mut ws = WsStream::new(server, client_frame(0x89, b"p"), 1024);
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut buf = [0u8; 8];
        // The ping is read (nothing to return yet: the read waits), its pong queued.
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), ws.read(&mut buf));
        assert!(pending.await.is_err());
        for chunk in data.chunks(300).chain(std::iter::once(&data[..])) {
            ws.write_all(chunk).await.unwrap();
        }
        ws.shutdown().await.unwrap();
        drop(ws);
        let wire = reader.await.unwrap();
        assert_eq!(&wire[..3], &[0x8A, 1, b'p'], "the pong first");
        let close = &wire[wire.len() - 4..];
        assert_eq!(close, &[0x88, 2, 3, 232]);
        let mut want = data.clone();
        want.extend_from_slice(&data);
        assert_eq!(unframe(&wire[3..wire.len() - 4]), want);
    }

    #[tokio::test]
    async fn bad_frames_fail_with_their_reason() {
        let cases: [(Vec<u8>, Reject); 4] = [
            (vec![0x82, 0x03, 1, 2, 3], Reject::WsFrame),
            (client_frame(0x81, b"{}"), Reject::WsText),
            (client_frame(0x00, b"x"), Reject::WsFrame),
            (
                {
                    let mut v = vec![0x82, 0xFF];
                    v.extend_from_slice(&(1u64 << 62).to_be_bytes());
                    v.extend_from_slice(&[0; 4]);
                    v
                },
                Reject::TooLarge,
            ),
        ];
        for (wire, reason) in cases {
            let (mut client, server) = tokio::io::duplex(1024);
            let mut ws = WsStream::new(server, Vec::new(), 65536);
            client.write_all(&wire).await.unwrap();
            let mut buf = [0u8; 64];
            let e = ws.read(&mut buf).await.unwrap_err();
            assert_eq!(reject_of(&e), Some(reason), "{wire:?}");
        }
    }

    #[tokio::test]
    async fn the_cap_is_lifted_once_the_connect_has_passed() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut ws = WsStream::new(server, Vec::new(), 100);
        // A 14-byte "CONNECT" in two frames, then a frame over the cap.
        let connect = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0];
        client
            .write_all(&client_frame(0x82, &connect[..5]))
            .await
            .unwrap();
        client
            .write_all(&client_frame(0x82, &connect[5..]))
            .await
            .unwrap();
        client
            .write_all(&client_frame(0x82, &[7; 1000]))
            .await
            .unwrap();
        client.write_all(&client_frame(0x88, &[])).await.unwrap();
        let mut got = Vec::new();
        ws.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 14 + 1000);
    }
}
