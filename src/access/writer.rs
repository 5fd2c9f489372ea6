//! The access-log writer: one OS thread that owns the target (stderr, an append-only
//! file, or a Unix datagram socket to syslog), formats the records it receives and
//! writes them, flushing when the queue is empty. Blocking writes block only this
//! thread, which looks for lines every 50 ms. A reconfiguration or SIGUSR1 bumps a
//! generation; the thread then reopens its target before its next lines. At the
//! gateway's stop, [`Shared::close`] has it write what is queued and flush before the
//! process exits.

use super::format::{format_json, format_text, syslog_datagram};
use super::Record;
use crate::config::{AccessTarget, LogFormat};
use prometheus::IntCounter;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::Thread;
use std::time::{Duration, SystemTime};

/// What the gateway sets and the writer reads.
#[derive(Default)]
pub struct Shared {
    conf: Mutex<(AccessTarget, Option<LogFormat>)>,
    generation: AtomicU64,
    /// Set by [`Shared::close`]: write what is queued, flush, and end.
    closing: AtomicBool,
    /// The writer has ended (its last lines written and flushed).
    ended: Mutex<bool>,
    ended_cv: Condvar,
}

impl Shared {
    pub fn set(&self, target: AccessTarget, format: LogFormat) {
        *crate::sync::lock(&self.conf) = (target, Some(format));
        self.reopen();
    }

    pub fn reopen(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Have the writer thread (`writer`) write every line queued so far and flush, and
    /// wait up to `wait` for it: the gateway is stopping, and the process's exit would
    /// otherwise end the thread between two of its looks at the queue. Lines queued
    /// after this are not written.
    pub fn close(&self, writer: &Thread, wait: Duration) {
        self.closing.store(true, Ordering::SeqCst);
        writer.unpark();
        let ended = crate::sync::lock(&self.ended);
        let (ended, _) = self
            .ended_cv
            .wait_timeout_while(ended, wait, |ended| !*ended)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !*ended {
            tracing::warn!(
                ?wait,
                "the access-log writer did not finish in time; its last lines may be lost"
            );
        }
    }

    fn set_ended(&self) {
        *crate::sync::lock(&self.ended) = true;
        self.ended_cv.notify_all();
    }
}

enum Out {
    None,
    Stderr,
    File(BufWriter<File>, PathBuf),
    Syslog(UnixDatagram, PathBuf),
}

/// Start the writer thread; its handle is what [`Shared::close`] wakes.
pub fn spawn(
    shared: Arc<Shared>,
    rx: Receiver<Record>,
    dropped: IntCounter,
) -> std::io::Result<Thread> {
    std::thread::Builder::new()
        .name("mqgate-access".into())
        .spawn(move || {
            run(&shared, &rx, &dropped);
            shared.set_ended();
        })
        .map(|h| h.thread().clone())
}

fn open(target: &AccessTarget) -> Out {
    match target {
        AccessTarget::Off => Out::None,
        AccessTarget::Stderr => Out::Stderr,
        AccessTarget::File(p) => {
            match OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(p)
            {
                Ok(f) => Out::File(BufWriter::with_capacity(64 * 1024, f), p.clone()),
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "cannot open the access log file; lines are dropped until it opens (SIGUSR1 or reload retries)");
                    Out::None
                }
            }
        }
        AccessTarget::Syslog(p) => match UnixDatagram::unbound() {
            Ok(s) => Out::Syslog(s, p.clone()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create a socket for syslog; access lines are dropped");
                Out::None
            }
        },
    }
}

/// How often the writer looks for lines. It polls instead of blocking on the channel,
/// so that handing a line over never costs the connection's thread a wake-up syscall
/// (measured: that was most of the access log's cost per session).
const TICK: Duration = Duration::from_millis(50);

fn run(shared: &Shared, rx: &Receiver<Record>, dropped: &IntCounter) {
    let pid = std::process::id();
    let mut seen = u64::MAX;
    let mut out = Out::None;
    let mut format = LogFormat::Text;
    let mut warned = false;
    loop {
        std::thread::park_timeout(TICK);
        // Read before the queue is drained: every line sent before the close was
        // asked for is in the queue by then.
        let closing = shared.closing.load(Ordering::SeqCst);
        let gen = shared.generation.load(Ordering::SeqCst);
        if gen != seen {
            seen = gen;
            flush(&mut out);
            let (target, f) = crate::sync::lock(&shared.conf).clone();
            format = f.unwrap_or(LogFormat::Text);
            out = open(&target);
            warned = false;
        }
        let mut wrote = false;
        loop {
            let rec = match rx.try_recv() {
                Ok(r) => r,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    flush(&mut out);
                    return;
                }
            };
            wrote = true;
            let line = match format {
                LogFormat::Text => format_text(&rec),
                LogFormat::Json => format_json(&rec),
            };
            if let Err(e) = write(&mut out, &line, pid) {
                dropped.inc();
                if !warned {
                    warned = true;
                    tracing::warn!(error = %e, "writing the access log failed; lines are dropped (counted in mqgate_access_log_dropped_total)");
                }
            }
        }
        if wrote || closing {
            flush(&mut out);
        }
        if closing {
            return;
        }
    }
}

fn write(out: &mut Out, line: &str, pid: u32) -> std::io::Result<()> {
    match out {
        Out::None => Err(std::io::Error::other("no access log target open")),
        Out::Stderr => {
            let mut e = std::io::stderr().lock();
            e.write_all(line.as_bytes())?;
            e.write_all(b"\n")
        }
        Out::File(f, _) => {
            f.write_all(line.as_bytes())?;
            f.write_all(b"\n")
        }
        Out::Syslog(s, path) => {
            let d = syslog_datagram(line, SystemTime::now(), pid);
            s.send_to(d.as_bytes(), &*path).map(drop)
        }
    }
}

fn flush(out: &mut Out) {
    if let Out::File(f, p) = out {
        if let Err(e) = f.flush() {
            tracing::warn!(file = %p.display(), error = %e, "flushing the access log failed");
        }
    }
}
