//! The access log (HAProxy's `option tcplog`, with MQTT fields): one line per finished
//! session and per refused connection, to stderr, a file or the local syslog socket
//! (`[log] access`), as text (logfmt) or JSON (`[log] access_format`).
//!
//! Cost when off: a connection asks [`AccessLog::sink`] once (one relaxed atomic
//! load) and carries `None`; nothing is formatted or allocated. When on, a relayed
//! session carries one boxed [`Entry`] (its fields so far), finished when the relay
//! ends ([`Entry::finish`]) and sent over a bounded channel to one writer thread
//! (`writer`): a connection task never waits for the disk or the syslog daemon. A
//! full channel drops the line and counts it (`mqgate_access_log_dropped_total`).
//!
//! Files are reopened on SIGUSR1 and on every reload (logrotate: rename, then signal).

mod format;
mod writer;

use crate::config::{AccessTarget, LogFormat};
use crate::metrics::Reject;
use crate::mqtt::Connect;
use crate::proxy::TlsInfo;
use prometheus::IntCounter;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use format::{format_json, format_text};

/// Lines waiting for the writer at most; beyond, lines are dropped and counted.
const QUEUE: usize = 16 * 1024;

/// Client-chosen strings (client id, username) are cut to this many bytes in a line.
pub const MAX_FIELD: usize = 256;

/// Why a session ended, or that it was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The client closed (its FIN reached the broker first).
    Client,
    /// The broker closed first.
    Broker,
    /// The client's connection failed (reset, write error).
    ClientError,
    /// The broker's connection failed.
    BrokerError,
    /// The node was marked down (`on_node_down = "disconnect"`).
    NodeDown,
    /// The node was put in maintenance.
    Maint,
    /// Full-sync: the node stopped being the leader.
    LeaderChange,
    /// The node (or its cluster) was removed by a reload.
    NodeRemoved,
    /// A cluster rebalance (by counts or by hash) moved the session to another node.
    Rebalance,
    /// The listener was removed by a reload.
    ListenerRemoved,
    /// The shutdown grace ended.
    Shutdown,
    /// One side closed and the other did not follow within 5 s.
    Linger,
    /// The broker sent no CONNACK within `connack_timeout`.
    ConnackTimeout,
    /// Refused before relaying; the reason is in [`Record::reject`].
    Rejected,
    /// A newer connection with the client id went live (`single_live`).
    TakenOver,
    /// Fan-out sessions: the client was silent past 1.5 × its keep-alive.
    KeepAlive,
    /// Fan-out sessions: the client sent a malformed packet.
    Malformed,
    /// Fan-out sessions: the client sent a packet a client may not send there.
    Protocol,
    /// Fan-out sessions: the client sent a packet over `max_packet_size`.
    TooLarge,
}

impl Close {
    pub fn as_str(self) -> &'static str {
        match self {
            Close::Client => "client",
            Close::Broker => "broker",
            Close::ClientError => "client_error",
            Close::BrokerError => "broker_error",
            Close::NodeDown => "node_down",
            Close::Maint => "maint",
            Close::LeaderChange => "leader_change",
            Close::Rebalance => "rebalance",
            Close::NodeRemoved => "node_removed",
            Close::ListenerRemoved => "listener_removed",
            Close::Shutdown => "shutdown",
            Close::Linger => "linger_timeout",
            Close::ConnackTimeout => "connack_timeout",
            Close::Rejected => "rejected",
            Close::TakenOver => "taken_over",
            Close::KeepAlive => "keepalive",
            Close::Malformed => "malformed",
            Close::Protocol => "protocol",
            Close::TooLarge => "too_large",
        }
    }
}

/// The CONNACK a session got: the broker's code, mqgate's own refusal, or none in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnackSeen {
    Code(u8),
    /// The broker's first packet was not a CONNACK.
    Invalid,
    Timeout,
}

/// One access-log line's fields.
#[derive(Debug, Clone)]
pub struct Record {
    /// When the connection was accepted.
    pub start: SystemTime,
    pub listener: String,
    /// The client's address (the real one behind a PROXY header).
    pub client: SocketAddr,
    pub tls: Option<TlsInfo>,
    pub protocol: Option<&'static str>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub cluster: String,
    pub node: Option<String>,
    pub connack: Option<ConnackSeen>,
    pub to_broker: u64,
    pub to_client: u64,
    pub duration: Duration,
    pub close: Close,
    pub reject: Option<&'static str>,
}

/// A client-chosen string cut to [`MAX_FIELD`] bytes (at a character boundary).
fn capped(s: &str) -> String {
    if s.len() <= MAX_FIELD {
        return s.to_string();
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Where a connection sends its line: the channel to the writer and the drop counter.
#[derive(Clone)]
pub struct Sink {
    tx: SyncSender<Record>,
    dropped: IntCounter,
}

impl Sink {
    fn send(&self, r: Record) {
        match self.tx.try_send(r) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

/// The process's access log (in [`crate::runtime::DataPath`]).
pub struct AccessLog {
    enabled: AtomicBool,
    state: Arc<writer::Shared>,
    /// The queue to the writer thread, and the thread, once started.
    writer: OnceLock<(SyncSender<Record>, std::thread::Thread)>,
    dropped: IntCounter,
}

impl AccessLog {
    pub fn new(dropped: IntCounter) -> Self {
        AccessLog {
            enabled: AtomicBool::new(false),
            state: Arc::new(writer::Shared::default()),
            writer: OnceLock::new(),
            dropped,
        }
    }

    /// Apply `[log] access` / `access_format` (start-up and every reload): the
    /// writer reopens its target. The writer thread starts the first time the log is on.
    pub fn configure(&self, target: &AccessTarget, format: LogFormat) {
        self.state.set(target.clone(), format);
        if !target.is_off() && self.writer.get().is_none() {
            let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
            match writer::spawn(self.state.clone(), rx, self.dropped.clone()) {
                Ok(thread) => {
                    let _ = self.writer.set((tx, thread));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the access-log writer thread; access log off");
                    return;
                }
            }
        }
        self.enabled.store(!target.is_off(), Ordering::Relaxed);
    }

    /// The gateway is stopping: write and flush every line queued so far, waiting up
    /// to `wait` (no-op if the log was never on).
    pub fn close(&self, wait: std::time::Duration) {
        if let Some((_, thread)) = self.writer.get() {
            self.state.close(thread, wait);
        }
    }

    /// Reopen the target (SIGUSR1: after logrotate renamed the file).
    pub fn reopen(&self) {
        self.state.reopen();
    }

    /// The access log is on (one relaxed atomic load).
    #[inline]
    pub fn is_on(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The sink a connection logs through, `None` when the access log is off.
    #[inline]
    pub fn sink(&self) -> Option<Sink> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        self.writer.get().map(|(tx, _)| Sink {
            tx: tx.clone(),
            dropped: self.dropped.clone(),
        })
    }

    /// Log a connection refused before it was relayed (no-op when off).
    pub fn refused(&self, r: Refusal<'_>) {
        let Some(sink) = self.sink() else {
            return;
        };
        let duration = r.accepted.elapsed();
        sink.send(Record {
            start: SystemTime::now() - duration,
            listener: r.listener.to_string(),
            client: r.peer,
            tls: r.tls.cloned(),
            protocol: r.connect.map(|c| c.version.as_str()),
            client_id: r.connect.map(|c| capped(c.client_id)),
            username: r.connect.and_then(|c| c.username.map(capped)),
            cluster: r.cluster.to_string(),
            node: None,
            connack: r.connack.map(ConnackSeen::Code),
            to_broker: 0,
            to_client: 0,
            duration,
            close: Close::Rejected,
            reject: Some(r.reason.as_str()),
        });
    }
}

/// What is known of a refused connection.
pub struct Refusal<'a> {
    pub listener: &'a str,
    pub cluster: &'a str,
    pub peer: SocketAddr,
    pub accepted: Instant,
    pub tls: Option<&'a TlsInfo>,
    pub connect: Option<&'a Connect<'a>>,
    pub reason: Reject,
    /// mqgate's own CONNACK to the client, if it sent one.
    pub connack: Option<u8>,
}

/// A relayed session's line in the making (boxed in the relay task's `Keep`).
pub struct Entry {
    rec: Record,
    accepted: Instant,
    sink: Sink,
    /// The gateway's shutdown: tells a shutdown close from a listener removal.
    stopping: CancellationToken,
    /// Set when the relay knows why it ended.
    pub close: Option<Close>,
}

/// What the session set-up knows when the relay starts.
pub struct Started<'a> {
    pub listener: &'a str,
    pub cluster: &'a str,
    pub node: &'a str,
    pub peer: SocketAddr,
    pub accepted: Instant,
    pub tls: Option<&'a TlsInfo>,
    pub connect: &'a Connect<'a>,
}

impl Entry {
    pub fn new(sink: Sink, stopping: CancellationToken, s: Started<'_>) -> Box<Self> {
        let c = s.connect;
        Box::new(Entry {
            rec: Record {
                start: SystemTime::now() - s.accepted.elapsed(),
                listener: s.listener.to_string(),
                client: s.peer,
                tls: s.tls.cloned(),
                protocol: Some(c.version.as_str()),
                client_id: Some(capped(c.client_id)),
                username: c.username.map(capped),
                cluster: s.cluster.to_string(),
                node: Some(s.node.to_string()),
                connack: None,
                to_broker: 0,
                to_client: 0,
                duration: Duration::ZERO,
                close: Close::Shutdown,
                reject: None,
            },
            accepted: s.accepted,
            sink,
            stopping,
            close: None,
        })
    }

    /// Bytes forwarded to the broker before the relay started (the CONNECT).
    pub fn forwarded(&mut self, n: u64) {
        self.rec.to_broker = n;
    }

    /// Bytes relayed to the client before the relay's main loop (the packet-aware
    /// relay's CONNACK and replay step).
    pub fn relayed_to_client(&mut self, n: u64) {
        self.rec.to_client += n;
    }

    pub fn connack(&mut self, seen: ConnackSeen) {
        self.rec.connack = Some(seen);
    }

    /// The node field: a fan-out session's nodes, comma-separated (absent if none).
    pub fn nodes(&mut self, names: String) {
        self.rec.node = (!names.is_empty()).then_some(names);
    }

    /// Refused after all (a fan-out session no node accepted): `close=rejected`.
    pub fn rejected(&mut self, reason: Reject) {
        self.rec.reject = Some(reason.as_str());
        self.close = Some(Close::Rejected);
    }

    /// The gateway closed the session: shutdown, listener removed, or the node's cause.
    pub fn closed_by_gateway(&mut self, listener_closed: bool, node: Option<Close>) {
        self.close = Some(if listener_closed {
            if self.stopping.is_cancelled() {
                Close::Shutdown
            } else {
                Close::ListenerRemoved
            }
        } else {
            node.unwrap_or(Close::NodeDown)
        });
    }

    /// Send the line (bytes relayed each way, to the client's CONNECT included).
    pub fn finish(self: Box<Self>, to_broker: u64, to_client: u64) {
        let Entry {
            mut rec,
            accepted,
            sink,
            close,
            ..
        } = *self;
        rec.to_broker += to_broker;
        rec.to_client += to_client;
        rec.duration = accepted.elapsed();
        rec.close = close.unwrap_or(Close::Shutdown);
        sink.send(rec);
    }
}
