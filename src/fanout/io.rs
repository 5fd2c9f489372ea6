//! The fan-out session's sockets, polled in one future of the session task
//! ([`Session::poll_io`]), as the byte relay polls its two: the client's and every
//! node's. In one poll it writes what is queued, reads the client and the nodes
//! (within the bounds: see `super::session`), handles what it read, and writes what
//! that produced — so a node's PUBLISH reaches the client, and the client's PUBACK
//! its node, within one wake-up of the task, with no hand-over between tasks.
//!
//! How the connections end: `super::closing`.

use super::batch::Batch;
use super::session::{End, LinkState, Session};
use crate::mqtt::scanner::Scanned;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Passes over the sockets in one poll at most (then the task yields to the others).
const PASSES: usize = 8;

/// What one poll did that the session loop follows.
#[derive(Default)]
pub struct Turn {
    /// The client sent something (its keep-alive starts again).
    pub client_read: bool,
}

impl Session {
    /// Write, read, handle, write again, until nothing moves: `Pending` (every socket
    /// that may be read or has bytes queued has its waker registered) or `Ready` once
    /// something moved or the session ended (`self.end`).
    pub(super) fn poll_io<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut S,
        scanner: &mut crate::mqtt::scanner::Scanner,
    ) -> Poll<Turn> {
        let mut turn = Turn::default();
        let mut moved = false;
        for _ in 0..PASSES {
            let mut progress = self.poll_writes(cx, client);
            if self.end.is_some() {
                return Poll::Ready(turn);
            }
            if !self.held.is_empty() {
                self.handle_held();
            }
            if self.queues_ok() && self.end.is_none() {
                let mut rb = std::mem::take(&mut self.rbuf);
                let mut read = ReadBuf::new(&mut rb);
                match Pin::new(&mut *client).poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) if read.filled().is_empty() => {
                        self.end = Some(End::ClientClosed)
                    }
                    Poll::Ready(Ok(())) => {
                        let n = read.filled().len();
                        self.from_client += n as u64;
                        turn.client_read = true;
                        progress = true;
                        if let Some(e) = self.client_bytes(scanner, &rb[..n]) {
                            self.end = Some(e);
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(error = %e, "fan-out client read failed");
                        self.client_error = true;
                        self.end = Some(End::ClientClosed);
                    }
                    Poll::Pending => {}
                }
                self.rbuf = rb;
            }
            if self.end.is_none() && self.nodes_readable() && self.held.is_empty() {
                progress |= self.poll_node_reads(cx);
                self.handle_held();
            }
            if self.end.is_some() {
                // What the last packets produced (e.g. DISCONNECT) is written at the close.
                return Poll::Ready(turn);
            }
            if !progress {
                return if moved {
                    Poll::Ready(turn)
                } else {
                    Poll::Pending
                };
            }
            moved = true;
        }
        // Budget spent: let the loop's timers and the other tasks run, then go on.
        cx.waker().wake_by_ref();
        Poll::Ready(turn)
    }

    /// Write what is queued for the client and every node; true if anything was written.
    fn poll_writes<S: AsyncWrite + Unpin>(&mut self, cx: &mut Context<'_>, client: &mut S) -> bool {
        let mut wrote = false;
        if !self.client_failed {
            match self.client.poll_drain(cx, client) {
                Poll::Ready(Ok(w)) => wrote |= w,
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "fan-out client write failed");
                    self.client_failed = true;
                    self.client_error = true;
                    self.end.get_or_insert(End::ClientClosed);
                }
                Poll::Pending => {}
            }
        }
        let mut failed = Vec::new();
        for (idx, s) in self.slots.iter_mut().enumerate() {
            let Some(io) = s.io.as_mut() else { continue };
            match io.out.poll_drain(cx, &mut io.stream) {
                Poll::Ready(Ok(w)) => wrote |= w,
                Poll::Ready(Err(e)) => failed.push((idx, format!("write: {e}"))),
                Poll::Pending => {}
            }
        }
        for (idx, why) in failed {
            self.node_gone(idx, &why);
        }
        wrote
    }

    /// Read every node that has something, once each (from a rotating first one), into
    /// [`Session::held`]; true if anything was read or a connection ended.
    fn poll_node_reads(&mut self, cx: &mut Context<'_>) -> bool {
        let n = self.slots.len();
        if n == 0 {
            return false;
        }
        let first = self.next_node % n;
        self.next_node = self.next_node.wrapping_add(1);
        let mut progress = false;
        let mut rb = std::mem::take(&mut self.rbuf);
        for k in 0..n {
            let idx = (first + k) % n;
            let s = &mut self.slots[idx];
            let gen = s.gen;
            let Some(io) = s.io.as_mut() else { continue };
            let mut read = ReadBuf::new(&mut rb);
            let why = match Pin::new(&mut io.stream).poll_read(cx, &mut read) {
                Poll::Pending => continue,
                Poll::Ready(Err(e)) => Some(format!("read: {e}")),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    Some("closed by the node".to_string())
                }
                Poll::Ready(Ok(())) => {
                    let got = read.filled().len();
                    // Every whole packet of this read, back to back: one batch.
                    let mut bytes = Vec::with_capacity(got);
                    let mut bad = None;
                    io.scanner.feed(&rb[..got], |ev| match ev {
                        Scanned::Whole(p) => bytes.extend_from_slice(p),
                        ev => bad = super::link::unframed(&ev).or(bad.take()),
                    });
                    if !bytes.is_empty() {
                        self.held.push(Batch {
                            idx,
                            gen,
                            bytes,
                            at: 0,
                        });
                    }
                    bad
                }
            };
            progress = true;
            if let Some(why) = why {
                // What came before a bad packet is handled (as far as the bounds let
                // it now; the rest is dropped with the connection); then it ends.
                self.handle_held();
                self.node_gone(idx, &why);
            }
        }
        self.rbuf = rb;
        progress
    }

    /// A node connection ended (read or write failed, closed, bad input): retry later.
    pub(super) fn node_gone(&mut self, idx: usize, why: &str) {
        if self.slots[idx].state != LinkState::Up {
            return;
        }
        tracing::debug!(node = %self.slots[idx].node.name, %why, "fan-out: node connection ended");
        let pause = self.retry_pause(idx);
        self.lost(idx, pause);
    }
}
