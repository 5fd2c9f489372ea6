//! The operator-facing side of the binary: `check`'s summary (`check`, text or JSON),
//! `version`, and the commands that talk to a running gateway's admin API (`status`,
//! `status --watch`, `node`, `sticky`). Split by concern: `target` (which API, which
//! token), `api` (the HTTP requests), `table` (the status tables), `watch`.
//!
//! The client commands find the admin API from `--admin URL`, or from the `[admin]`
//! table of `-c FILE` (bind address and token), or `./mqgate.toml`, or else the default
//! address — the last two said on stderr ([`target`]).
//!
//! The client commands send one HTTP/1.1 request with hyper's client, on a
//! current-thread tokio runtime of their own, and print readable tables. Every failure
//! is one line on stderr and a non-zero exit: the gateway is not running, the token is
//! wrong or missing, the cluster/node/key is unknown. Below [`client`] (which prints)
//! failures are typed: [`TargetError`] for finding the API and its token,
//! [`ClientError`] for talking to it; each message is one complete line.

use crate::admin::{ClusterView, StatusView};
use crate::config::{Config, Mode};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request as HttpRequest};
use hyper_util::rt::TokioIo;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod api;
mod check;
mod table;
mod target;
#[cfg(test)]
mod tests;
mod watch;

pub use api::*;
pub use check::*;
pub use table::*;
pub use target::*;
pub use watch::watch;

/// Where the admin API is when neither `--admin` nor `./mqgate.toml` says.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9100";
/// Environment variable holding the bearer token for mutating commands.
pub const TOKEN_ENV: &str = "MQGATE_ADMIN_TOKEN";
/// How long a TCP connect to one address of the admin API may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the admin API may take to answer: the request sent and the answer's head
/// read, then its body read, each within this.
pub(super) const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (a status of hundreds of nodes is a few hundred KB).
pub(super) const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// Why the admin API or its token could not be found from the flags and config file.
/// Each message is one line that names the file, its cause included.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{} is not valid TOML ({message}); `mqgate check -c {}` says more",
        path.display(),
        path.display()
    )]
    Toml { path: PathBuf, message: String },
    #[error("{}: [admin] bind = {bind:?} is not IP:PORT", path.display())]
    Bind { path: PathBuf, bind: String },
    #[error(
        "cannot read the token file {} ([admin] token_file): {error}; run as a user who may \
         read it, or set {TOKEN_ENV}",
        path.display()
    )]
    TokenFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the token file {} is not UTF-8 text; set {TOKEN_ENV}", path.display())]
    TokenNotText { path: PathBuf },
    #[error("[admin] token_env names {var}, which is not set here; set it or {TOKEN_ENV}")]
    TokenEnv { var: String },
}

/// Why a client command failed once it knew where the admin API is. Each message is
/// one complete line, its cause included (not a `source`), as the CLI prints it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "{base}: the admin API speaks plain HTTP; use http:// (put a TLS proxy in front for \
         remote access)"
    )]
    Https { base: String },
    #[error("{base}: not an http:// URL")]
    NotHttpUrl { base: String },
    #[error("{base}: no host in the admin URL")]
    NoHost { base: String },
    #[error("cannot make a request to {base}{target}: {error}")]
    BadRequest {
        base: String,
        target: String,
        error: hyper::http::Error,
    },
    #[error(
        "the admin token is not a valid HTTP header value (a control character?); check \
         {TOKEN_ENV} or the token file"
    )]
    BadToken,
    #[error(
        "cannot reach the admin API at {base} ({error}); is mqgate running? (name it with \
         -c FILE or --admin URL)"
    )]
    Unreachable { base: String, error: std::io::Error },
    #[error("{base} did not answer with HTTP")]
    NotHttp { base: String },
    #[error("talking to the admin API at {base}: {}", chain(error))]
    Http { base: String, error: hyper::Error },
    #[error("talking to the admin API at {base}: {}", chain(&**error))]
    Body {
        base: String,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "talking to the admin API at {base}: no answer within {:?}",
        ANSWER_TIMEOUT
    )]
    Timeout { base: String },
    #[error(
        "talking to the admin API at {base}: the answer is longer than {} MiB",
        MAX_ANSWER >> 20
    )]
    TooLong { base: String },
    #[error("unexpected answer from {base}: {error}")]
    Unexpected {
        base: String,
        error: serde_json::Error,
    },
    /// 401 without a token, and the config's token could not be read.
    #[error("the admin API needs a token: {problem}")]
    TokenUnavailable { problem: String },
    /// 401 without a token, and none configured.
    #[error(
        "the admin API needs a token: set {TOKEN_ENV} to the content of [admin] token_file, \
         or give -c FILE"
    )]
    TokenNeeded,
    /// 401 with a token.
    #[error("the admin API refused the token in {TOKEN_ENV}: {message}")]
    TokenRefused { message: String },
    /// 403.
    #[error("the admin API refused the change: {message}")]
    Refused { message: String },
    /// Any other status outside 2xx: the first line of the API's error.
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("cannot start the async runtime for the request: {error}")]
    Runtime { error: std::io::Error },
    #[error("the client commands run their own runtime: call them outside an async context")]
    NestedRuntime,
}

/// An error and its sources on one line, each said once (hyper's `Display` leaves the
/// cause to `source`).
pub(super) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        next = cause.source();
    }
    out
}

pub enum Request {
    Status,
    Node {
        state: String,
        cluster: String,
        node: String,
    },
    Sticky {
        action: String,
        cluster: String,
        key: String,
    },
    /// `mqgate cluster rebalance CLUSTER [--rate N] [--tolerance F]`.
    Rebalance {
        cluster: String,
        rate: Option<u32>,
        tolerance: f64,
    },
    /// `mqgate node evacuate CLUSTER NODE [--rate N] [--cancel]` (`crate::admin::evacuate`).
    Evacuate {
        cluster: String,
        node: String,
        rate: Option<u32>,
        cancel: bool,
    },
}

pub fn version() -> String {
    format!(
        "mqgate {} ({} {})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// Run one client command against the admin API named by `--admin URL` or by the
/// `[admin]` section of `-c FILE` (see [`target`]).
pub fn client(req: Request, admin: Option<String>, config: Option<PathBuf>) -> ExitCode {
    let t = match target(admin, config.as_deref(), std::env::var(TOKEN_ENV).ok()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("mqgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(note) = &t.note {
        eprintln!("mqgate: {note}");
    }
    match run_request(&req, &t.base, t.token.as_deref(), t.token_problem.as_ref()) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mqgate: {e}");
            ExitCode::FAILURE
        }
    }
}
