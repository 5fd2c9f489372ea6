//! Reload triggers: the config file changing on disk (watched, debounced, including an
//! editor replacing the file by rename), SIGHUP (see `gateway::run_opts`) and
//! `POST /api/v1/reload` (see `admin`). All of them end in [`Gateway::reload`]:
//! parse → validate → diff → apply, where an invalid file changes nothing.
//!
//! The watcher watches the file's directory rather than the file: an editor that
//! writes a new file and renames it over the old one replaces the inode, which a
//! watch on the file itself would lose.

use crate::gateway::Gateway;
use notify::{EventKind, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// Quiet time after the last change before reloading: editors write in several steps.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Start watching the gateway's config file. Errors (e.g. no inotify) are logged and
/// leave SIGHUP and the API as the reload triggers.
pub fn watch(gw: &Gateway) {
    let path = gw.shared.runtime().config.source.clone();
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
    let gw = gw.clone();
    let tracker = gw.shared.bg_tracker.clone();
    tracker.spawn(debounce_loop(gw, rx, watcher, path));
}

async fn debounce_loop(
    gw: Gateway,
    mut rx: mpsc::UnboundedReceiver<()>,
    _watcher: notify::RecommendedWatcher,
    path: PathBuf,
) {
    let stop = gw.shared.background.clone();
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
        let _ = gw.reload().await;
    }
}
