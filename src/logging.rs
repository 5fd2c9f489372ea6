//! Logging setup: `tracing` to stderr, text or JSON, level from the config with
//! `RUST_LOG` taking precedence; the level can be changed on reload.
//!
//! Libraries that log through the `log` crate (rustls) reach `tracing` through
//! `LogBridge`, which turns rustls's warnings into debug lines: they describe what a
//! client sent (an IP address as SNI, as `mosquitto_sub -h 127.0.0.1` does on every
//! connect), not a problem of the gateway, and one line per connection would flood
//! the log. `RUST_LOG` naming `rustls` (e.g. `RUST_LOG=info,rustls=warn`) keeps them
//! at their own level.

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_log::log;
use tracing_subscriber::{fmt, prelude::*, reload, EnvFilter, Registry};

/// Changes the log level of the installed subscriber (used on reload).
pub type LevelSetter = Box<dyn Fn(&str) + Send + Sync>;

/// Install the global subscriber. Returns a function that changes the level.
pub fn init(level: &str, format: LogFormat) -> LevelSetter {
    let env = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
    let filter = EnvFilter::try_new(env.as_deref().unwrap_or(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = Registry::default().with(filter);
    let installed = match format {
        LogFormat::Json => tracing::subscriber::set_global_default(
            registry.with(
                fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_current_span(true),
            ),
        ),
        LogFormat::Text => tracing::subscriber::set_global_default(
            registry.with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            ),
        ),
    };
    let bridge = LogBridge {
        demote_rustls: !env.as_deref().is_some_and(|e| e.contains("rustls")),
    };
    if installed.is_err() || log::set_boxed_logger(Box::new(bridge)).is_err() {
        eprintln!("mqgate: a logger was already installed");
    } else {
        // As `tracing_subscriber`'s `try_init` does: `log` records above the level of
        // the start-up filter are skipped before they are formatted.
        log::set_max_level(tracing_log::AsLog::as_log(
            &tracing::level_filters::LevelFilter::current(),
        ));
    }
    Box::new(move |level: &str| {
        if env.is_some() {
            return; // RUST_LOG overrides the config file
        }
        match EnvFilter::try_new(level) {
            Ok(f) => {
                if handle.reload(f).is_ok() {
                    tracing::info!(level, "log level changed");
                }
            }
            Err(e) => tracing::warn!(level, error = %e, "invalid log level"),
        }
    })
}

/// Forwards `log` records to `tracing` (what `tracing_log::LogTracer` does), with
/// rustls's warnings (about what a peer sent) lowered to debug.
struct LogBridge {
    demote_rustls: bool,
}

impl LogBridge {
    fn demoted(&self, target: &str, level: log::Level) -> bool {
        self.demote_rustls && level == log::Level::Warn && is_rustls(target)
    }
}

fn is_rustls(target: &str) -> bool {
    target == "rustls" || target.starts_with("rustls::") || target.starts_with("tokio_rustls")
}

impl log::Log for LogBridge {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        let level = if self.demoted(m.target(), m.level()) {
            log::Level::Debug
        } else {
            m.level()
        };
        let m = log::Metadata::builder()
            .level(level)
            .target(m.target())
            .build();
        tracing::dispatcher::get_default(|d| d.enabled(&tracing_log::AsTrace::as_trace(&m)))
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.demoted(r.target(), r.level()) {
            let lowered = log::Record::builder()
                .args(*r.args())
                .level(log::Level::Debug)
                .target(r.target())
                .module_path(r.module_path())
                .file(r.file())
                .line(r.line())
                .build();
            let _ = tracing_log::format_trace(&lowered);
        } else {
            let _ = tracing_log::format_trace(r);
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rustls_warnings_are_lowered() {
        let b = LogBridge {
            demote_rustls: true,
        };
        assert!(b.demoted("rustls::msgs::handshake", log::Level::Warn));
        assert!(b.demoted("rustls", log::Level::Warn));
        assert!(!b.demoted("rustls::msgs::handshake", log::Level::Error));
        assert!(!b.demoted("rustls::conn", log::Level::Info));
        assert!(!b.demoted("rustlsx", log::Level::Warn));
        assert!(!b.demoted("mqgate::conn", log::Level::Warn));
        let asked = LogBridge {
            demote_rustls: false,
        };
        assert!(!asked.demoted("rustls::msgs::handshake", log::Level::Warn));
    }
}
