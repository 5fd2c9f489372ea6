//! What a fan-out session writes to one connection (the client's, or a node's): one
//! growing buffer the session appends packets to and writes from itself, in the same
//! turn as it produced them ([`Outbox::poll_drain`]: as much as the socket takes
//! now, the rest on the next turn the socket is writable). Per packet that is a copy
//! into the buffer; the session reads [`Outbox::queued`] to stop reading the other
//! side while the connection does not keep up.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;

/// A buffer above this capacity is given back once written out.
const KEEP_CAPACITY: usize = 4 * 1024 * 1024;

/// Bytes queued for one connection; `at` of them already written.
#[derive(Default)]
pub struct Outbox {
    buf: Vec<u8>,
    at: usize,
    /// Everything was written; the stream's flush is still owed.
    flush: bool,
    /// Bytes written so far (the access log's count).
    pub written: u64,
}

impl Outbox {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes queued and not written yet.
    pub fn queued(&self) -> usize {
        self.buf.len() - self.at
    }

    /// The bytes not written yet (taken: the outbox is empty after).
    pub fn take_rest(&mut self) -> Vec<u8> {
        let mut b = std::mem::take(&mut self.buf);
        b.drain(..self.at);
        self.at = 0;
        b
    }

    /// Write what is queued until it is all written (`Ready(Ok(true))` if anything
    /// was), the stream takes no more (`Pending`, with the waker registered) or fails.
    /// `Ready(Ok(false))`: nothing to write.
    pub fn poll_drain<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> Poll<io::Result<bool>> {
        let mut wrote = false;
        while self.at < self.buf.len() {
            match Pin::new(&mut *w).poll_write(cx, &self.buf[self.at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.at += n;
                    self.written += n as u64;
                    wrote = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if wrote => return Poll::Ready(Ok(true)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if wrote {
            self.buf.clear();
            self.at = 0;
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
            self.flush = true;
        }
        if self.flush {
            // A no-op on TCP; TLS and WebSocket streams may hold bytes back until flushed.
            match Pin::new(&mut *w).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        Poll::Ready(Ok(wrote))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queued_bytes_are_written_in_order_and_partial_writes_resume() {
        let mut o = Outbox::default();
        o.push(b"ab");
        o.push(b"c");
        assert_eq!(o.queued(), 3);
        // A pipe that takes 2 bytes at most at a time.
        let (mut a, mut b) = tokio::io::duplex(2);
        let r = std::future::poll_fn(|cx| o.poll_drain(cx, &mut a)).await;
        assert!(matches!(r, Ok(true)));
        assert_eq!(o.queued(), 1);
        let mut got = [0u8; 2];
        let read = tokio::io::AsyncReadExt::read_exact(&mut b, &mut got).await;
        assert!(read.is_ok());
        assert_eq!(&got, b"ab");
        let r = std::future::poll_fn(|cx| o.poll_drain(cx, &mut a)).await;
        assert!(matches!(r, Ok(true)));
        assert_eq!(o.queued(), 0);
        o.push(b"de");
        o.push(b"f");
        assert_eq!(o.take_rest(), b"def");
        assert_eq!(o.queued(), 0);
    }
}
