//! The relay: after the CONNECT has been forwarded, move bytes both ways until one side
//! is done, passing half-closes on, and watch the broker's first packet (CONNACK).
//!
//! Memory: an idle connection holds no buffer. Each poll reads into a stack buffer
//! that exists only for the duration of that poll; bytes are written on at once, and
//! only what the destination cannot take right now is copied to the heap (and freed as
//! soon as it has been written). Counting uses pre-resolved counter handles: no label
//! lookups or allocation per chunk.
//!
//! Between a plain-TCP client and a plain-TCP broker, a large flow may move with
//! splice(2) instead (`splice`: a pipe per direction only while the flow lasts).

pub mod packets;
pub mod polite;
pub mod splice;
pub mod task;

use crate::metrics::NodeMetrics;
use crate::mqtt::{observe_connack, ConnackInfo, Parse};
use crate::pipes::{Lease, PipePool};
use std::any::Any;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

const CHUNK: usize = 16 * 1024;

/// Flows copied after one whose splices moved no more than [`CHUNK`] each.
const SMALL_SKIP: u8 = 64;

/// What the broker's first packet said, reported once.
pub trait ConnackSink {
    fn connack(&mut self, info: Option<ConnackInfo>, latency: std::time::Duration);
}

/// Watches the first bytes from the broker for the CONNACK.
pub struct ConnackObserver {
    acc: [u8; 8],
    len: u8,
    done: bool,
    started: Instant,
}

impl ConnackObserver {
    pub fn new(started: Instant) -> Self {
        Self {
            acc: [0; 8],
            len: 0,
            done: false,
            started,
        }
    }

    fn feed<K: ConnackSink>(&mut self, data: &[u8], sink: &mut K) {
        if self.done {
            return;
        }
        let room = self.acc.len() - self.len as usize;
        let take = room.min(data.len());
        self.acc[self.len as usize..self.len as usize + take].copy_from_slice(&data[..take]);
        self.len += take as u8;
        match observe_connack(&self.acc[..self.len as usize]) {
            Ok(Parse::Complete(info)) => {
                self.done = true;
                sink.connack(Some(info), self.started.elapsed());
            }
            Ok(Parse::Incomplete) if (self.len as usize) < self.acc.len() => {}
            _ => {
                self.done = true;
                sink.connack(None, self.started.elapsed());
            }
        }
    }
}

#[derive(Default)]
struct Direction {
    /// Bytes read but not yet accepted by the destination (at most `CHUNK`).
    pending: Option<Box<[u8]>>,
    pos: u32,
    need_flush: bool,
    eof: bool,
    done: bool,
    /// Flows (runs of full reads) to copy before asking for a pipe again: 1 when this
    /// one found none (counted once), [`SMALL_SKIP`] after a spliced flow whose pipe
    /// fills carried no more than a copy read would (small segments: many small
    /// messages, where splicing costs more than copying). Counted down at each flow's end.
    skip: u8,
}

/// What a direction's copy path stopped for.
enum Step {
    /// The source's EOF has been passed on.
    Done,
    /// A read filled the whole chunk and was written on: a large flow, which may take
    /// a pipe.
    Large,
}

/// The pipes of the directions that are splicing a large flow now (`splice`); boxed
/// and only while one is, so that a connection carries one pointer for it.
#[derive(Default)]
struct Spliced {
    up: Option<Lease>,
    down: Option<Lease>,
}

fn up_pipe(s: &mut Spliced) -> &mut Option<Lease> {
    &mut s.up
}

fn down_pipe(s: &mut Spliced) -> &mut Option<Lease> {
    &mut s.down
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct RelayTotals {
    pub to_broker: u64,
    pub to_client: u64,
}

/// Which connection of the pair failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Broker,
}

/// A relay that ended with an I/O error, and on which side it happened: a read from
/// a socket, or a write (flush, shutdown) to one.
#[derive(Debug)]
pub struct RelayError {
    pub side: Side,
    pub error: io::Error,
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = match self.side {
            Side::Client => "client",
            Side::Broker => "broker",
        };
        write!(f, "{side} side: {}", self.error)
    }
}

/// One direction's failure, before it is known which socket is which.
enum Failed {
    Read(io::Error),
    Write(io::Error),
}

impl Failed {
    fn on(self, src: Side, dst: Side) -> RelayError {
        match self {
            Failed::Read(error) => RelayError { side: src, error },
            Failed::Write(error) => RelayError { side: dst, error },
        }
    }
}

/// The relay state of one connection: both directions and the CONNACK watch. It owns
/// no sockets and no buffers (see the module comment), so that the task holding it
/// stays small while the connection is idle.
pub struct Pipe {
    up: Direction,
    down: Direction,
    observer: ConnackObserver,
    totals: RelayTotals,
    /// The side whose close was passed on first (for the access log).
    first_close: Option<Side>,
    spliced: Option<Box<Spliced>>,
}

/// The TCP socket of a relay side, when that side is plain TCP (known from its type).
fn plain_tcp<T: Any>(side: &T) -> Option<&tokio::net::TcpStream> {
    (side as &dyn Any).downcast_ref()
}

impl Pipe {
    /// The relay state of a connection whose CONNECT was forwarded at `started`.
    pub fn new(started: Instant) -> Self {
        Self {
            up: Direction::default(),
            down: Direction::default(),
            observer: ConnackObserver::new(started),
            totals: RelayTotals::default(),
            first_close: None,
            spliced: None,
        }
    }

    /// Bytes relayed so far, each way.
    pub fn totals(&self) -> RelayTotals {
        self.totals
    }

    /// The side that closed first, once one has.
    pub fn first_close(&self) -> Option<Side> {
        self.first_close
    }

    /// The broker's first packet has been seen (a CONNACK or not).
    pub fn connack_seen(&self) -> bool {
        self.observer.done
    }

    /// One side's close has been passed on to the other (a half-open connection).
    pub fn half_closed(&self) -> bool {
        self.up.done || self.down.done
    }

    /// Move what can be moved now, both ways. Ready once both directions have
    /// finished (EOF passed on as a write shutdown), or on an error on either side.
    /// `pipes`: where a large flow gets a pipe, when splicing is on for this
    /// connection's listener; used only when both sides are plain TCP (known from
    /// their types).
    pub fn poll<C, B, K>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut C,
        broker: &mut B,
        sink: &mut K,
        metrics: &NodeMetrics,
        pipes: Option<&Arc<PipePool>>,
    ) -> Poll<Result<RelayTotals, RelayError>>
    where
        C: AsyncRead + AsyncWrite + Unpin + Any,
        B: AsyncRead + AsyncWrite + Unpin + Any,
        K: ConnackSink,
    {
        let Pipe {
            up,
            down,
            observer,
            totals,
            first_close,
            spliced,
        } = self;
        // Only after the broker's CONNACK: until then the observer reads the bytes.
        let pipes = pipes.filter(|_| {
            observer.done && plain_tcp(&*client).is_some() && plain_tcp(&*broker).is_some()
        });
        if !up.done {
            let mut count = |n: usize, _: &[u8]| {
                totals.to_broker += n as u64;
                metrics.to_broker.inc_by(n as u64);
            };
            match drive(
                cx,
                &mut *client,
                &mut *broker,
                up,
                spliced,
                up_pipe,
                pipes,
                &mut count,
            ) {
                Poll::Ready(Ok(())) => {
                    up.done = true;
                    first_close.get_or_insert(Side::Client);
                }
                Poll::Ready(Err(f)) => return Poll::Ready(Err(f.on(Side::Client, Side::Broker))),
                Poll::Pending => {}
            }
        }
        if !down.done {
            let mut count = |n: usize, d: &[u8]| {
                totals.to_client += n as u64;
                metrics.to_client.inc_by(n as u64);
                observer.feed(d, sink);
            };
            match drive(
                cx,
                &mut *broker,
                &mut *client,
                down,
                spliced,
                down_pipe,
                pipes,
                &mut count,
            ) {
                Poll::Ready(Ok(())) => {
                    down.done = true;
                    first_close.get_or_insert(Side::Broker);
                }
                Poll::Ready(Err(f)) => return Poll::Ready(Err(f.on(Side::Broker, Side::Client))),
                Poll::Pending => {}
            }
        }
        if up.done && down.done {
            Poll::Ready(Ok(*totals))
        } else {
            Poll::Pending
        }
    }
}

/// One direction: its pipe first while it splices a large flow, else the copy path,
/// which may hand a large flow over to a pipe from `pipes`. `count(n, bytes)` gets
/// every chunk moved (`bytes` empty when spliced: after the CONNACK no one reads them).
#[allow(clippy::too_many_arguments)]
fn drive<R, W>(
    cx: &mut Context<'_>,
    src: &mut R,
    dst: &mut W,
    dir: &mut Direction,
    spliced: &mut Option<Box<Spliced>>,
    which: fn(&mut Spliced) -> &mut Option<Lease>,
    pipes: Option<&Arc<PipePool>>,
    count: &mut dyn FnMut(usize, &[u8]),
) -> Poll<Result<(), Failed>>
where
    R: AsyncRead + Unpin + Any,
    W: AsyncWrite + Unpin + Any,
{
    loop {
        if let Some(slot) = spliced.as_deref_mut().map(which) {
            if let Some(lease) = slot.as_mut() {
                let flow = match (plain_tcp(&*src), plain_tcp(&*dst)) {
                    (Some(s), Some(d)) => {
                        splice::poll_flow(cx, s, d, lease, &mut |n| count(n, &[]))
                    }
                    _ => Poll::Ready(Ok(false)),
                };
                match flow {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(f)) => return Poll::Ready(Err(f)),
                    Poll::Ready(Ok(eof)) => {
                        // The flow ended (for now): the pipe goes back, empty. Small
                        // segments: copy the next flows instead.
                        if splice::small_segments(lease, 1) {
                            dir.skip = SMALL_SKIP;
                        }
                        *slot = None;
                        dir.eof |= eof;
                    }
                }
            }
        }
        if spliced
            .as_ref()
            .is_some_and(|s| s.up.is_none() && s.down.is_none())
        {
            *spliced = None;
        }
        let large = pipes.is_some() && dir.skip == 0;
        match poll_direction(cx, src, dst, dir, count, large) {
            Poll::Ready(Ok(Step::Large)) => match pipes.and_then(|p| p.take()) {
                Some(lease) => *which(spliced.get_or_insert_with(Box::default)) = Some(lease),
                None => dir.skip = 1,
            },
            Poll::Ready(Ok(Step::Done)) => return Poll::Ready(Ok(())),
            Poll::Ready(Err(f)) => return Poll::Ready(Err(f)),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// The copy path of one direction. With `large`, a read that filled the whole chunk
/// (and was written on) returns [`Step::Large`].
fn poll_direction<R, W>(
    cx: &mut Context<'_>,
    src: &mut R,
    dst: &mut W,
    dir: &mut Direction,
    on_data: &mut dyn FnMut(usize, &[u8]),
    large: bool,
) -> Poll<Result<Step, Failed>>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    loop {
        if let Some(buf) = dir.pending.as_deref() {
            while (dir.pos as usize) < buf.len() {
                match Pin::new(&mut *dst).poll_write(cx, &buf[dir.pos as usize..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Failed::Write(io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(n)) => dir.pos += n as u32,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Failed::Write(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            dir.pending = None;
            dir.pos = 0;
        }
        if dir.eof {
            if dir.need_flush {
                match Pin::new(&mut *dst).poll_flush(cx) {
                    Poll::Ready(Ok(())) => dir.need_flush = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Failed::Write(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            return match Pin::new(&mut *dst).poll_shutdown(cx) {
                // A peer that already went away is not an error for a half-close.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::NotConnected => {
                    Poll::Ready(Ok(Step::Done))
                }
                other => other.map(|r| r.map(|()| Step::Done).map_err(Failed::Write)),
            };
        }
        let mut stack = [MaybeUninit::<u8>::uninit(); CHUNK];
        let mut rb = ReadBuf::uninit(&mut stack);
        match Pin::new(&mut *src).poll_read(cx, &mut rb) {
            Poll::Pending => {
                if dir.need_flush {
                    match Pin::new(&mut *dst).poll_flush(cx) {
                        Poll::Ready(Ok(())) => dir.need_flush = false,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(Failed::Write(e))),
                        Poll::Pending => {}
                    }
                }
                return Poll::Pending;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Failed::Read(e))),
            Poll::Ready(Ok(())) => {
                let data = rb.filled();
                if data.is_empty() {
                    dir.eof = true;
                    continue;
                }
                on_data(data.len(), data);
                let full = data.len() == CHUNK;
                if !full {
                    dir.skip = dir.skip.saturating_sub(1);
                }
                let mut off = 0;
                while off < data.len() {
                    match Pin::new(&mut *dst).poll_write(cx, &data[off..]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(Failed::Write(io::ErrorKind::WriteZero.into())))
                        }
                        Poll::Ready(Ok(n)) => off += n,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(Failed::Write(e))),
                        Poll::Pending => {
                            dir.pending = Some(data[off..].into());
                            dir.pos = 0;
                            dir.need_flush = true;
                            return Poll::Pending;
                        }
                    }
                }
                dir.need_flush = true;
                if large && full {
                    return Poll::Ready(Ok(Step::Large));
                }
            }
        }
    }
}
