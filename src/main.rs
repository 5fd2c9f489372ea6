//! The `mqgate` binary: parse the command line, set up logging, call the library.

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
        #[arg(short, long, default_value = "mqgate.toml")]
        config: PathBuf,
        /// Restart without losing connection attempts: take the listening sockets
        /// from the mqgate serving this Unix socket (it then shuts down gracefully),
        /// and serve them to the next process started with the same option.
        #[arg(long, value_name = "PATH")]
        handover: Option<PathBuf>,
    },
    /// Validate a config file and print a summary (exit 1 with every error).
    Check {
        #[arg(short, long, default_value = "mqgate.toml")]
        config: PathBuf,
    },
    /// Table of clusters, nodes, states, leader, connections and peers.
    Status {
        #[arg(long)]
        admin: Option<String>,
    },
    /// Change a node's admin state.
    Node {
        #[arg(value_parser = ["ready", "drain", "maint"])]
        state: String,
        cluster: String,
        node: String,
        #[arg(long)]
        admin: Option<String>,
    },
    /// Inspect or remove a sticky entry.
    Sticky {
        #[arg(value_parser = ["get", "del"])]
        action: String,
        cluster: String,
        key: String,
        #[arg(long)]
        admin: Option<String>,
    },
    /// Version and build information.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { config, handover } => run(config, handover),
        Cmd::Check { config } => match mqgate::config::load(&config) {
            Ok(cfg) => {
                print!("{}", mqgate::cli::summary(&cfg));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                eprintln!("{}: {} error(s)", config.display(), e.errors.len());
                ExitCode::FAILURE
            }
        },
        Cmd::Status { admin } => mqgate::cli::client(mqgate::cli::Request::Status, admin),
        Cmd::Node {
            state,
            cluster,
            node,
            admin,
        } => mqgate::cli::client(
            mqgate::cli::Request::Node {
                state,
                cluster,
                node,
            },
            admin,
        ),
        Cmd::Sticky {
            action,
            cluster,
            key,
            admin,
        } => mqgate::cli::client(
            mqgate::cli::Request::Sticky {
                action,
                cluster,
                key,
            },
            admin,
        ),
        Cmd::Version => {
            println!("{}", mqgate::cli::version());
            ExitCode::SUCCESS
        }
    }
}

fn run(path: PathBuf, handover: Option<PathBuf>) -> ExitCode {
    let cfg = match mqgate::config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let set_level = mqgate::logging::init(&cfg.log.level, cfg.log.format);
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
            },
        )
        .await
    });
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
