//! Logging setup: `tracing` to stderr, text or JSON, level from the config with
//! `RUST_LOG` taking precedence; the level can be changed on reload.

use crate::config::LogFormat;
use std::io::IsTerminal;
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
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_current_span(true),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
    };
    if installed.is_err() {
        eprintln!("mqgate: a logger was already installed");
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
