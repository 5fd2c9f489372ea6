//! What a fan-out session writes to one connection (the client's, or a node's): one
//! growing buffer the session appends packets to, and a writer that takes all of it
//! at once and writes it with one call. Per packet that is a copy under an
//! uncontended lock, instead of a channel message and an allocation; the session
//! reads [`OutboxTx::queued`] to stop reading the other side while the connection
//! does not keep up.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The shared state of one outbox.
#[derive(Default)]
pub struct Outbox {
    buf: Mutex<Vec<u8>>,
    queued: AtomicUsize,
    ready: Notify,
    closed: AtomicBool,
}

/// The session's end: appends; closes the outbox when dropped (the writer then
/// writes what is left and shuts the connection's write side down).
pub struct OutboxTx(Arc<Outbox>);

impl OutboxTx {
    /// A new outbox: the session's end and the writer's.
    pub fn new() -> (OutboxTx, Arc<Outbox>) {
        let o = Arc::new(Outbox::default());
        (OutboxTx(o.clone()), o)
    }

    pub fn push(&self, bytes: &[u8]) {
        let mut b = self.0.buf.lock().unwrap_or_else(|p| p.into_inner());
        b.extend_from_slice(bytes);
        self.0.queued.store(b.len(), Ordering::Relaxed);
        drop(b);
        self.0.ready.notify_one();
    }

    /// Bytes appended and not yet taken by the writer.
    pub fn queued(&self) -> usize {
        self.0.queued.load(Ordering::Relaxed)
    }
}

impl Drop for OutboxTx {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.ready.notify_one();
    }
}

impl Outbox {
    /// Swap everything appended so far into `into` (which must be empty).
    pub fn take(&self, into: &mut Vec<u8>) {
        let mut b = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *b, into);
        self.queued.store(0, Ordering::Relaxed);
    }

    /// The session's end was dropped.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Completes when something was appended (or the outbox closed) since the last
    /// wait; a notification before the wait is kept.
    pub async fn ready(&self) {
        self.ready.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_bytes_are_taken_in_order_and_closing_is_seen() {
        let (tx, o) = OutboxTx::new();
        tx.push(b"ab");
        tx.push(b"c");
        assert_eq!(tx.queued(), 3);
        let mut got = Vec::new();
        o.take(&mut got);
        assert_eq!(got, b"abc");
        assert_eq!(tx.queued(), 0);
        assert!(!o.is_closed());
        drop(tx);
        assert!(o.is_closed());
    }
}
