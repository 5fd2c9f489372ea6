//! Reload triggers: the config file or a listener's CRL file changing on disk (watched,
//! debounced, including an editor replacing the file by rename, [`watch`]), SIGHUP ([`on_sighup`]) and
//! `POST /api/v1/reload` (the admin API, through the same [`Reload`] handle). All of
//! them end in the gateway's reload: parse → validate → diff → apply, where an invalid
//! file changes nothing.
//!
//! The watcher watches the file's directory rather than the file: an editor that
//! writes a new file and renames it over the old one replaces the inode, which a
//! watch on the file itself would lose. A config file reached through symlinks (a
//! Kubernetes ConfigMap volume) is followed across the `..data` swap ([`watch`]).

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
    /// Other files whose change reloads the configuration (the listeners' CRLs).
    fn watched_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }
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
///
/// The file is read by the name the config gives it. When that name is a symlink (a
/// Kubernetes ConfigMap volume: `mqgate.toml -> ..data/mqgate.toml`, `..data ->
/// ..2026_…`), both its own directory and the directory of the file it points to are
/// watched, and an update that swaps `..data` to a new directory (the old one is
/// deleted) is followed: the new target's directory is watched from then on.
pub fn watch(t: &Triggers) {
    let named = t.reload.config_file();
    let named = if named.is_relative() {
        std::env::current_dir()
            .map(|d| d.join(&named))
            .unwrap_or(named)
    } else {
        named
    };
    // `true`: one of the other watched files (a CRL) changed.
    let (tx, rx) = mpsc::unbounded_channel::<bool>();
    let extra: Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>> = Arc::default();
    let extra_seen = extra.clone();
    let Some(named_dir) = named.parent().map(Path::to_path_buf) else {
        tracing::warn!(file = %named.display(), "config file has no parent directory; not watching it");
        return;
    };
    let file_name = named.file_name().map(|f| f.to_os_string());
    let dir = named_dir.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if matches!(ev.kind, EventKind::Access(_)) {
            return;
        }
        let ours = ev.paths.iter().any(|p| {
            let name = p.file_name().map(|f| f.to_os_string());
            // The file itself (in either directory), or a ConfigMap's `..data` swap.
            name == file_name
                || (p.parent() == Some(dir.as_path())
                    && name.is_some_and(|n| n.to_string_lossy().starts_with("..")))
        });
        if ours {
            let _ = tx.send(false);
        } else if ev
            .paths
            .iter()
            .any(|p| crate::sync::lock(&extra_seen).contains(p))
        {
            let _ = tx.send(true);
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or the API");
            return;
        }
    };
    if let Err(e) = watcher.watch(&named_dir, RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %named_dir.display(), error = %e, "cannot watch the config directory; reload with SIGHUP or the API");
        return;
    }
    let mut target = Target {
        named_dir,
        dir: None,
    };
    target.follow(&mut watcher, &named);
    tracing::info!(file = %named.display(), "watching the config file for changes");
    let mut extras = Extras {
        files: extra,
        dirs: Vec::new(),
    };
    extras.update(&mut watcher, t.reload.watched_files());
    t.tracker
        .spawn(debounce_loop(t.clone(), rx, watcher, named, target, extras));
}

/// The directory of the file the config's name points to, when it is another one.
struct Target {
    named_dir: PathBuf,
    dir: Option<PathBuf>,
}

impl Target {
    /// Watch the directory the name now resolves to (and no longer the previous one).
    fn follow(&mut self, watcher: &mut notify::RecommendedWatcher, named: &Path) {
        let Some(dir) = std::fs::canonicalize(named)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        else {
            return;
        };
        if self.dir.as_ref() == Some(&dir) || dir == self.named_dir {
            return;
        }
        if let Some(old) = self.dir.take() {
            let _ = watcher.unwatch(&old); // gone already after a ConfigMap swap
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => self.dir = Some(dir),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config file's target directory")
            }
        }
    }
}

/// The other watched files (CRLs) and the directories watched for them.
struct Extras {
    files: Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>,
    dirs: Vec<PathBuf>,
}

impl Extras {
    /// Watch `files` (the running configuration's), and their directories.
    fn update(&mut self, watcher: &mut notify::RecommendedWatcher, files: Vec<PathBuf>) {
        // Events name files under the directory as it was watched: canonical paths.
        let files: Vec<PathBuf> = files
            .into_iter()
            .map(|f| std::fs::canonicalize(&f).unwrap_or(f))
            .collect();
        for f in &files {
            let Some(dir) = f.parent().map(Path::to_path_buf) else {
                continue;
            };
            if self.dirs.contains(&dir) {
                continue;
            }
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => self.dirs.push(dir),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a CRL file's directory; reload with SIGHUP or the API after changing it")
                }
            }
        }
        *crate::sync::lock(&self.files) = files.into_iter().collect();
    }
}

async fn debounce_loop(
    t: Triggers,
    mut rx: mpsc::UnboundedReceiver<bool>,
    mut watcher: notify::RecommendedWatcher,
    path: PathBuf,
    mut target: Target,
    mut extras: Extras,
) {
    let stop = t.stop.clone();
    let mut last = std::fs::read(&path).ok();
    loop {
        let mut extra = tokio::select! {
            ev = rx.recv() => match ev { Some(e) => e, None => return },
            _ = stop.cancelled() => return,
        };
        // Wait until the files have been quiet for DEBOUNCE.
        loop {
            tokio::select! {
                ev = tokio::time::timeout(DEBOUNCE, rx.recv()) => match ev {
                    Ok(Some(e)) => { extra |= e; continue }
                    Ok(None) => return,
                    Err(_) => break,
                },
                _ = stop.cancelled() => return,
            }
        }
        target.follow(&mut watcher, &path);
        let now = std::fs::read(&path).ok();
        if now.is_none() {
            // Mid-rename or deleted: the next event (the new file) triggers the reload.
            continue;
        }
        if now == last && !extra {
            continue;
        }
        if now == last {
            tracing::info!("a CRL file changed; reloading");
        } else {
            tracing::info!(file = %path.display(), "config file changed; reloading");
        }
        last = now;
        let _ = t.reload.reload().await;
        extras.update(&mut watcher, t.reload.watched_files());
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
