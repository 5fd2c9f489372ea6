//! The `mqgate` binary: parse the command line, set up logging, call the library.
#![warn(clippy::unwrap_used)]

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// jemalloc rather than glibc's malloc: tokio's task cells and I/O registrations are
/// 128-byte aligned allocations, which glibc pads and fragments and jemalloc serves
/// from exact size classes. Measured (BENCHMARKS.md): an idle proxied connection
/// costs about 1.35 KB of resident memory instead of 1.6 KB.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "mqgate",
    version,
    about = "MQTT-aware layer-4 proxy and load balancer for Mosquitto"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway in the foreground (logs to stderr).
    Run {
        /// The config file (TOML); relative paths inside it are resolved from its
        /// directory. Saving it reloads the gateway unless --no-watch is given.
        #[arg(short, long, value_name = "FILE", default_value = "mqgate.toml")]
        config: PathBuf,
        /// Restart without losing connection attempts: take the listening sockets
        /// from the mqgate serving this Unix socket (it then shuts down gracefully),
        /// and serve them to the next process started with the same option.
        #[arg(long, value_name = "PATH")]
        handover: Option<PathBuf>,
        /// Do not reload when the config file is saved; reload only on SIGHUP
        /// (`systemctl reload mqgate`) or `POST /api/v1/reload`.
        #[arg(long)]
        no_watch: bool,
    },
    /// Validate a config file and print a summary (exit 1 with every error).
    Check {
        /// The config file to check (TOML).
        #[arg(short, long, value_name = "FILE", default_value = "mqgate.toml")]
        config: PathBuf,
        /// Print the result as one JSON object (listeners, clusters and their nodes,
        /// admin, peers, limits, access log, warnings); errors stay text on stderr.
        #[arg(long)]
        json: bool,
    },
    /// Table of clusters, nodes, states, leader, connections and peers.
    Status {
        #[command(flatten)]
        target: AdminTarget,
        /// Redraw the table in place every --interval until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Time between two redraws of --watch, e.g. "2s", "500ms".
        #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_interval)]
        interval: std::time::Duration,
    },
    /// Change a node's admin state, or evacuate it (maint, sessions closed at a rate).
    Node {
        #[arg(value_parser = ["ready", "drain", "maint", "evacuate"])]
        state: String,
        cluster: String,
        node: String,
        /// evacuate: sessions closed per second (default: the cluster's close_rate).
        #[arg(long)]
        rate: Option<u32>,
        /// evacuate: stop a running evacuation (the node is set ready again).
        #[arg(long)]
        cancel: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Cluster-wide actions: `rebalance` moves clients from fuller to emptier nodes.
    Cluster {
        #[arg(value_parser = ["rebalance"])]
        action: String,
        cluster: String,
        /// Sessions closed per second per node (default: the cluster's close_rate).
        #[arg(long)]
        rate: Option<u32>,
        /// Spread allowed above the mean, as a fraction.
        #[arg(long, default_value_t = 0.1)]
        tolerance: f64,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Inspect or remove a sticky entry.
    Sticky {
        #[arg(value_parser = ["get", "del"])]
        action: String,
        cluster: String,
        key: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Version and build information.
    Version,
}

/// Which gateway a client command talks to.
#[derive(clap::Args)]
struct AdminTarget {
    /// Admin API URL, e.g. http://127.0.0.1:9100 (overrides the bind of -c FILE).
    /// Without --admin and -c: the [admin] bind of ./mqgate.toml, else
    /// http://127.0.0.1:9100 (either is said on stderr).
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// The gateway's config file: its [admin] bind is the URL and its token_file (or
    /// token_env) the token for changes. MQGATE_ADMIN_TOKEN, if set, is the token.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// `--interval`: a duration as the config file writes them, at least 100 ms.
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    match mqgate::config::parse_duration(s) {
        Some(d) if d >= std::time::Duration::from_millis(100) => Ok(d),
        Some(_) => Err("at least 100ms".into()),
        None => Err(format!(
            "{s:?} is not a duration such as \"2s\" or \"500ms\""
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            config,
            handover,
            no_watch,
        } => run(config, handover, no_watch),
        Cmd::Check { config, json } => match mqgate::config::load(&config) {
            Ok(cfg) => {
                if json {
                    println!("{}", mqgate::cli::summary_json(&cfg));
                } else {
                    print!("{}", mqgate::cli::summary(&cfg));
                }
                for w in cfg.warning_lines() {
                    eprintln!("{w}");
                }
                // `run` raises its soft limit to the hard one: that is what must fit.
                let hard = mqgate::fdlimit::current().hard;
                for w in mqgate::fdlimit::warnings(&cfg, hard) {
                    eprintln!(
                        "{}: warning: {w} (this is the hard limit `mqgate check` got here; \
                         `mqgate run` raises its soft limit to its own hard limit)",
                        config.display()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                eprintln!("{}: {} error(s)", config.display(), e.errors.len());
                ExitCode::FAILURE
            }
        },
        Cmd::Status {
            target,
            watch: true,
            interval,
        } => mqgate::cli::watch(target.admin, target.config, interval),
        Cmd::Status { target, .. } => {
            mqgate::cli::client(mqgate::cli::Request::Status, target.admin, target.config)
        }
        Cmd::Node {
            state,
            cluster,
            node,
            rate,
            cancel,
            target,
        } if state == "evacuate" => mqgate::cli::client(
            mqgate::cli::Request::Evacuate {
                cluster,
                node,
                rate,
                cancel,
            },
            target.admin,
            target.config,
        ),
        Cmd::Node {
            state,
            cluster,
            node,
            target,
            ..
        } => mqgate::cli::client(
            mqgate::cli::Request::Node {
                state,
                cluster,
                node,
            },
            target.admin,
            target.config,
        ),
        Cmd::Cluster {
            cluster,
            rate,
            tolerance,
            target,
            ..
        } => mqgate::cli::client(
            mqgate::cli::Request::Rebalance {
                cluster,
                rate,
                tolerance,
            },
            target.admin,
            target.config,
        ),
        Cmd::Sticky {
            action,
            cluster,
            key,
            target,
        } => mqgate::cli::client(
            mqgate::cli::Request::Sticky {
                action,
                cluster,
                key,
            },
            target.admin,
            target.config,
        ),
        Cmd::Version => {
            println!("{}", mqgate::cli::version());
            ExitCode::SUCCESS
        }
    }
}

fn run(path: PathBuf, handover: Option<PathBuf>, no_watch: bool) -> ExitCode {
    let cfg = match mqgate::config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let set_level = mqgate::logging::init(&cfg.log.level, cfg.log.format);
    for w in cfg.warning_lines() {
        tracing::warn!("{w}");
    }
    let files = match mqgate::fdlimit::raise() {
        Ok(l) => l,
        Err(e) => {
            let l = mqgate::fdlimit::current();
            tracing::warn!(soft = %mqgate::fdlimit::show(l.soft), hard = %mqgate::fdlimit::show(l.hard), "cannot raise the open-file limit to the hard limit: {e}");
            l
        }
    };
    tracing::info!(
        soft = %mqgate::fdlimit::show(files.soft),
        hard = %mqgate::fdlimit::show(files.hard),
        needed = mqgate::fdlimit::needed(&cfg),
        "open-file limit"
    );
    for w in mqgate::fdlimit::warnings(&cfg, files.soft) {
        tracing::warn!("{w}");
    }
    // With connection threads (`limits.threads`, `mqgate::workers`) this runtime only
    // accepts and runs health checks, peers, the admin API and reloads: one thread.
    // Only `threads = 0` means none (unset is at least one, `workers::thread_count`,
    // which `Gateway::start_with` calls once).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cfg.limits.threads != Some(0) {
        builder.worker_threads(1);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mqgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            wait_for_stop_signal().await;
            tracing::info!("stop signal received");
            s.cancel();
        });
        mqgate::run_opts(
            cfg,
            shutdown,
            mqgate::RunOptions {
                set_log_level: Some(set_level),
                handover,
                no_watch,
            },
        )
        .await
    });
    // Everything is stopped and saved by now: a blocking task still running (a DNS
    // lookup of the system resolver, say) must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("mqgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
