//! MQTT over WebSocket for the load generator (`--ws PATH`): the HTTP upgrade, and
//! adapters that wrap writes in binary frames and unwrap the server's frames in place.
//!
//! Client frames carry a mask key of zero: RFC 6455 requires a key, not a random one
//! from a client that is not a browser, and with zero the payload is sent as is (no
//! copy, no XOR on the load generator's CPU). The server still runs its unmasking.

use std::io::{self, IoSlice, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

fn request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
    .into_bytes()
}

fn check_response(head: &[u8]) -> io::Result<()> {
    if head.starts_with(b"HTTP/1.1 101") {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "WebSocket upgrade refused: {}",
            String::from_utf8_lossy(head).lines().next().unwrap_or("")
        )))
    }
}

/// Read the response head byte by byte (nothing after it is consumed).
pub async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, path: &str) -> io::Result<()> {
    s.write_all(&request(path)).await?;
    s.flush().await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await?);
    }
    check_response(&head)
}

pub fn upgrade_sync<S: Read + Write>(s: &mut S, path: &str) -> io::Result<()> {
    s.write_all(&request(path))?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b)?;
        head.push(b[0]);
    }
    check_response(&head)
}

/// A binary frame header with a zero mask key.
fn header(len: usize, out: &mut [u8; 14]) -> usize {
    out[0] = 0x82;
    let n = if len < 126 {
        out[1] = 0x80 | len as u8;
        2
    } else if len <= 0xFFFF {
        out[1] = 0x80 | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 0x80 | 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    out[n..n + 4].copy_from_slice(&[0; 4]);
    n + 4
}

/// Server frames (unmasked) to payload bytes, in place.
#[derive(Default)]
struct Deframer {
    head: [u8; 10],
    head_len: usize,
    left: u64,
    skip: bool,
}

impl Deframer {
    fn deframe(&mut self, raw: &mut [u8]) -> usize {
        let (mut i, mut w) = (0, 0);
        while i < raw.len() {
            if self.left > 0 {
                let take = self.left.min((raw.len() - i) as u64) as usize;
                if !self.skip {
                    raw.copy_within(i..i + take, w);
                    w += take;
                }
                i += take;
                self.left -= take as u64;
                continue;
            }
            let had = self.head_len;
            let add = (10 - had).min(raw.len() - i);
            self.head[had..had + add].copy_from_slice(&raw[i..i + add]);
            let h = &self.head[..had + add];
            let parsed = if h.len() < 2 {
                None
            } else {
                match h[1] & 0x7F {
                    126 if h.len() >= 4 => Some((4, u64::from(u16::from_be_bytes([h[2], h[3]])))),
                    127 if h.len() >= 10 => {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(&h[2..10]);
                        Some((10, u64::from_be_bytes(a)))
                    }
                    126 | 127 => None,
                    n => Some((2, u64::from(n))),
                }
            };
            match parsed {
                None => {
                    self.head_len = had + add;
                    i += add;
                }
                Some((hl, len)) => {
                    i += hl - had;
                    self.head_len = 0;
                    self.left = len;
                    self.skip = self.head[0] & 0x08 != 0; // control frame
                }
            }
        }
        w
    }
}

/// An async stream speaking MQTT over WebSocket (after [`upgrade`]).
pub struct WsStream<S> {
    inner: S,
    de: Deframer,
    head: [u8; 14],
    head_pos: usize,
    head_end: usize,
    owe: u64,
}

impl<S> WsStream<S> {
    pub fn new(inner: S) -> Self {
        WsStream {
            inner,
            de: Deframer::default(),
            head: [0; 14],
            head_pos: 0,
            head_end: 0,
            owe: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let dst = buf.initialize_unfilled();
            let mut rb = ReadBuf::new(dst);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
            let w = this.de.deframe(&mut dst[..n]);
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
        while this.head_pos < this.head_end {
            let n =
                ready!(Pin::new(&mut this.inner)
                    .poll_write(cx, &this.head[this.head_pos..this.head_end]))?;
            this.head_pos += n;
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.owe == 0 {
            let hl = header(data.len(), &mut this.head);
            let bufs = [IoSlice::new(&this.head[..hl]), IoSlice::new(data)];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &bufs))?;
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            this.owe = data.len() as u64;
            if n > hl {
                this.owe -= (n - hl) as u64;
                return Poll::Ready(Ok(n - hl));
            }
            this.head_pos = n;
            this.head_end = hl;
            while this.head_pos < this.head_end {
                let n = ready!(Pin::new(&mut this.inner)
                    .poll_write(cx, &this.head[this.head_pos..this.head_end]))?;
                this.head_pos += n;
            }
        }
        let take = this.owe.min(data.len() as u64) as usize;
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &data[..take]))?;
        this.owe -= n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A blocking stream speaking MQTT over WebSocket (after [`upgrade_sync`]).
pub struct WsSync<S> {
    pub inner: S,
    de: Deframer,
    frame: Vec<u8>,
}

impl<S> WsSync<S> {
    pub fn new(inner: S) -> Self {
        WsSync {
            inner,
            de: Deframer::default(),
            frame: Vec::new(),
        }
    }
}

impl<S: Read> Read for WsSync<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.inner.read(buf)?;
            if n == 0 {
                return Ok(0);
            }
            let w = self.de.deframe(&mut buf[..n]);
            if w > 0 {
                return Ok(w);
            }
        }
    }
}

impl<S: Write> Write for WsSync<S> {
    /// One frame per call, written whole (one syscall for small messages).
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut h = [0u8; 14];
        let hl = header(data.len(), &mut h);
        self.frame.clear();
        self.frame.extend_from_slice(&h[..hl]);
        self.frame.extend_from_slice(data);
        self.inner.write_all(&self.frame)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deframes_cut_anywhere_and_skips_control_frames() {
        let mut wire = vec![0x82, 3, b'a', b'b', b'c', 0x8A, 2, b'p', b'o'];
        wire.extend([0x82, 126, 1, 0]);
        wire.extend(vec![b'x'; 256]);
        for cut in 0..wire.len() {
            let mut d = Deframer::default();
            let (mut a, mut b) = (wire[..cut].to_vec(), wire[cut..].to_vec());
            let n = d.deframe(&mut a);
            let mut out = a[..n].to_vec();
            let n = d.deframe(&mut b);
            out.extend_from_slice(&b[..n]);
            assert_eq!(out.len(), 259, "cut {cut}");
            assert_eq!(&out[..3], b"abc");
        }
    }
}
