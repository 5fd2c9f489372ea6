//! Connection threads: a single-threaded tokio runtime per thread, as HAProxy runs
//! one event loop per thread. The accept loops hand each new connection to the next
//! thread in turn (as HAProxy's accepting thread hands them to the others), still
//! unregistered (an `accept4` with `SOCK_NONBLOCK`, no epoll entry yet), so that both
//! of its sockets live in that thread's epoll set from the first byte to the close:
//! no work-stealing scheduler between a socket's readiness and the task that relays
//! it, and no cross-thread wake-ups per relayed chunk.
//!
//! A listener's accept loop runs on one of the connection threads too: the connections
//! it hands to itself cost no hand-off, and those for each other thread go over in one
//! batch per wake-up. The gateway's own runtime keeps the rest (health checks, peers,
//! admin API, reloads). With `threads = 0` there are no connection threads and connections
//! run on the gateway's runtime, as everything else.
//!
//! How many: [`thread_count`] (unset, one per CPU less one per broker node on this host,
//! at least one).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The connection threads of one gateway.
pub struct Workers {
    /// Tells this pool's threads from another gateway's in the same process (tests).
    id: u64,
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
}

static POOLS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// (pool id, thread index) on a connection thread; pool id 0 elsewhere.
    static CURRENT: Cell<(u64, usize)> = const { Cell::new((0, 0)) };
}

impl Workers {
    /// No connection threads: connections run on the caller's runtime.
    pub fn none() -> Workers {
        Workers {
            id: POOLS.fetch_add(1, Ordering::Relaxed),
            handles: Vec::new(),
            next: AtomicUsize::new(0),
            stop: CancellationToken::new(),
        }
    }

    /// Start `n` connection threads, each with its own single-threaded runtime. They
    /// run until [`Workers::stop`] (or until the process exits).
    pub fn start(n: usize) -> io::Result<Workers> {
        // Built first, so that an error below drops it, which stops the threads
        // already started.
        let mut w = Workers {
            id: POOLS.fetch_add(1, Ordering::Relaxed),
            handles: Vec::with_capacity(n),
            next: AtomicUsize::new(0),
            stop: CancellationToken::new(),
        };
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| io::Error::new(e.kind(), format!("connection thread {i}: {e}")))?;
            w.handles.push(rt.handle().clone());
            let (id, stop) = (w.id, w.stop.clone());
            std::thread::Builder::new()
                .name(format!("mqgate-conn-{i}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set((id, i)));
                    rt.block_on(async {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = keep_timer_armed() => {}
                        }
                    })
                })
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("starting connection thread {i}: {e}"))
                })?;
        }
        Ok(w)
    }

    /// How many connection threads there are (0: connections run on the gateway's
    /// runtime).
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Run each of `tasks` on the next connection thread in turn, tracked by `tracker`
    /// (shutdown waits for them). Those for the thread
    /// this is called on are spawned right here; those for each other thread go over
    /// in one hand-off (one wake-up of that thread for the whole batch).
    pub fn spawn_many<F>(&self, tracker: &TaskTracker, tasks: impl IntoIterator<Item = F>)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let n = self.handles.len();
        if n == 0 {
            for t in tasks {
                drop(tracker.spawn(t));
            }
            return;
        }
        let here = match CURRENT.with(|c| c.get()) {
            (id, i) if id == self.id => Some(i),
            _ => None,
        };
        let mut away: Vec<Vec<F>> = Vec::new();
        for t in tasks {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
            if Some(i) == here {
                drop(tracker.spawn(t));
            } else {
                if away.is_empty() {
                    away.resize_with(n, Vec::new);
                }
                away[i].push(t);
            }
        }
        for (i, mut batch) in away.into_iter().enumerate() {
            if batch.len() == 1 {
                // One connection: its own task goes over, no batch task around it.
                if let Some(t) = batch.pop() {
                    drop(self.handles[i].spawn(tracker.track_future(t)));
                }
            } else if !batch.is_empty() {
                let tr = tracker.clone();
                drop(self.handles[i].spawn(tracker.track_future(async move {
                    for t in batch {
                        drop(tr.spawn(t));
                    }
                })));
            }
        }
    }

    /// Run `task` on connection thread `k` (modulo their number), tracked by `tracker`.
    pub fn spawn_on<F>(&self, k: usize, tracker: &TaskTracker, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self.handles.len() {
            0 => drop(tracker.spawn(task)),
            n => drop(self.handles[k % n].spawn(tracker.track_future(task))),
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

/// How often [`keep_timer_armed`] wakes its thread.
const TIMER_KEEPER: Duration = Duration::from_secs(1);

/// Keep one timer of this thread's runtime always pending, due within
/// [`TIMER_KEEPER`]. Why: tokio's timer remembers, each time the thread goes to sleep,
/// when its earliest timer is due, and a timer armed later that is due sooner (or any
/// timer, when none was pending) wakes the thread's event loop through its eventfd, a
/// `write(2)` per timer armed, even though the thread arming it is that event loop and
/// is awake. Every new connection arms one or two timers (CONNECT deadline, upstream
/// connect timeout: seconds), so in a connect storm that was 1.6 `write`s per
/// session. With this timer pending, a deadline of more than a second never comes
/// before the remembered one, and arming it costs no system call.
async fn keep_timer_armed() {
    let mut tick = tokio::time::interval(TIMER_KEEPER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// How many connection threads to start, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadCount {
    /// Connection threads to start (0: none).
    pub threads: usize,
    /// CPUs this process may run on.
    pub cpus: usize,
    /// Distinct broker nodes whose address is on this host (loopback, or an address of
    /// one of its interfaces), told apart by port.
    pub local_nodes: usize,
}

/// How many connection threads to start for `config`: `limits.threads` when it is set
/// (0: none). Unset, [`default_threads`]: one per CPU the process may run on, less one
/// for each broker node that runs on this host, at least one. A node named by a DNS
/// name other than `localhost` counts as elsewhere (start-up does not wait for DNS).
pub fn thread_count(config: &crate::config::Config) -> ThreadCount {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // A local node is known by its port alone: `localhost:1883`, `127.0.0.1:1883`,
    // `[::1]:1883` and this host's own `10.0.0.5:1883` are one Mosquitto listening on
    // all of them as often as not, and two brokers on one host need two ports unless
    // each binds its own address (then this counts one CPU too few).
    let mut local = std::collections::HashSet::new();
    for node in config.clusters.iter().flat_map(|c| &c.nodes) {
        if on_this_host(&node.address) {
            local.insert(node.address.port);
        }
    }
    let local_nodes = local.len();
    let threads = match config.limits.threads {
        Some(n) => n,
        None => default_threads(cpus, local_nodes),
    };
    ThreadCount {
        threads,
        cpus,
        local_nodes,
    }
}

/// The thread count when `limits.threads` is unset: one per CPU less one per local
/// broker node, at least one.
///
/// Why: a Mosquitto process relays on one thread and needs a CPU to itself when busy,
/// and connection threads beyond the CPUs left to the proxy add wake-ups and CPU per
/// message. Chosen again for issue 31 from three same-run A/Bs of every load shape on 2
/// vCPUs with the broker beside the proxy, one thread (this rule) against two
/// (`nbthread`'s count; BENCHMARKS.md, "A CPU left to each broker on the same host"):
/// two threads carried 0.55–0.74 × the messages of one in the 4-pair QoS 1 shapes and
/// 0.55–0.81 × in fan-out (1 → 4), at 1.5–2.7 × the CPU per message, in every run; they
/// gained at 64 KB messages (1.09–1.47 ×) and in plain connect storms (1.57–1.88 ×);
/// fan-in (4 → 1) throughput (0.61–1.20 ×) and its latency right after a full-speed run
/// (p50 0.40–2.10 × one thread's) went either way from run to run. Those hosts were
/// loaded by other builds (load average 6–12 on 2 vCPUs), where one thread's batching of
/// wake-ups pays most. On a quiet host (nothing else running) two threads still lost
/// fan-out (0.66 ×) and the pairs (0.87–0.99 ×) at 1.2–1.7 × the CPU per message, and
/// p99 at 1k and 5k msg/s (1.8–2.0 ×), gaining p50 at 20k msg/s only (0.79–0.85 ×).
/// `limits.threads = 2` is the setting to try for connect-storm or 20k msg/s fan-in
/// traffic.
pub fn default_threads(cpus: usize, local_nodes: usize) -> usize {
    cpus.saturating_sub(local_nodes).max(1)
}

/// Whether a broker node's address is on this host: `localhost`, a loopback address
/// (even with IPv6 off, when `::1` cannot be bound), or an address a socket can bind to
/// (the unspecified address, or one of this host's interfaces' addresses; binding to
/// any other fails with `EADDRNOTAVAIL`, unless the host allows non-local binds,
/// `net.ipv4.ip_nonlocal_bind`).
fn on_this_host(addr: &crate::config::NodeAddress) -> bool {
    if addr.host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match addr.literal() {
        Some(sa) => {
            let ip = sa.ip();
            ip.is_loopback() || std::net::UdpSocket::bind(std::net::SocketAddr::new(ip, 0)).is_ok()
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{default_threads, Workers};
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;
    use std::time::Duration;
    use tokio_util::task::TaskTracker;

    /// This thread's count of write(2)-family system calls so far.
    fn thread_writes() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io")
            .unwrap_or_else(|e| panic!("reading /proc/thread-self/io: {e}"));
        io.lines()
            .find_map(|l| l.strip_prefix("syscw: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no syscw line in /proc/thread-self/io: {io}"))
    }

    /// Arm `n` timers due in 10 s (as a new connection's set-up deadlines are) on the
    /// current runtime, right after it has slept with no other timer pending, and
    /// count the write(2)s this thread made meanwhile.
    async fn writes_while_arming(n: usize) -> u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let before = thread_writes();
        let mut timers = Vec::with_capacity(n);
        for _ in 0..n {
            let mut t = Box::pin(tokio::time::sleep(Duration::from_secs(10)));
            std::future::poll_fn(|cx| {
                let _ = Pin::new(&mut t).poll(cx);
                Poll::Ready(())
            })
            .await;
            timers.push(t);
        }
        thread_writes() - before
    }

    #[test]
    fn arming_a_deadline_costs_no_system_call_on_a_connection_thread() {
        // A runtime built as a connection thread's is, without the keeper: tokio
        // wakes its own driver once per timer armed.
        let bare = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("building a runtime: {e}"));
        let plain = bare.block_on(writes_while_arming(100));
        assert!(
            plain >= 100,
            "without the keeper, 100 timers armed made {plain} write(2)s, expected one each \
             (if tokio no longer wakes its own driver, `keep_timer_armed` can go)"
        );
        // The same on a real connection thread.
        let workers = Workers::start(1).unwrap_or_else(|e| panic!("starting a thread: {e}"));
        let (tx, rx) = std::sync::mpsc::channel();
        workers.spawn_on(0, &TaskTracker::new(), async move {
            let _ = tx.send(writes_while_arming(100).await);
        });
        let kept = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("no answer from the connection thread: {e}"));
        workers.stop();
        assert_eq!(
            kept, 0,
            "on a connection thread, 100 timers armed made {kept} write(2)s"
        );
    }

    #[test]
    fn the_default_leaves_a_cpu_to_each_local_broker_and_keeps_one_thread() {
        // (CPUs, broker nodes on this host) → threads.
        for (cpus, local, want) in [
            (1, 0, 1),
            (1, 1, 1),
            (2, 0, 2),
            (2, 1, 1),
            (2, 3, 1),
            (4, 1, 3),
            (4, 3, 1),
            (8, 0, 8),
            (16, 2, 14),
        ] {
            assert_eq!(
                default_threads(cpus, local),
                want,
                "{cpus} CPUs, {local} local broker node(s)"
            );
        }
    }
}
