//! Listening-socket handover between an old and a new mqgate process (`mqgate run
//! --handover PATH`), for restarts that lose no connection attempt.
//!
//! With `SO_REUSEPORT` alone the new process binds its own sockets next to the old
//! ones; connections that the kernel already queued on the old socket when it closes
//! are reset (unless `net.ipv4.tcp_migrate_req = 1`). Handing over the very same
//! listening sockets avoids that: the accept queue belongs to the socket, and the socket
//! lives on in the new process when the old one closes its copy. HAProxy does the same
//! with `expose-fd listeners` and `-x`.
//!
//! ```text
//! new process                                   old process (listening on PATH)
//!   connect(PATH) ─────────────────────────────▶ accept; the client's uid (SO_PEERCRED)
//!   (the server's uid must be ours or root)       must be ours or root
//!   "mqgate-handover 2\n" ──────────────────────▶ within REQUEST_TIMEOUT, or dropped
//!                 ◀───────────────────────────── one message: JSON {"version": 2,
//!                                                 "listeners": [{name, bind}, …]}
//!                                                 + SCM_RIGHTS: the listening sockets
//!   check each one: a listening TCP socket
//!   bound to its `bind` (else refuse them all)
//!   start the gateway on those sockets
//!   (a bind address not handed over is bound
//!    afresh; a failed start sends nothing and
//!    leaves the old process running)
//!   "taken\n" ─────────────────────────────────▶ graceful shutdown, as on SIGTERM
//!   bind in a new 0700 directory, chmod 0600,     (does not remove PATH: it is the new one's)
//!   rename → PATH
//! ```
//!
//! Whoever can connect to the socket gets the listening sockets, so it is never
//! reachable with other permissions than 0600: it is bound inside a private directory
//! (mode 0700, random name, next to PATH), set to 0600 there and only then renamed to
//! PATH. A client of another user is refused on its credentials even if the file's mode
//! was loosened. The old process serves one client at a time; a client that does not
//! ask within [`REQUEST_TIMEOUT`] is dropped, so a stray or stuck connection cannot
//! hold a restart up. Every process started with `--handover PATH` serves the next one,
//! so the same command line works for every restart.
//!
//! Every failure is a [`HandoverError`] whose message names what was being done and
//! with which path, listener or process, its cause included.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

mod error;

/// At most this many listening sockets are handed over (far above any real config).
const MAX_FDS: usize = 64;
/// What the new process answers once it runs on the sockets.
const TAKEN: &[u8] = b"taken\n";
/// Version of this exchange. Version 1 (before the request) sent the sockets to
/// whoever connected, as a bare JSON list.
const PROTOCOL: u32 = 2;
/// What the new process asks first.
const REQUEST: &[u8] = b"mqgate-handover 2\n";
/// How long the old process waits for that request before dropping the client.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the new process waits for each read and write of the exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the old process waits for the new one to confirm (its gateway starts:
/// config, TLS, DNS; normally well under a second).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(120);

use error::socket;
pub use error::{HandoverError, SocketMismatch};

#[derive(Serialize, Deserialize)]
struct Entry {
    name: String,
    bind: SocketAddr,
}

/// The old process's one message (with the sockets attached).
#[derive(Serialize, Deserialize)]
struct Message {
    version: u32,
    listeners: Vec<Entry>,
}

/// Sockets received from the old process, by the bind address they were bound to.
pub struct Inherited {
    pub sockets: HashMap<SocketAddr, TcpListener>,
    /// Told "taken" once the new gateway runs; dropped without it, the old one stays.
    conn: Option<UnixStream>,
}

impl Inherited {
    pub fn none() -> Self {
        Inherited {
            sockets: HashMap::new(),
            conn: None,
        }
    }

    /// Tell the old process that this one runs on its sockets: it shuts down.
    pub fn confirm(&mut self) {
        if let Some(mut c) = self.conn.take() {
            match c.write_all(TAKEN) {
                Ok(()) => tracing::info!("handover: the old process was told to shut down"),
                Err(e) => tracing::warn!("handover: cannot confirm to the old process: {e}"),
            }
        }
    }
}

/// Ask the process serving `path` for its listening sockets. Nobody there (no file, a
/// stale file): no sockets, and the caller binds its own. Anything wrong with what is
/// there (another user's process, a message or a socket that is not what it should be)
/// is an error: nothing is confirmed, and the old process keeps serving.
pub fn take(path: &Path) -> Result<Inherited, HandoverError> {
    let mut conn = match UnixStream::connect(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(path = %path.display(), "handover: no running mqgate to take sockets from ({e})");
            return Ok(Inherited::none());
        }
    };
    let server = rustix::net::sockopt::socket_peercred(&conn).map_err(|error| {
        HandoverError::ServerCredentials {
            path: path.to_path_buf(),
            error,
        }
    })?;
    if !uid_allowed(server.uid) {
        return Err(HandoverError::ServerUser {
            path: path.to_path_buf(),
            pid: server.pid.as_raw_nonzero().get(),
            uid: server.uid.as_raw(),
            ours: rustix::process::geteuid().as_raw(),
        });
    }
    conn.set_read_timeout(Some(EXCHANGE_TIMEOUT))
        .map_err(socket(
            "setting the read timeout of the handover connection",
        ))?;
    conn.set_write_timeout(Some(EXCHANGE_TIMEOUT))
        .map_err(socket(
            "setting the write timeout of the handover connection",
        ))?;
    conn.write_all(REQUEST)
        .map_err(|error| HandoverError::Ask {
            path: path.to_path_buf(),
            error,
        })?;
    let mut data = vec![0u8; 64 * 1024];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &conn,
        &mut [IoSliceMut::new(&mut data)],
        &mut cmsg,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|error| HandoverError::Receive {
        path: path.to_path_buf(),
        error,
    })?;
    let mut fds = Vec::new();
    for msg in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    if got.flags.contains(ReturnFlags::CTRUNC) {
        return Err(HandoverError::TooManySockets {
            path: path.to_path_buf(),
        });
    }
    // The descriptors come with the first bytes; the JSON line may arrive in pieces.
    let mut len = got.bytes;
    while len == 0 || data[len - 1] != b'\n' {
        if len >= data.len() {
            return Err(HandoverError::MessageTooLong {
                path: path.to_path_buf(),
                limit: data.len(),
            });
        }
        let n = conn
            .read(&mut data[len..])
            .map_err(|error| HandoverError::ReadMessage {
                path: path.to_path_buf(),
                error,
            })?;
        if n == 0 {
            return Err(HandoverError::Closed {
                path: path.to_path_buf(),
            });
        }
        len += n;
    }
    let msg = parse_message(path, &data[..len - 1])?;
    if msg.listeners.len() != fds.len() {
        return Err(HandoverError::Count {
            described: msg.listeners.len(),
            received: fds.len(),
        });
    }
    let mut sockets = HashMap::new();
    for (e, fd) in msg.listeners.into_iter().zip(fds) {
        let sock = match listening_socket(fd, e.bind) {
            Ok(s) => s,
            Err(why) => {
                return Err(HandoverError::NotListening {
                    listener: e.name,
                    bind: e.bind,
                    why,
                })
            }
        };
        sock.set_nonblocking(true)
            .map_err(socket("setting a received socket non-blocking"))?;
        // Accepted sockets inherit TCP_NODELAY from the listener (`listener::bind`);
        // set it again in case the previous process did not.
        socket2::SockRef::from(&sock)
            .set_nodelay(true)
            .map_err(socket("setting TCP_NODELAY on a received socket"))?;
        tracing::info!(listener = %e.name, bind = %e.bind, "handover: listening socket received");
        sockets.insert(e.bind, sock);
    }
    Ok(Inherited {
        sockets,
        conn: Some(conn),
    })
}

/// The old process's message (its JSON line without the newline), of this protocol.
fn parse_message(path: &Path, text: &[u8]) -> Result<Message, HandoverError> {
    let msg: Message = match serde_json::from_slice(text) {
        Ok(m) => m,
        Err(_) if serde_json::from_slice::<Vec<Entry>>(text).is_ok() => {
            return Err(HandoverError::OldProtocol {
                path: path.to_path_buf(),
            })
        }
        Err(error) => {
            return Err(HandoverError::BadMessage {
                path: path.to_path_buf(),
                error,
            })
        }
    };
    if msg.version != PROTOCOL {
        return Err(HandoverError::Protocol {
            path: path.to_path_buf(),
            theirs: msg.version,
        });
    }
    Ok(msg)
}

/// Whether a process of user `uid` may take part in a handover with this one: the same
/// (effective) user, or root.
fn uid_allowed(uid: rustix::process::Uid) -> bool {
    uid == rustix::process::geteuid() || uid.is_root()
}

/// `fd` as a listener, if it is a listening TCP socket bound to `bind` (to any port if
/// `bind`'s is 0); else why not.
fn listening_socket(fd: OwnedFd, bind: SocketAddr) -> Result<TcpListener, SocketMismatch> {
    use rustix::net::{ipproto, sockopt, AddressFamily, SocketType};
    let query = |option| move |error| SocketMismatch::Query { option, error };
    let kind = match sockopt::socket_type(&fd) {
        Ok(t) => t,
        Err(Errno::NOTSOCK) => return Err(SocketMismatch::NotASocket),
        Err(e) => return Err(query("SO_TYPE")(e)),
    };
    if kind != SocketType::STREAM {
        return Err(SocketMismatch::NotStream);
    }
    let family = sockopt::socket_domain(&fd).map_err(query("SO_DOMAIN"))?;
    let (want, name) = if bind.is_ipv6() {
        (AddressFamily::INET6, "IPv6")
    } else {
        (AddressFamily::INET, "IPv4")
    };
    if family != want {
        return Err(SocketMismatch::Family(name));
    }
    let protocol = sockopt::socket_protocol(&fd).map_err(query("SO_PROTOCOL"))?;
    if protocol != Some(ipproto::TCP) {
        return Err(SocketMismatch::NotTcp);
    }
    if !sockopt::socket_acceptconn(&fd).map_err(query("SO_ACCEPTCONN"))? {
        return Err(SocketMismatch::NotListening);
    }
    let sock = TcpListener::from(fd);
    let local = sock
        .local_addr()
        .map_err(|error| SocketMismatch::LocalAddr { error })?;
    if local.ip() != bind.ip() || (bind.port() != 0 && local.port() != bind.port()) {
        return Err(SocketMismatch::Address { local, bind });
    }
    Ok(sock)
}

/// Serve the next process on `path` until `stop`; once one has taken the sockets,
/// cancel `shutdown` (graceful shutdown, as on SIGTERM). `sockets` gives the current
/// listeners (name, bind, socket) at the time of the request. Must be called within a
/// tokio runtime.
pub fn serve(
    path: PathBuf,
    sockets: impl Fn() -> Vec<(String, SocketAddr, TcpListener)> + Send + Sync + 'static,
    shutdown: CancellationToken,
    stop: CancellationToken,
) -> Result<(), HandoverError> {
    let listener = bind_private(&path)?;
    let ino = std::fs::metadata(&path).map(|m| m.ino()).ok();
    listener
        .set_nonblocking(true)
        .map_err(socket("setting the handover listener non-blocking"))?;
    let listener = tokio::net::UnixListener::from_std(listener)
        .map_err(socket("registering the handover listener with the runtime"))?;
    tracing::info!(path = %path.display(), "handover: serving the listening sockets to the next process");
    tokio::spawn(async move {
        let handed = loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = stop.cancelled() => break false,
            };
            match conn {
                Ok((c, _)) => match hand_over(c, &sockets).await {
                    Ok(()) => break true,
                    Err(e) => tracing::warn!("handover: {e}"),
                },
                Err(e) => {
                    tracing::warn!("handover: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        if handed {
            tracing::info!("handover: the new process runs on our sockets; shutting down");
            shutdown.cancel();
        } else if std::fs::metadata(&path).map(|m| m.ino()).ok() == ino {
            // Still our file (no successor replaced it): remove it.
            let _ = std::fs::remove_file(&path);
        }
    });
    Ok(())
}

/// Bind a Unix socket at `path` that is never reachable with other permissions than
/// 0600, whatever the umask: bound in a new directory of mode 0700 next to `path` (a
/// random name, created exclusively), set to 0600 there, then renamed to `path`.
fn bind_private(path: &Path) -> Result<UnixListener, HandoverError> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = parent.join(format!(".mqgate.{:016x}", rand::random::<u64>()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|error| HandoverError::PrivateDir {
            dir: dir.clone(),
            error,
        })?;
    let tmp = dir.join("s");
    let bound = bind_and_move(&tmp, path);
    if bound.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    if let Err(e) = std::fs::remove_dir(&dir) {
        tracing::warn!(dir = %dir.display(), "handover: cannot remove the private directory: {e}");
    }
    bound
}

/// [`bind_private`]'s steps inside the private directory: bind `tmp`, chmod 0600,
/// rename to `path`.
fn bind_and_move(tmp: &Path, path: &Path) -> Result<UnixListener, HandoverError> {
    let listener = UnixListener::bind(tmp).map_err(|error| HandoverError::Bind {
        path: tmp.to_path_buf(),
        error,
    })?;
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o600)).map_err(|error| {
        HandoverError::Chmod {
            path: tmp.to_path_buf(),
            error,
        }
    })?;
    std::fs::rename(tmp, path).map_err(|error| HandoverError::Rename {
        from: tmp.to_path_buf(),
        to: path.to_path_buf(),
        error,
    })?;
    Ok(listener)
}

/// Serve one client: its credentials, its request (within [`REQUEST_TIMEOUT`]), the
/// sockets, its confirmation. An error leaves the sockets with this process.
async fn hand_over(
    mut conn: tokio::net::UnixStream,
    sockets: &impl Fn() -> Vec<(String, SocketAddr, TcpListener)>,
) -> Result<(), HandoverError> {
    let client = rustix::net::sockopt::socket_peercred(&conn)
        .map_err(|error| HandoverError::ClientCredentials { error })?;
    let pid = client.pid.as_raw_nonzero().get();
    if !uid_allowed(client.uid) {
        return Err(HandoverError::ClientUser {
            pid,
            uid: client.uid.as_raw(),
            ours: rustix::process::geteuid().as_raw(),
        });
    }
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut conn)).await {
        Ok(r) => r.map_err(|error| HandoverError::ReadRequest { pid, error })?,
        Err(_) => return Err(HandoverError::NoRequest { pid }),
    };
    if request != REQUEST {
        return Err(HandoverError::BadRequest {
            pid,
            request: String::from_utf8_lossy(&request).into_owned(),
        });
    }
    let conn = conn
        .into_std()
        .map_err(socket("taking the handover connection out of the runtime"))?;
    conn.set_nonblocking(false)
        .map_err(socket("setting the handover connection blocking"))?;
    conn.set_read_timeout(Some(CONFIRM_TIMEOUT))
        .map_err(socket(
            "setting the read timeout of the handover connection",
        ))?;
    let list = sockets();
    if list.len() > MAX_FDS {
        return Err(HandoverError::TooManyListeners { count: list.len() });
    }
    let message = Message {
        version: PROTOCOL,
        listeners: list
            .iter()
            .map(|(name, bind, _)| Entry {
                name: name.clone(),
                bind: *bind,
            })
            .collect(),
    };
    // One JSON line (serde_json writes no newline of its own).
    let mut json = serde_json::to_vec(&message).map_err(|error| HandoverError::Encode { error })?;
    json.push(b'\n');
    let conn = tokio::task::spawn_blocking(move || send_and_confirm(conn, &list, &json))
        .await
        .map_err(|error| HandoverError::Task { error })??;
    drop(conn);
    Ok(())
}

/// Send the message with the sockets attached, then wait for the new process to say
/// it took them (blocking, within the connection's read timeout).
fn send_and_confirm(
    conn: UnixStream,
    list: &[(String, SocketAddr, TcpListener)],
    json: &[u8],
) -> Result<UnixStream, HandoverError> {
    use std::os::fd::AsFd;
    let fds: Vec<_> = list.iter().map(|(_, _, s)| s.as_fd()).collect();
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !cmsg.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(HandoverError::TooManyListeners { count: fds.len() });
    }
    rustix::net::sendmsg(&conn, &[IoSlice::new(json)], &mut cmsg, SendFlags::empty())
        .map_err(|error| HandoverError::Send { error })?;
    tracing::info!(
        listeners = list.len(),
        "handover: listening sockets sent; waiting for the new process to confirm"
    );
    let mut reply = [0u8; TAKEN.len()];
    (&conn)
        .read_exact(&mut reply)
        .map_err(|error| HandoverError::NoConfirmation { error })?;
    if reply != TAKEN {
        return Err(HandoverError::BadReply {
            reply: String::from_utf8_lossy(&reply).into_owned(),
        });
    }
    Ok(conn)
}

/// The client's request: up to its newline (or 64 bytes).
async fn read_request(conn: &mut tokio::net::UnixStream) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 64];
    let mut len = 0;
    while !buf[..len].contains(&b'\n') && len < buf.len() {
        let n = conn.read(&mut buf[len..]).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before its request",
            ));
        }
        len += n;
    }
    Ok(buf[..len].to_vec())
}

#[cfg(test)]
mod tests;
