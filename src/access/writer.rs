//! The access-log writer: one OS thread that owns the target (stderr, an append-only
//! file, or a Unix datagram socket to syslog), formats the records it receives and
//! writes them, flushing when the queue is empty. Blocking writes block only this
//! thread, which looks for lines every 50 ms. A reconfiguration or SIGUSR1 bumps a
//! generation; the thread then reopens its target before its next lines.

use super::format::{format_json, format_text, syslog_datagram};
use super::Record;
use crate::config::{AccessTarget, LogFormat};
use prometheus::IntCounter;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// What the gateway sets and the writer reads.
#[derive(Default)]
pub struct Shared {
    conf: Mutex<(AccessTarget, Option<LogFormat>)>,
    generation: AtomicU64,
}

impl Shared {
    pub fn set(&self, target: AccessTarget, format: LogFormat) {
        *crate::sync::lock(&self.conf) = (target, Some(format));
        self.reopen();
    }

    pub fn reopen(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

enum Out {
    None,
    Stderr,
    File(BufWriter<File>, PathBuf),
    Syslog(UnixDatagram, PathBuf),
}

pub fn spawn(
    shared: Arc<Shared>,
    rx: Receiver<Record>,
    dropped: IntCounter,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("mqgate-access".into())
        .spawn(move || run(&shared, &rx, &dropped))
        .map(drop)
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
        std::thread::sleep(TICK);
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
        if wrote {
            flush(&mut out);
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
