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
//!   connect(PATH) ─────────────────────────────▶ accept
//!                 ◀───────────────────────────── one message: JSON [{name, bind}, …]
//!                                                 + SCM_RIGHTS: the listening sockets
//!   start the gateway on those sockets
//!   (a bind address not handed over is bound
//!    afresh; a failed start sends nothing and
//!    leaves the old process running)
//!   "taken\n" ─────────────────────────────────▶ graceful shutdown, as on SIGTERM
//!   bind PATH.<pid>, chmod 0600, rename → PATH    (does not remove PATH: it is the new one's)
//! ```
//!
//! The socket file is created mode 0600: whoever can connect to it gets the listening
//! sockets. Every process started with `--handover PATH` serves the next one, so the
//! same command line works for every restart.

use anyhow::Context as _;
use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// At most this many listening sockets are handed over (far above any real config).
const MAX_FDS: usize = 64;
/// What the new process answers once it runs on the sockets.
const TAKEN: &[u8] = b"taken\n";

#[derive(Serialize, Deserialize)]
struct Entry {
    name: String,
    bind: SocketAddr,
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
/// stale file): no sockets, and the caller binds its own.
pub fn take(path: &Path) -> anyhow::Result<Inherited> {
    let mut conn = match UnixStream::connect(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(path = %path.display(), "handover: no running mqgate to take sockets from ({e})");
            return Ok(Inherited::none());
        }
    };
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .context("handover socket timeout")?;
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
    let entries: Vec<Entry> = serde_json::from_slice(&data[..len - 1])
        .with_context(|| format!("handover message from {}", path.display()))?;
    anyhow::ensure!(
        entries.len() == fds.len(),
        "handover: {} listeners described but {} sockets received",
        entries.len(),
        fds.len()
    );
    let mut sockets = HashMap::new();
    for (e, fd) in entries.into_iter().zip(fds) {
        let sock = TcpListener::from(fd);
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

/// Serve the next process on `path` until `stop`; once one has taken the sockets,
/// cancel `shutdown` (graceful shutdown, as on SIGTERM). `sockets` gives the current
/// listeners (name, bind, socket) at the time of the request.
pub fn serve(
    path: PathBuf,
    sockets: impl Fn() -> Vec<(String, SocketAddr, TcpListener)> + Send + Sync + 'static,
    shutdown: CancellationToken,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).with_context(|| format!("binding {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
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

async fn hand_over(
    conn: tokio::net::UnixStream,
    sockets: &impl Fn() -> Vec<(String, SocketAddr, TcpListener)>,
) -> anyhow::Result<()> {
    let conn = conn.into_std().context("handover connection")?;
    conn.set_nonblocking(false)
        .context("handover connection to blocking")?;
    // The new process confirms once its gateway runs (config, TLS, DNS): normally
    // well under a second.
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .context("handover socket timeout")?;
    let list = sockets();
    anyhow::ensure!(list.len() <= MAX_FDS, "more than {MAX_FDS} listeners");
    let entries: Vec<Entry> = list
        .iter()
        .map(|(name, bind, _)| Entry {
            name: name.clone(),
            bind: *bind,
        })
        .collect();
    // One JSON line (serde_json writes no newline of its own).
    let mut json = serde_json::to_vec(&entries).context("handover message")?;
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
