//! The composition root: start the gateway, then wire the parts beside it (handover,
//! admin API, reload triggers, the refusal summary) with the narrow handles each
//! needs, and run until shutdown.

use crate::config::Config;
use crate::gateway::Gateway;
use crate::reload::Triggers;
use crate::state::lock;
use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

/// Run a gateway until `shutdown` is cancelled; SIGHUP reloads the config file.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_opts(config, shutdown, RunOptions::default()).await
}

/// Options of [`run_opts`] beyond the config file.
#[derive(Default)]
pub struct RunOptions {
    /// Changes the log level on reload.
    pub set_log_level: Option<crate::logging::LevelSetter>,
    /// `--handover PATH`: take the listening sockets from the process serving PATH,
    /// then serve them to the next one (`crate::handover`).
    pub handover: Option<std::path::PathBuf>,
    /// `--no-watch`: do not reload when the config file changes; only SIGHUP and
    /// `POST /api/v1/reload` do.
    pub no_watch: bool,
}

/// Start what runs beside a started gateway: the admin API, the config file watch
/// (unless `watch` is false) and the refusal summary. Returns the reload handle.
pub async fn wire(gw: &Gateway, watch: bool) -> anyhow::Result<Triggers> {
    let triggers = gw.triggers();
    // The watch first: once the admin API answers (/healthz, what deployments wait
    // for), a saved file is seen.
    if watch {
        crate::reload::watch(&triggers);
    } else {
        tracing::info!(
            "not watching the config file (--no-watch); reload with SIGHUP or POST /api/v1/reload"
        );
    }
    crate::admin::spawn(&gw.host, triggers.reload.clone())
        .await
        .context("starting the admin server")?;
    crate::refused::spawn(&gw.host);
    Ok(triggers)
}

/// [`run`] with [`RunOptions`].
pub async fn run_opts(
    config: Config,
    shutdown: CancellationToken,
    opts: RunOptions,
) -> anyhow::Result<()> {
    let mut inherited = match &opts.handover {
        Some(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || crate::handover::take(&path))
                .await
                .context("handover task")??
        }
        None => crate::handover::Inherited::none(),
    };
    let sockets = std::mem::take(&mut inherited.sockets);
    let gw = Gateway::start_with(config, sockets)
        .await
        .context("starting mqgate")?;
    inherited.confirm();
    if let Some(path) = opts.handover {
        let gw2 = gw.clone();
        crate::handover::serve(
            path,
            move || gw2.shared.listening_sockets(),
            shutdown.clone(),
            gw.shared.background.clone(),
        )
        .context("serving the handover socket")?;
    }
    *lock(&gw.shared.log_level) = opts.set_log_level;
    let triggers = wire(&gw, !opts.no_watch).await?;
    #[cfg(unix)]
    crate::reload::on_sighup(&triggers).context("installing the SIGHUP handler")?;
    on_sigusr1(&gw).context("installing the SIGUSR1 handler")?;
    shutdown.cancelled().await;
    gw.shutdown().await;
    Ok(())
}

/// SIGUSR1 reopens the access log file (after logrotate renamed it).
fn on_sigusr1(gw: &Gateway) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let data = gw.shared.data.clone();
    let stop = gw.shared.background.clone();
    gw.shared.bg_tracker.spawn(async move {
        loop {
            tokio::select! {
                s = usr1.recv() => if s.is_none() { return },
                _ = stop.cancelled() => return,
            }
            tracing::info!("SIGUSR1: reopening the access log");
            data.access.reopen();
        }
    });
    Ok(())
}
