//! Admin HTTP server (hyper) at `[admin] bind` (SPEC section 7): `/metrics`,
//! `/healthz`, `/readyz`, `/status` (HTML for people), `/api/v1/…` (JSON for tools and
//! the `mqgate status|node|sticky` commands).
//!
//! It exists so that operators can see and steer a running gateway without touching
//! the data path: every handler only reads the in-memory state (`Host`, `Runtime`,
//! the metrics registry) or calls the same entry points a reload or health check uses.
//!
//! Robustness: the server is bounded on every side so that a slow or hostile HTTP
//! client cannot hurt it — at most [`MAX_CONNECTIONS`] connections, the longest-idle
//! one closed to make room for a new one (module `conns`: idle connections cannot lock out
//! probes and scrapes), a header read timeout, a cap on a connection's lifetime, and
//! request bodies limited to [`MAX_BODY`] bytes read within [`BODY_TIMEOUT`].
//!
//! Access: reading is open, except a sticky entry's lookup, which needs the token when
//! one is set. Mutating endpoints (`PUT`, `DELETE`, `POST`) refuse requests a browser
//! may have been made to send — an `Origin` other than the admin API itself, a `Host`
//! other than the admin address, a loopback address, `localhost` or
//! `[admin] allowed_hosts` (module `access`);
//! then need `Authorization: Bearer <token>` when `[admin] token_file` is set (401
//! otherwise), and without a token are allowed only when the admin *socket* is bound
//! to a loopback address (403 otherwise; a reload that changes `bind` does not move
//! the socket). The token is compared in constant time.

mod access;
mod api;
mod conns;
mod evacuate;
mod rebalance;
mod status_page;
mod view;

pub use api::{NodeStateAnswer, StickyAnswer};
pub use evacuate::EvacuateAnswer;
pub use rebalance::RebalanceAnswer;
pub use view::{
    gather_status, ClusterView, ListenerView, NodeView, PeerView, PeersView, StatusView,
};

use crate::host::Host;
use crate::reload::Reload;
use access::Arrival;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Open admin connections at most. A new connection beyond this closes the one idle
/// the longest (no request being handled); it waits only if every one is busy.
pub const MAX_CONNECTIONS: usize = 256;
/// Largest request body accepted (the API's bodies are a few bytes of JSON).
pub const MAX_BODY: usize = 16 * 1024;
/// A request's headers must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's body must arrive within this.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// A keep-alive connection is closed after this long (clients reconnect).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// Response type of every handler.
pub type Resp = Response<Full<Bytes>>;
/// A ready answer that ends a request early (boxed: responses are large).
pub(crate) type Refusal = Box<Resp>;

/// Bind the admin address and serve it in the background until shutdown.
/// What the admin API works with: the gateway's state to read (and its clusters'
/// admin states and sticky tables to change), and the reload handle.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) host: Arc<Host>,
    pub(crate) reload: Arc<dyn Reload>,
}

pub async fn spawn(host: &Arc<Host>, reload: Arc<dyn Reload>) -> std::io::Result<()> {
    let host = host.clone();
    let bind = host.runtime().config.admin.bind;
    // SO_REUSEPORT like the client listeners: during a restart (`--handover` or
    // not) the new process binds the same admin address while the old one drains.
    let listener = crate::listener::bind(bind)
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot bind the admin API to {bind}: {e}"),
            )
        })?;
    // The address the socket really has: what the token-free check decides on, whatever
    // a later reload says `[admin] bind` is (changing it takes a restart).
    let bound = listener.local_addr()?;
    tracing::info!(bind = %bound, "admin API listening");
    let stop = host.background.clone();
    let tracker = host.bg_tracker.clone();
    let gw = Ctx {
        host: host.clone(),
        reload,
    };
    let conns = conns::Conns::new(MAX_CONNECTIONS);
    tracker.spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "admin API: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            // Make room: close the longest-idle connection, or wait while all are busy.
            let admitted = loop {
                match conns.admit(peer) {
                    Some((a, evicted)) => {
                        if let Some(old) = evicted {
                            tracing::debug!(client.addr = %old, "admin API: closed the longest-idle connection to make room");
                        }
                        break a;
                    }
                    None => tokio::select! {
                        _ = conns.freed() => {}
                        _ = stop.cancelled() => return,
                    },
                }
            };
            let arrival = Arrival {
                bound,
                local: tcp.local_addr().unwrap_or(bound),
            };
            let gw = gw.clone();
            let stop = stop.clone();
            let conns = conns.clone();
            tokio::spawn(async move {
                let id = admitted.id;
                let svc = hyper::service::service_fn(move |req| {
                    let gw = gw.clone();
                    let busy = conns.busy(id);
                    async move {
                        let resp = handle(&gw, &arrival, req).await;
                        drop(busy);
                        Ok::<_, Infallible>(resp)
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(64 * 1024)
                    .serve_connection(TokioIo::new(tcp), svc);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(client.addr = %peer, error = %e, "admin API connection ended");
                        }
                    }
                    _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
                        tracing::debug!(client.addr = %peer, "admin API connection closed after its lifetime");
                    }
                    _ = admitted.close.cancelled() => {}
                    _ = stop.cancelled() => {}
                }
                drop(admitted);
            });
        }
    });
    Ok(())
}

/// Route one request.
async fn handle(gw: &Ctx, arrival: &Arrival, req: Request<Incoming>) -> Resp {
    let host = &gw.host;
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let resp = match (&method, segments.as_slice()) {
        (&Method::GET | &Method::HEAD, ["metrics"]) => metrics(host),
        (&Method::GET | &Method::HEAD, ["healthz"]) => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, ["readyz"]) => readyz(host),
        (&Method::GET | &Method::HEAD, ["status"]) => {
            let refresh = query_param(req.uri().query(), "refresh")
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(5);
            html(status_page::render(&gather_status(host), refresh))
        }
        (&Method::GET | &Method::HEAD, ["api", "v1", "status"]) => {
            json(StatusCode::OK, &gather_status(host))
        }
        (&Method::GET, ["api", "v1", "clusters", c, "sticky", key]) => {
            // Whether a client id exists is not for anyone who can reach the port.
            match require_token(host, &req) {
                Err(r) => *r,
                Ok(()) => api::sticky_get(host, &decode(c), &decode(key)),
            }
        }
        (&Method::DELETE, ["api", "v1", "clusters", c, "sticky", key]) => {
            let (c, key) = (decode(c), decode(key));
            match authorize(host, arrival, &req) {
                Err(r) => *r,
                Ok(()) => api::sticky_del(host, &c, &key),
            }
        }
        (&Method::PUT, ["api", "v1", "clusters", c, "nodes", n, "state"]) => {
            let (c, n) = (decode(c), decode(n));
            match authorize(host, arrival, &req) {
                Err(r) => *r,
                Ok(()) => match read_body(req).await {
                    Err(r) => *r,
                    Ok(body) => api::node_state(host, &c, &n, &body),
                },
            }
        }
        (&Method::POST, ["api", "v1", "clusters", c, "nodes", n, "evacuate"]) => {
            let (c, n) = (decode(c), decode(n));
            match authorize(host, arrival, &req) {
                Err(r) => *r,
                Ok(()) => match read_body(req).await {
                    Err(r) => *r,
                    Ok(body) => evacuate::evacuate(host, &c, &n, &body),
                },
            }
        }
        (&Method::POST, ["api", "v1", "clusters", c, "rebalance"]) => {
            let c = decode(c);
            match authorize(host, arrival, &req) {
                Err(r) => *r,
                Ok(()) => match read_body(req).await {
                    Err(r) => *r,
                    Ok(body) => rebalance::rebalance(host, &c, &body),
                },
            }
        }
        (&Method::DELETE, ["api", "v1", "clusters", c, "nodes", n, "evacuate"]) => {
            let (c, n) = (decode(c), decode(n));
            match authorize(host, arrival, &req) {
                Err(r) => *r,
                Ok(()) => evacuate::cancel(host, &c, &n),
            }
        }
        (&Method::POST, ["api", "v1", "reload"]) => match authorize(host, arrival, &req) {
            Err(r) => *r,
            Ok(()) => api::reload(gw).await,
        },
        (_, ["metrics" | "healthz" | "readyz" | "status"])
        | (_, ["api", "v1", "status" | "reload"])
        | (_, ["api", "v1", "clusters", _, "sticky", _])
        | (_, ["api", "v1", "clusters", _, "rebalance"])
        | (_, ["api", "v1", "clusters", _, "nodes", _, "state" | "evacuate"]) => {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("method {method} is not allowed on {path}"),
            );
            r.headers_mut().insert(
                hyper::header::ALLOW,
                HeaderValue::from_static(allowed(&segments)),
            );
            r
        }
        _ => error(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}")),
    };
    if method == Method::HEAD {
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, Full::new(Bytes::new()));
    }
    resp
}

fn allowed(segments: &[&str]) -> &'static str {
    match segments {
        ["api", "v1", "reload"] => "POST",
        ["api", "v1", "clusters", _, "sticky", _] => "GET, DELETE",
        ["api", "v1", "clusters", _, "nodes", _, "state"] => "PUT",
        ["api", "v1", "clusters", _, "nodes", _, "evacuate"] => "POST, DELETE",
        ["api", "v1", "clusters", _, "rebalance"] => "POST",
        _ => "GET, HEAD",
    }
}

fn metrics(host: &Host) -> Resp {
    // The sticky gauge is also refreshed by the sweeper; refresh it here so that a
    // scrape always sees the table's current size (entries removed by the API or
    // peers, or expired, included).
    host.refresh_sticky_gauges();
    let mut r = Response::new(Full::new(Bytes::from(host.metrics.render())));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn readyz(host: &Host) -> Resp {
    let rt = host.runtime();
    let mut not_ready: Vec<&str> = rt
        .clusters
        .values()
        .filter(|c| !c.ready())
        .map(|c| c.name.as_str())
        .collect();
    not_ready.sort_unstable();
    if host.stopping() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    if not_ready.is_empty() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("not ready: cluster(s) {}\n", not_ready.join(", ")),
        )
    }
}

/// May this request change things? (SPEC section 7.) Not if a browser may have been
/// made to send it ([`access`]); then the token decides, or without a token whether the
/// admin socket — as bound, not as a reloaded `[admin] bind` says — is on loopback.
fn authorize(host: &Host, arrival: &Arrival, req: &Request<Incoming>) -> Result<(), Refusal> {
    let rt = host.runtime();
    let admin = &rt.config.admin;
    if let Err(msg) =
        access::check_browser_safety(req.uri(), req.headers(), arrival, &admin.allowed_hosts)
    {
        tracing::debug!(reason = %msg, "admin API: change refused");
        return Err(Box::new(error(StatusCode::FORBIDDEN, &msg)));
    }
    if admin.token.is_some() {
        return require_token(host, req);
    }
    if arrival.bound.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    let mut msg = format!(
        "changes are refused: the admin API listens on {}, not a loopback address, and no [admin] token_file is set",
        arrival.bound
    );
    if admin.bind != arrival.bound && admin.bind.port() != 0 {
        msg.push_str(&format!(
            " ([admin] bind now says {}, which takes effect at the next restart)",
            admin.bind
        ));
    }
    Err(Box::new(error(StatusCode::FORBIDDEN, &msg)))
}

/// The bearer token, when `[admin]` sets one (401 without it or with a wrong one).
fn require_token(host: &Host, req: &Request<Incoming>) -> Result<(), Refusal> {
    let rt = host.runtime();
    let Some(token) = &rt.config.admin.token else {
        return Ok(());
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(|t| t.trim_ascii());
    match given {
        Some(t) if token_eq(t, token.expose()) => Ok(()),
        Some(_) => {
            tracing::debug!("admin API: wrong bearer token");
            Err(Box::new(unauthorized("wrong bearer token")))
        }
        None => Err(Box::new(unauthorized(
            "this endpoint needs `Authorization: Bearer <token>` (the [admin] token_file)",
        ))),
    }
}

/// Constant-time token comparison: both sides are hashed first, so neither the
/// content nor the length of the token leaks through timing.
fn token_eq(given: &[u8], expected: &[u8]) -> bool {
    let a = Sha256::digest(given);
    let b = Sha256::digest(expected);
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn unauthorized(msg: &str) -> Resp {
    let mut r = error(StatusCode::UNAUTHORIZED, msg);
    r.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"mqgate\""),
    );
    r
}

/// Read a request body: at most [`MAX_BODY`] bytes within [`BODY_TIMEOUT`].
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Refusal> {
    let limited = Limited::new(req.into_body(), MAX_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err(Box::new(error(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time",
        ))),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body is larger than {MAX_BODY} bytes"),
        ))),
        Ok(Err(e)) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the request body: {e}"),
        ))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// Percent-decode one path segment (sticky keys may hold any character).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn text(status: StatusCode, body: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn html(body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    r
}

/// A JSON answer.
pub(crate) fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Resp {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin API: cannot encode JSON");
            text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode JSON\n")
        }
    }
}

/// A JSON error: `{"error": "..."}`.
/// An optional JSON body: empty (or only whitespace) gives `T::default()`; one that does
/// not parse is a 400 naming `usage`.
pub(crate) fn optional_json<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    usage: &str,
) -> Result<T, Box<Resp>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            &format!("body must be {usage}: {e}"),
        ))
    })
}

pub(crate) fn error(status: StatusCode, msg: &str) -> Resp {
    json(status, &serde_json::json!({ "error": msg }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(token_eq(b"s3cret", b"s3cret"));
        assert!(!token_eq(b"s3cret", b"s3creT"));
        assert!(!token_eq(b"s3cret", b"s3cret2"));
        assert!(!token_eq(b"", b"s3cret"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(decode("plain"), "plain");
        assert_eq!(decode("a%2Fb%20c"), "a/b c");
        assert_eq!(decode("bad%zz"), "bad%zz");
        assert_eq!(decode("end%4"), "end%4");
        assert_eq!(decode("%"), "%");
        assert_eq!(decode("%E2%9C%93"), "\u{2713}");
    }

    #[test]
    fn query_parameters() {
        assert_eq!(query_param(Some("a=1&refresh=3"), "refresh"), Some("3"));
        assert_eq!(query_param(Some("a=1"), "refresh"), None);
        assert_eq!(query_param(None, "refresh"), None);
    }
}
