//! splice(2) for large flows in the byte relay (`[limits] splice = "auto"`), as HAProxy's
//! `option splice-auto`: socket → pipe → socket, with no copy to user space.
//!
//! Only the byte relay between a plain-TCP client and a plain-TCP broker splices (TLS,
//! WebSocket and the packet-aware relays must see the bytes). A direction starts on the
//! copy path of `relay/mod.rs` and asks for a pipe (`crate::pipes`) only once its flow
//! is large — a read filled the whole 16 KB chunk, after the broker's CONNACK was seen
//! — so small-message traffic keeps exactly the copy path and its cost. While it holds
//! a pipe, the direction moves at most one pipe's capacity at a time (64 KB by default;
//! the copy path's bound is its 16 KB chunk): the pipe is emptied into the destination
//! before the source is read again, so a destination that stops reading stops the
//! source (backpressure) and nothing is buffered beyond the pipe. When the pipe is
//! empty and the source has nothing more right now (or ended), the pipe goes back to
//! the pool and the direction is on the copy path again: an idle connection holds no
//! pipe. A flow whose splices move no more than a 16 KB copy read would (small
//! segments: many small messages, where splicing costs more than copying) goes back to
//! copying, it and the next 64 flows of that direction (`relay/mod.rs`, `SMALL_SKIP`).
//! Half-closes, resets and byte counts are those of the copy path: EOF is passed
//! on by it, errors are the same `Failed` values, every byte read is counted once.

use super::{Failed, CHUNK};
use crate::pipes::Lease;
use rustix::pipe::{splice, SpliceFlags};
use std::io;
use std::task::{Context, Poll};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Asked of the kernel per splice from a socket: as much as the pipe takes.
const SPLICE_LEN: usize = 1 << 20;

/// This flow's splices into the pipe (at least `min_fills` of them) moved no more than
/// a copy read would, each: small segments, where copying costs less. Judged early
/// (`SMALL_AFTER` fills) to stop a flow, and at its end (any fill) to copy the next.
pub(super) fn small_segments(lease: &Lease, min_fills: u32) -> bool {
    lease.fills() >= min_fills.max(1) && lease.mean_fill() <= CHUNK as u64
}

/// Splices into the pipe before [`small_segments`] stops a flow early.
const SMALL_AFTER: u32 = 4;

fn flags() -> SpliceFlags {
    SpliceFlags::NONBLOCK | SpliceFlags::MOVE
}

/// Move one large flow through `lease`'s pipe until the pipe is empty and `src` has
/// nothing more right now (`Ready(Ok(false))`) or has ended (`Ready(Ok(true))`): the
/// caller then gives the pipe back and goes on with the copy path, which registers
/// for the next read (or passes the EOF on). `Pending` while `dst` cannot take what is
/// in the pipe (its waker registered). `count` gets the bytes as they are read, as the
/// copy path counts them.
pub(super) fn poll_flow(
    cx: &mut Context<'_>,
    src: &TcpStream,
    dst: &TcpStream,
    lease: &mut Lease,
    count: &mut dyn FnMut(usize),
) -> Poll<Result<bool, Failed>> {
    loop {
        while lease.in_pipe() > 0 {
            match dst.poll_write_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failed::Write(e))),
                Poll::Ready(Ok(())) => {}
            }
            let moved = dst.try_io(Interest::WRITABLE, || {
                let (read, _) = lease.ends()?;
                Ok(splice(read, None, dst, None, lease.in_pipe(), flags())?)
            });
            match moved {
                Ok(0) => return Poll::Ready(Err(Failed::Write(io::ErrorKind::WriteZero.into()))),
                Ok(n) => lease.drained(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(Failed::Write(e))),
            }
        }
        // Small segments (many small messages): a copy read would move as much per
        // call, at less cost; the caller copies the next flows.
        if small_segments(lease, SMALL_AFTER) {
            return Poll::Ready(Ok(false));
        }
        match src.poll_read_ready(cx) {
            Poll::Pending => return Poll::Ready(Ok(false)),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Failed::Read(e))),
            Poll::Ready(Ok(())) => {}
        }
        // The pipe is empty here, so EAGAIN can only mean that the socket is.
        let read = src.try_io(Interest::READABLE, || {
            let (_, write) = lease.ends()?;
            Ok(splice(src, None, write, None, SPLICE_LEN, flags())?)
        });
        match read {
            Ok(0) => return Poll::Ready(Ok(true)),
            Ok(n) => {
                count(n);
                lease.filled(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Ready(Ok(false)),
            Err(e) => return Poll::Ready(Err(Failed::Read(e))),
        }
    }
}
