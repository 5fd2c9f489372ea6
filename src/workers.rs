//! Connection threads: a single-threaded tokio runtime per thread, as HAProxy runs
//! one event loop per thread. The accept loops hand each new connection to the next
//! thread in turn, still unregistered (an `accept4` with `SOCK_NONBLOCK`, no epoll
//! entry yet), so that both of its sockets live in that thread's epoll set from the
//! first byte to the close: no work-stealing scheduler between a socket's readiness and
//! the task that relays it, and no cross-thread wake-ups per relayed chunk.
//!
//! The gateway's own runtime keeps the rest (accept loops, health checks, peers, admin
//! API, reloads). With `threads = 0` there are no connection threads and connections
//! run on the gateway's runtime, as everything else.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The connection threads of one gateway.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl Workers {
    /// No connection threads: connections run on the caller's runtime.
    pub fn none() -> Workers {
        Workers {
            handles: Vec::new(),
            next: AtomicUsize::new(0),
            stop: CancellationToken::new(),
        }
    }

    /// Start `n` connection threads, each with its own single-threaded runtime. They
    /// run until [`Workers::stop`] (or until the process exits).
    pub fn start(n: usize) -> io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| io::Error::new(e.kind(), format!("connection thread {i}: {e}")))?;
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("mqgate-conn-{i}"))
                .spawn(move || rt.block_on(stop.cancelled()))
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("starting connection thread {i}: {e}"))
                })?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// How many connection threads there are (0: connections run on the gateway's
    /// runtime).
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Run `task` on the next connection thread, tracked by `tracker` (shutdown waits
    /// for it).
    pub fn spawn<F>(&self, tracker: &TaskTracker, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self.handles.len() {
            0 => drop(tracker.spawn(task)),
            n => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
                drop(self.handles[i].spawn(tracker.track_future(task)));
            }
        }
    }

    /// End the connection threads. What still runs on them is dropped (its sockets
    /// closed): call this after shutdown has waited for the sessions.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How many connection threads to start for `configured` (0 in the config: one per
/// CPU the process may run on).
pub fn thread_count(configured: Option<usize>) -> usize {
    match configured {
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    }
}
