//! Holding a client while no node of its cluster can take it (HAProxy's
//! `timeout queue` / `maxqueue`): up to the cluster's `queue_timeout`, at most
//! `queue_max` clients at once (`mqgate_queue_total{result}`), woken by every change
//! of the cluster's state. Bytes the client sends while held are kept (up to a cap);
//! a client that closes while held is let go, and so is every held client when its
//! listener closes.
//!
//! Shared by the two ways a client is routed: to one node (`crate::session`) and to
//! every node (`crate::fanout`). Each decides what "no node can take it" means and
//! what to do at the end; this module keeps the wait, its bounds and its counts.

use crate::cluster::QueueGuard;
use crate::config::ClusterConfig;
use crate::runtime::ListenerRt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// Longest pause between two attempts while held, when a node that the cluster still
/// counts as usable refuses connections (a leader that just died, before its health
/// checks notice). Any change of the cluster's state ends a pause at once.
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Why a held client's wait ended without a node.
pub enum Gone {
    /// The client closed or failed while held.
    Client(String),
    /// The listener was removed, or shutdown's grace ended, while the client was held.
    ListenerClosed,
}

/// One client's hold; see the module comment.
pub struct Hold<'a> {
    lst: &'a ListenerRt,
    /// Bytes of the client kept while held, at most.
    cap: usize,
    queue_max: usize,
    pub queue_timeout: Duration,
    pub began: Instant,
    pub deadline: Instant,
    queued: Option<QueueGuard<'a>>,
    pause: Duration,
}

impl<'a> Hold<'a> {
    /// A hold that has not started: the deadline counts from now.
    pub fn new(lst: &'a ListenerRt, cfg: &ClusterConfig, cap: usize) -> Self {
        let began = Instant::now();
        Hold {
            lst,
            cap,
            queue_max: cfg.queue_max,
            queue_timeout: cfg.queue_timeout,
            began,
            deadline: began + cfg.queue_timeout,
            queued: None,
            pause: Duration::from_millis(50),
        }
    }

    /// Is the client held (among the `queue_max`)?
    pub fn is_held(&self) -> bool {
        self.queued.is_some()
    }

    /// Has `queue_timeout` passed?
    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Count how the wait ended (`routed`, `timeout`, `closed`), if the client was held.
    pub fn end(&mut self, result: &str) {
        if self.queued.take().is_some() {
            self.lst.cluster.queue_result(result);
        }
    }

    /// Take a place among the held clients (once; `why`: why no node takes it).
    /// `Err`: `queue_max` clients are held already — the reason to refuse it with.
    pub fn enter(&mut self, why: &str) -> Result<(), String> {
        if self.queued.is_some() {
            return Ok(());
        }
        match self.lst.cluster.enter_queue() {
            Some(g) => {
                tracing::debug!(reason = %why, "no node can take the client: held");
                self.queued = Some(g);
                Ok(())
            }
            None => {
                self.lst.cluster.queue_result("full");
                Err(format!(
                    "{why} and queue_max ({}) clients are held",
                    self.queue_max
                ))
            }
        }
    }

    /// Wait for `changed` (the cluster's change notification, created before the
    /// state was looked at), the deadline or — `retry`: nodes were picked but refused
    /// — a short, growing pause; keep what the client sends in `extra`.
    pub async fn wait<S, F>(
        &mut self,
        changed: Pin<&mut F>,
        retry: bool,
        client: &mut S,
        extra: &mut Vec<u8>,
    ) -> Result<(), Gone>
    where
        S: AsyncRead + Unpin,
        F: Future<Output = ()>,
    {
        let wake = if retry {
            self.deadline.min(Instant::now() + self.pause)
        } else {
            self.deadline
        };
        self.pause = (self.pause * 2).min(RETRY_MAX);
        let gone = tokio::select! {
            _ = changed => None,
            _ = tokio::time::sleep_until(wake) => None,
            _ = self.lst.closed.closed() => Some(Gone::ListenerClosed),
            r = client.read_buf(extra), if extra.len() < self.cap => match r {
                Ok(0) => Some(Gone::Client("client closed".into())),
                Err(e) => Some(Gone::Client(format!("read error: {e}"))),
                Ok(_) => None,
            },
        };
        match gone {
            None => Ok(()),
            Some(g) => {
                self.end("closed");
                Err(g)
            }
        }
    }
}
