//! Listeners: bind client-facing sockets and run their accept loops.
//!
//! The accept loop does as little as possible: accept, apply the per-IP connection
//! rate (on listeners with `proxy_protocol`, `conn` applies it to the address the
//! PROXY header names instead), and hand one task per connection (`transport::handle`) to
//! the next connection thread (`crate::workers`); the task does the PROXY header, TLS
//! handshake and CONNECT read under their own deadlines. Accept errors
//! such as "too many open files" back off instead of spinning.

use crate::runtime::DataPath;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Bind a listening socket with a deep backlog (connect storms) and SO_REUSEADDR /
/// SO_REUSEPORT, so that a new mqgate process can bind the same port while the old one
/// drains (zero-downtime restart). TCP_NODELAY is set here once: Linux copies it to
/// every accepted socket, which saves a `setsockopt` per connection.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        let _ = s.set_only_v6(false);
    }
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Run the accept loop of listener `name` until `stop` is cancelled.
///
/// Sockets are accepted with `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)` and are not
/// registered with any runtime here: the connection thread that gets one
/// (`crate::workers`) registers it, once.
pub async fn accept_loop(
    data: Arc<DataPath>,
    name: String,
    listener: std::net::TcpListener,
    stop: CancellationToken,
) {
    let listener = match watch(Socket::from(listener)) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %name, error = %e, "cannot watch the listening socket; not accepting");
            return;
        }
    };
    let mut backoff = Duration::from_millis(5);
    // The two stop waits live across iterations: made anew in every `select!`, each
    // accepted connection would register and remove two waiters on shared tokens.
    let stopped = stop.cancelled();
    let stopping = data.stopping.cancelled();
    tokio::pin!(stopped, stopping);
    loop {
        let mut ready = tokio::select! {
            r = listener.readable() => match r {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(listener = %name, error = %e, "listening socket failed; not accepting");
                    break;
                }
            },
            _ = &mut stopped => break,
            _ = &mut stopping => break,
        };
        // Take what the kernel has queued, up to a batch, hand it out, then let other
        // tasks run.
        let mut batch = Vec::new();
        let (mut pause, mut emptied) = (false, false);
        for _ in 0..ACCEPT_BATCH {
            match accept(listener.get_ref()) {
                Ok((tcp, peer)) => {
                    backoff = Duration::from_millis(5);
                    batch.extend(admit(&data, &name, tcp, peer));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
                    emptied = true;
                    break;
                }
                Err(e) if is_resource_error(&e) => {
                    tracing::warn!(listener = %name, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed: out of resources; backing off");
                    pause = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(listener = %name, error = %e, "accept failed");
                }
            }
        }
        drop(ready);
        data.workers.spawn_many(&data.tracker, batch);
        if pause {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = &mut stopped => break,
                _ = &mut stopping => break,
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        } else if !emptied {
            // More may be queued: let this thread's connections run first.
            tokio::task::yield_now().await;
        }
    }
    // Closing a listening socket resets the connections still in its accept queue; with
    // SO_REUSEPORT a new process may be taking over this port. Serve what is queued now
    // (a non-blocking accept until the queue is empty), then close.
    let mut drained = 0usize;
    let listener = listener.into_inner();
    let mut batch = Vec::new();
    while let Ok((tcp, peer)) = accept(&listener) {
        batch.extend(admit(&data, &name, tcp, peer));
        drained += 1;
    }
    data.workers.spawn_many(&data.tracker, batch);
    tracing::debug!(listener = %name, drained, "listener stopped accepting");
}

/// Register a listening socket for readiness with the current runtime.
#[allow(unsafe_code)]
fn watch(listener: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: the `Socket` owns its descriptor and closes it only when dropped; the
    // `AsyncFd` owns the `Socket` (nothing else can close or replace the descriptor),
    // and `Socket::as_raw_fd` always returns that same descriptor.
    unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }.map_err(|e| e.into())
}

/// Connections taken per wake-up before the accept loop yields.
const ACCEPT_BATCH: usize = 64;

/// One non-blocking accept: the new socket is non-blocking and close-on-exec from the
/// start (no `fcntl` per connection).
fn accept(listener: &Socket) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    let (sock, addr) = listener.accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
    let peer = addr
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "peer is not an IP address"))?;
    Ok((sock.into(), peer))
}

/// The task for an accepted connection, to be run on a connection thread; none if
/// `per_ip_connect_rate` refuses it (the socket is closed here).
fn admit(
    data: &Arc<DataPath>,
    name: &str,
    tcp: std::net::TcpStream,
    peer: SocketAddr,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let rt = data.runtime();
    let lst = rt.listeners.get(name).cloned()?;
    // Behind a PROXY-protocol balancer every connection comes from the
    // balancer: the rate applies to the real client, once its header is read.
    if !lst.config.proxy_protocol
        && crate::transport::over_rate(data, name, peer, rt.config.limits.per_ip_connect_rate)
    {
        let now = tokio::time::Instant::now();
        crate::transport::log_early(data, &lst, peer, now, crate::metrics::Reject::Rate);
        return None;
    }
    let data = data.clone();
    Some(async move {
        // Registered with the epoll set of the thread it runs on.
        match TcpStream::from_std(tcp) {
            Ok(tcp) => crate::transport::handle(data, rt, lst, tcp, peer).await,
            Err(e) => {
                tracing::debug!(client.addr = %peer, error = %e, "cannot register the accepted socket")
            }
        }
    })
}

fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        l.set_nonblocking(false).unwrap();
        let addr = l.local_addr().unwrap();
        let _c = std::net::TcpStream::connect(addr).unwrap();
        let (a, _) = l.accept().unwrap();
        assert!(a.nodelay().unwrap(), "no per-connection setsockopt needed");
    }
}
