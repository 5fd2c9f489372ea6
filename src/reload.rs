//! Reload triggers: the config file changing on disk (watched, debounced, including an
//! editor replacing the file by rename, [`watch`]), SIGHUP ([`on_sighup`]) and
//! `POST /api/v1/reload` (the admin API, through the same [`Reload`] handle). All of
//! them end in the gateway's reload: parse → validate → diff → apply, where an invalid
//! file changes nothing.
//!
//! The watcher watches the file's directory rather than the file: an editor that
//! writes a new file and renames it over the old one replaces the inode, which a
//! watch on the file itself would lose.

use crate::config::ConfigErrors;
use notify::{EventKind, RecursiveMode, Watcher};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every reload trigger calls: re-read the config file and apply it (the
/// gateway implements it). Triggers get this handle, not the gateway.
pub trait Reload: Send + Sync + 'static {
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<(), ApplyError>> + Send + '_>>;
    /// The config file (as the running configuration names it).
    fn config_file(&self) -> PathBuf;
}

/// Where the triggers run: the handle, and the background task set they join.
#[derive(Clone)]
pub struct Triggers {
    pub reload: Arc<dyn Reload>,
    pub stop: CancellationToken,
    pub tracker: TaskTracker,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    // The cause is part of the message (not a `source`), so that `{:#}` chains do not
    // print it twice.
    #[error("listener `{listener}`: cannot bind {bind}: {error}")]
    Bind {
        listener: String,
        bind: SocketAddr,
        error: std::io::Error,
    },
    #[error("listener `{listener}`: {error}")]
    Tls {
        listener: String,
        error: crate::tls::TlsError,
    },
    #[error("cluster `{cluster}`: TLS to the brokers: {error}")]
    BrokerTls {
        cluster: String,
        error: crate::tls::TlsError,
    },
    #[error("cannot start the connection threads: {error}")]
    Threads { error: std::io::Error },
    #[error("cannot set up the DNS resolver: {error}")]
    Resolver { error: String },
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A reload panicked (a bug): caught at the reload boundary so that the watcher,
    /// SIGHUP and the API go on reloading.
    #[error("internal error, the reload was abandoned: {0}")]
    Panic(String),
}

/// Quiet time after the last change before reloading: editors write in several steps.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Start watching the gateway's config file. Errors (e.g. no inotify) are logged and
/// leave SIGHUP and the API as the reload triggers.
pub fn watch(t: &Triggers) {
    let path = t.reload.config_file();
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let (tx, rx) = mpsc::unbounded_channel::<()>();
    let Some(dir) = path.parent().map(Path::to_path_buf) else {
        tracing::warn!(file = %path.display(), "config file has no parent directory; not watching it");
        return;
    };
    let file_name = path.file_name().map(|f| f.to_os_string());
    let watched = path.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if matches!(ev.kind, EventKind::Access(_)) {
            return;
        }
        let ours = ev
            .paths
            .iter()
            .any(|p| p == &watched || (p.file_name().map(|f| f.to_os_string()) == file_name));
        if ours {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or the API");
            return;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; reload with SIGHUP or the API");
        return;
    }
    tracing::info!(file = %path.display(), "watching the config file for changes");
    t.tracker.spawn(debounce_loop(t.clone(), rx, watcher, path));
}

async fn debounce_loop(
    t: Triggers,
    mut rx: mpsc::UnboundedReceiver<()>,
    _watcher: notify::RecommendedWatcher,
    path: PathBuf,
) {
    let stop = t.stop.clone();
    let mut last = std::fs::read(&path).ok();
    loop {
        tokio::select! {
            ev = rx.recv() => if ev.is_none() { return },
            _ = stop.cancelled() => return,
        }
        // Wait until the file has been quiet for DEBOUNCE.
        loop {
            tokio::select! {
                ev = tokio::time::timeout(DEBOUNCE, rx.recv()) => match ev {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                },
                _ = stop.cancelled() => return,
            }
        }
        let now = std::fs::read(&path).ok();
        if now.is_none() {
            // Mid-rename or deleted: the next event (the new file) triggers the reload.
            continue;
        }
        if now == last {
            continue;
        }
        tracing::info!(file = %path.display(), "config file changed; reloading");
        last = now;
        let _ = t.reload.reload().await;
    }
}

/// SIGHUP reloads the config file, until `t.stop`.
#[cfg(unix)]
pub fn on_sighup(t: &Triggers) -> std::io::Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let t = t.clone();
    t.tracker.clone().spawn(async move {
        loop {
            tokio::select! {
                s = hup.recv() => if s.is_none() { return },
                _ = t.stop.cancelled() => return,
            }
            tracing::info!("SIGHUP: reloading configuration");
            let _ = t.reload.reload().await;
        }
    });
    Ok(())
}
