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

use anyhow::Context as _;
use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

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
pub fn take(path: &Path) -> anyhow::Result<Inherited> {
    let mut conn = match UnixStream::connect(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(path = %path.display(), "handover: no running mqgate to take sockets from ({e})");
            return Ok(Inherited::none());
        }
    };
    let server = rustix::net::sockopt::socket_peercred(&conn).with_context(|| {
        format!(
            "reading the credentials of the process serving {}",
            path.display()
        )
    })?;
    anyhow::ensure!(
        uid_allowed(server.uid),
        "the process serving {} (pid {}) runs as uid {}: only our own user (uid {}) or root may hand sockets over",
        path.display(),
        server.pid,
        server.uid.as_raw(),
        rustix::process::geteuid().as_raw()
    );
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .context("handover socket timeout")?;
    conn.set_write_timeout(Some(Duration::from_secs(10)))
        .context("handover socket timeout")?;
    conn.write_all(REQUEST)
        .with_context(|| format!("asking {} for the listening sockets", path.display()))?;
    let mut data = vec![0u8; 64 * 1024];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &conn,
        &mut [IoSliceMut::new(&mut data)],
        &mut cmsg,
        RecvFlags::CMSG_CLOEXEC,
    )
    .with_context(|| format!("receiving sockets from {}", path.display()))?;
    let mut fds = Vec::new();
    for msg in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    anyhow::ensure!(
        !got.flags.contains(ReturnFlags::CTRUNC),
        "handover: more than {MAX_FDS} sockets sent; refusing the handover"
    );
    // The descriptors come with the first bytes; the JSON line may arrive in pieces.
    let mut len = got.bytes;
    while len == 0 || data[len - 1] != b'\n' {
        anyhow::ensure!(len < data.len(), "handover message too long");
        let n = conn
            .read(&mut data[len..])
            .with_context(|| format!("reading the handover message from {}", path.display()))?;
        anyhow::ensure!(n > 0, "handover: the old process closed the connection");
        len += n;
    }
    let text = &data[..len - 1];
    let msg: Message = match serde_json::from_slice(text) {
        Ok(m) => m,
        Err(_) if serde_json::from_slice::<Vec<Entry>>(text).is_ok() => anyhow::bail!(
            "handover: the process serving {} is an older mqgate (handover protocol 1, which \
             sends the sockets unasked); restart once without --handover (SO_REUSEPORT \
             overlap, docs/hardening.md), then --handover works again",
            path.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("handover message from {}", path.display()))
        }
    };
    anyhow::ensure!(
        msg.version == PROTOCOL,
        "handover: {} speaks handover protocol {}, this build {PROTOCOL}",
        path.display(),
        msg.version
    );
    anyhow::ensure!(
        msg.listeners.len() == fds.len(),
        "handover: {} listeners described but {} sockets received",
        msg.listeners.len(),
        fds.len()
    );
    let mut sockets = HashMap::new();
    for (e, fd) in msg.listeners.into_iter().zip(fds) {
        let sock = listening_socket(fd, e.bind).with_context(|| {
            format!(
                "handover: the socket received for listener `{}` ({}) is not a listening TCP \
                 socket bound to that address; refusing the handover",
                e.name, e.bind
            )
        })?;
        sock.set_nonblocking(true)
            .context("handover: socket to non-blocking")?;
        // Accepted sockets inherit TCP_NODELAY from the listener (`listener::bind`);
        // set it again in case the previous process did not.
        socket2::SockRef::from(&sock)
            .set_nodelay(true)
            .context("handover: TCP_NODELAY")?;
        tracing::info!(listener = %e.name, bind = %e.bind, "handover: listening socket received");
        sockets.insert(e.bind, sock);
    }
    Ok(Inherited {
        sockets,
        conn: Some(conn),
    })
}

/// Whether a process of user `uid` may take part in a handover with this one: the same
/// (effective) user, or root.
fn uid_allowed(uid: rustix::process::Uid) -> bool {
    uid == rustix::process::geteuid() || uid.is_root()
}

/// `fd` as a listener, if it is a listening TCP socket bound to `bind` (to any port if
/// `bind`'s is 0); else why not.
fn listening_socket(fd: OwnedFd, bind: SocketAddr) -> anyhow::Result<TcpListener> {
    use rustix::net::{ipproto, sockopt, AddressFamily, SocketType};
    let kind = match sockopt::socket_type(&fd) {
        Ok(t) => t,
        Err(rustix::io::Errno::NOTSOCK) => anyhow::bail!("not a socket"),
        Err(e) => return Err(e).context("reading SO_TYPE"),
    };
    anyhow::ensure!(kind == SocketType::STREAM, "not a stream socket");
    let family = sockopt::socket_domain(&fd).context("reading SO_DOMAIN")?;
    let want = if bind.is_ipv6() {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    anyhow::ensure!(
        family == want,
        "not an {} socket",
        if bind.is_ipv6() { "IPv6" } else { "IPv4" }
    );
    let protocol = sockopt::socket_protocol(&fd).context("reading SO_PROTOCOL")?;
    anyhow::ensure!(protocol == Some(ipproto::TCP), "not TCP");
    anyhow::ensure!(
        sockopt::socket_acceptconn(&fd).context("reading SO_ACCEPTCONN")?,
        "not listening"
    );
    let sock = TcpListener::from(fd);
    let local = sock.local_addr().context("reading its address")?;
    anyhow::ensure!(
        local.ip() == bind.ip() && (bind.port() == 0 || local.port() == bind.port()),
        "bound to {local}, not {bind}"
    );
    Ok(sock)
}

/// Serve the next process on `path` until `stop`; once one has taken the sockets,
/// cancel `shutdown` (graceful shutdown, as on SIGTERM). `sockets` gives the current
/// listeners (name, bind, socket) at the time of the request.
pub fn serve(
    path: PathBuf,
    sockets: impl Fn() -> Vec<(String, SocketAddr, TcpListener)> + Send + Sync + 'static,
    shutdown: CancellationToken,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let listener = bind_private(&path)?;
    let ino = std::fs::metadata(&path).map(|m| m.ino()).ok();
    listener
        .set_nonblocking(true)
        .context("handover listener to non-blocking")?;
    let listener = tokio::net::UnixListener::from_std(listener).context("handover listener")?;
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
                    Err(e) => tracing::warn!("handover: {e:#}"),
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
fn bind_private(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = parent.join(format!(".mqgate.{:016x}", rand::random::<u64>()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating the private directory {}", dir.display()))?;
    let tmp = dir.join("s");
    let bound = (|| {
        let listener =
            UnixListener::bind(&tmp).with_context(|| format!("binding {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(listener)
    })();
    if bound.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    if let Err(e) = std::fs::remove_dir(&dir) {
        tracing::warn!(dir = %dir.display(), "handover: cannot remove the private directory: {e}");
    }
    bound
}

/// Serve one client: its credentials, its request (within [`REQUEST_TIMEOUT`]), the
/// sockets, its confirmation. An error leaves the sockets with this process.
async fn hand_over(
    mut conn: tokio::net::UnixStream,
    sockets: &impl Fn() -> Vec<(String, SocketAddr, TcpListener)>,
) -> anyhow::Result<()> {
    let client =
        rustix::net::sockopt::socket_peercred(&conn).context("reading the client's credentials")?;
    anyhow::ensure!(
        uid_allowed(client.uid),
        "refused a connection from uid {} (pid {}): only our own user (uid {}) or root may \
         take the listening sockets",
        client.uid.as_raw(),
        client.pid,
        rustix::process::geteuid().as_raw()
    );
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut conn)).await {
        Ok(r) => r.with_context(|| format!("reading the request of pid {}", client.pid))?,
        Err(_) => anyhow::bail!(
            "a client (pid {}) sent no request within {REQUEST_TIMEOUT:?}; dropped it",
            client.pid
        ),
    };
    anyhow::ensure!(
        request == REQUEST,
        "unexpected request from pid {}: {:?}; dropped it",
        client.pid,
        String::from_utf8_lossy(&request)
    );
    let conn = conn.into_std().context("handover connection")?;
    conn.set_nonblocking(false)
        .context("handover connection to blocking")?;
    // The new process confirms once its gateway runs (config, TLS, DNS): normally
    // well under a second.
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .context("handover socket timeout")?;
    let list = sockets();
    anyhow::ensure!(list.len() <= MAX_FDS, "more than {MAX_FDS} listeners");
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
    let mut json = serde_json::to_vec(&message).context("handover message")?;
    json.push(b'\n');
    let conn = tokio::task::spawn_blocking(move || -> anyhow::Result<UnixStream> {
        use std::os::fd::AsFd;
        let fds: Vec<_> = list.iter().map(|(_, _, s)| s.as_fd()).collect();
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut cmsg = SendAncillaryBuffer::new(&mut space);
        anyhow::ensure!(
            cmsg.push(SendAncillaryMessage::ScmRights(&fds)),
            "too many sockets for one message"
        );
        rustix::net::sendmsg(&conn, &[IoSlice::new(&json)], &mut cmsg, SendFlags::empty())
            .context("sending the listening sockets")?;
        tracing::info!(
            listeners = list.len(),
            "handover: listening sockets sent; waiting for the new process to confirm"
        );
        let mut reply = [0u8; 6];
        let mut c = &conn;
        c.read_exact(&mut reply)
            .context("the new process did not confirm (its start failed?); still serving")?;
        anyhow::ensure!(reply == TAKEN, "unexpected reply {reply:?}");
        Ok(conn)
    })
    .await
    .context("handover task")??;
    drop(conn);
    Ok(())
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
