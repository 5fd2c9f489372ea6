//! Why a handover failed, on either side.

use super::{MAX_FDS, PROTOCOL, REQUEST_TIMEOUT};
use rustix::io::Errno;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a handover failed, on either side. The cause is part of each message (not a
/// `source`), so that `{:#}` chains do not print it twice (as `gateway::ApplyError`).
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    // ---- the new process (`take`) ----
    #[error("reading the credentials of the process serving {}: {error}", path.display())]
    ServerCredentials { path: PathBuf, error: Errno },
    #[error(
        "the process serving {} (pid {pid}) runs as uid {uid}: only our own user (uid {ours}) \
         or root may hand sockets over",
        path.display()
    )]
    ServerUser {
        path: PathBuf,
        pid: i32,
        uid: u32,
        ours: u32,
    },
    #[error("asking {} for the listening sockets: {error}", path.display())]
    Ask {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("receiving sockets from {}: {error}", path.display())]
    Receive { path: PathBuf, error: Errno },
    #[error("handover: more than {MAX_FDS} sockets sent by {}; refusing the handover", path.display())]
    TooManySockets { path: PathBuf },
    #[error("handover message from {} is longer than {limit} bytes", path.display())]
    MessageTooLong { path: PathBuf, limit: usize },
    #[error("reading the handover message from {}: {error}", path.display())]
    ReadMessage {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("handover: the old process serving {} closed the connection", path.display())]
    Closed { path: PathBuf },
    #[error(
        "handover: the process serving {} is an older mqgate (handover protocol 1, which \
         sends the sockets unasked); restart once without --handover (SO_REUSEPORT \
         overlap, docs/hardening.md), then --handover works again",
        path.display()
    )]
    OldProtocol { path: PathBuf },
    #[error("handover message from {}: {error}", path.display())]
    BadMessage {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("handover: {} speaks handover protocol {theirs}, this build {PROTOCOL}", path.display())]
    Protocol { path: PathBuf, theirs: u32 },
    #[error("handover: {described} listeners described but {received} sockets received")]
    Count { described: usize, received: usize },
    #[error(
        "handover: the socket received for listener `{listener}` ({bind}) is not a listening \
         TCP socket bound to that address; refusing the handover: {why}"
    )]
    NotListening {
        listener: String,
        bind: SocketAddr,
        why: SocketMismatch,
    },

    // ---- the old process (`serve`) ----
    #[error("creating the private directory {}: {error}", dir.display())]
    PrivateDir { dir: PathBuf, error: std::io::Error },
    #[error("binding {}: {error}", path.display())]
    Bind {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("chmod 0600 {}: {error}", path.display())]
    Chmod {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("renaming {} to {}: {error}", from.display(), to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        error: std::io::Error,
    },
    #[error("reading the client's credentials: {error}")]
    ClientCredentials { error: Errno },
    #[error(
        "refused a connection from uid {uid} (pid {pid}): only our own user (uid {ours}) or \
         root may take the listening sockets"
    )]
    ClientUser { pid: i32, uid: u32, ours: u32 },
    #[error("reading the request of pid {pid}: {error}")]
    ReadRequest { pid: i32, error: std::io::Error },
    #[error("a client (pid {pid}) sent no request within {REQUEST_TIMEOUT:?}; dropped it")]
    NoRequest { pid: i32 },
    #[error("unexpected request from pid {pid}: {request:?}; dropped it")]
    BadRequest { pid: i32, request: String },
    #[error("{count} listeners, more than the {MAX_FDS} sockets one handover can carry")]
    TooManyListeners { count: usize },
    #[error("encoding the handover message: {error}")]
    Encode { error: serde_json::Error },
    #[error("sending the listening sockets: {error}")]
    Send { error: Errno },
    #[error("the new process did not confirm (its start failed?); still serving: {error}")]
    NoConfirmation { error: std::io::Error },
    #[error("the new process replied {reply:?} instead of confirming; still serving")]
    BadReply { reply: String },
    #[error("the handover task failed: {error}")]
    Task { error: tokio::task::JoinError },

    // ---- either side ----
    /// Setting up a socket of the exchange (timeouts, blocking mode, TCP_NODELAY).
    #[error("handover: {what}: {error}")]
    Socket {
        what: &'static str,
        error: std::io::Error,
    },
}

/// Why a received descriptor is not the listening socket it was described as.
#[derive(Debug, thiserror::Error)]
pub enum SocketMismatch {
    #[error("not a socket")]
    NotASocket,
    #[error("not a stream socket")]
    NotStream,
    #[error("not an {0} socket")]
    Family(&'static str),
    #[error("not TCP")]
    NotTcp,
    #[error("not listening")]
    NotListening,
    #[error("bound to {local}, not {bind}")]
    Address { local: SocketAddr, bind: SocketAddr },
    #[error("reading {option}: {error}")]
    Query { option: &'static str, error: Errno },
    #[error("reading its address: {error}")]
    LocalAddr { error: std::io::Error },
}

/// A [`HandoverError::Socket`] for `what`.
pub(super) fn socket(what: &'static str) -> impl FnOnce(std::io::Error) -> HandoverError {
    move |error| HandoverError::Socket { what, error }
}
