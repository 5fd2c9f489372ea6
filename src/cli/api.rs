//! One request to the admin API (hyper's HTTP/1.1 client) and its answer as text.

use super::*;

/// Everything but the printing, so that it can be tested. Runs its own current-thread
/// runtime: call it outside an async context.
pub fn run_client(req: &Request, base: &str, token: Option<&str>) -> Result<String, ClientError> {
    run_request(req, base, token, None)
}

/// [`run_client`]; `token_problem` says why there is no token, if the API wants one.
pub(super) fn run_request(
    req: &Request,
    base: &str,
    token: Option<&str>,
    token_problem: Option<&TargetError>,
) -> Result<String, ClientError> {
    let mut api = Api::new(base, token)?;
    api.token_problem = token_problem;
    // `block_on` inside another runtime would panic.
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(ClientError::NestedRuntime);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| ClientError::Runtime { error })?;
    rt.block_on(api.run(req))
}

/// One request to the admin API with hyper's HTTP/1.1 client.
pub(super) struct Api<'a> {
    /// `http://HOST:PORT[/PREFIX]`, for messages.
    base: String,
    /// `HOST:PORT` (port 80 if the URL has none): where to connect, and the `Host`.
    pub(super) host: String,
    /// The URL's path, put before every API path.
    pub(super) prefix: String,
    token: Option<&'a str>,
    token_problem: Option<&'a TargetError>,
}

impl<'a> Api<'a> {
    pub(super) fn new(base: &str, token: Option<&'a str>) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/');
        let rest = if let Some(r) = base.strip_prefix("http://") {
            r
        } else if base.starts_with("https://") {
            return Err(ClientError::Https { base: base.into() });
        } else if base.contains("://") {
            return Err(ClientError::NotHttpUrl { base: base.into() });
        } else {
            base
        };
        let (host, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if host.is_empty() {
            return Err(ClientError::NoHost { base: base.into() });
        }
        let host = if host
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok())
        {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        Ok(Api {
            base: format!("http://{host}{prefix}"),
            host,
            prefix: prefix.to_string(),
            token,
            token_problem: None,
        })
    }

    /// Send `req` and make its answer readable.
    async fn run(&self, req: &Request) -> Result<String, ClientError> {
        match req {
            Request::Status => {
                let body = self.call(Method::GET, "/api/v1/status", None).await?;
                let s: StatusView = self.parse(&body)?;
                Ok(status_table(&s))
            }
            Request::Node {
                state,
                cluster,
                node,
            } => {
                let path = format!(
                    "/api/v1/clusters/{}/nodes/{}/state",
                    encode(cluster),
                    encode(node)
                );
                let body = serde_json::json!({ "state": state }).to_string();
                let out = self.call(Method::PUT, &path, Some(body)).await?;
                let a: crate::admin::NodeStateAnswer = self.parse(&out)?;
                let mut s = format!(
                    "cluster {} node {}: {} -> {}",
                    a.cluster, a.node, a.previous, a.state
                );
                match a.state.as_str() {
                    "drain" => {
                        s.push_str(" (new clients avoid it; sticky clients still land there)")
                    }
                    "maint" => {
                        let _ = write!(
                            s,
                            " (takes no clients; closed {} session(s))",
                            a.sessions_closed
                        );
                    }
                    _ => {}
                }
                s.push('\n');
                Ok(s)
            }
            Request::Sticky {
                action,
                cluster,
                key,
            } => {
                let path = format!(
                    "/api/v1/clusters/{}/sticky/{}",
                    encode(cluster),
                    encode(key)
                );
                let delete = action == "del";
                let method = if delete { Method::DELETE } else { Method::GET };
                let out = self.call(method, &path, None).await?;
                let a: crate::admin::StickyAnswer = self.parse(&out)?;
                if delete {
                    Ok(format!(
                        "removed sticky entry `{}` of cluster {} (was on node {})\n",
                        a.key, cluster, a.node
                    ))
                } else {
                    Ok(table(
                        &["KEY", "NODE", "EXPIRES IN"],
                        &[vec![a.key, a.node, format!("{}s", a.expires_in_secs)]],
                        "",
                    ))
                }
            }
            Request::Rebalance {
                cluster,
                rate,
                tolerance,
            } => {
                let path = format!("/api/v1/clusters/{}/rebalance", encode(cluster));
                let mut body = serde_json::json!({ "tolerance": tolerance });
                if let Some(r) = rate {
                    body["rate"] = serde_json::json!(r);
                }
                let out = self
                    .call(Method::POST, &path, Some(body.to_string()))
                    .await?;
                let a: crate::admin::RebalanceAnswer = self.parse(&out)?;
                let mut s = format!("cluster {}: ", a.cluster);
                if a.moves.is_empty() {
                    s.push_str("balanced within the tolerance; nothing to move\n");
                } else {
                    let _ = writeln!(
                        s,
                        "moving clients at {}/s per node from {}",
                        a.rate,
                        a.moves
                            .iter()
                            .map(|m| format!("{} (~{})", m.node, m.sessions))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                Ok(s)
            }
            Request::Evacuate {
                cluster,
                node,
                rate,
                cancel,
            } => {
                let path = format!(
                    "/api/v1/clusters/{}/nodes/{}/evacuate",
                    encode(cluster),
                    encode(node)
                );
                let (method, body) = if *cancel {
                    (Method::DELETE, None)
                } else {
                    let body = match rate {
                        Some(r) => serde_json::json!({ "rate": r }),
                        None => serde_json::json!({}),
                    };
                    (Method::POST, Some(body.to_string()))
                };
                let out = self.call(method, &path, body).await?;
                let a: crate::admin::EvacuateAnswer = self.parse(&out)?;
                Ok(if *cancel {
                    format!(
                        "cluster {} node {}: evacuation {}; {} session(s) left on it\n",
                        a.cluster,
                        a.node,
                        if a.cancelled {
                            "cancelled, node ready again"
                        } else {
                            "was not running"
                        },
                        a.sessions
                    )
                } else {
                    format!(
                        "cluster {} node {}: maint, closing {} session(s) at {}/s (progress: mqgate status); {} sticky entr(ies) moved first\n",
                        a.cluster, a.node, a.sessions, a.rate, a.sticky_moved
                    )
                })
            }
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, body: &str) -> Result<T, ClientError> {
        serde_json::from_str(body).map_err(|error| ClientError::Unexpected {
            base: self.base.clone(),
            error,
        })
    }

    /// Send one request; `Ok(body)` for 2xx, else why not.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<String, ClientError> {
        let request = self.request(method, path, body)?;
        let stream = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.http_error(e))?;
        // The connection's errors reach us through `send_request` and the body.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| self.timeout())?
            .map_err(|e| self.http_error(e))?;
        let status = answer.status().as_u16();
        let body = tokio::time::timeout(
            ANSWER_TIMEOUT,
            Limited::new(answer.into_body(), MAX_ANSWER).collect(),
        )
        .await
        .map_err(|_| self.timeout())?
        .map_err(|error| {
            if error.is::<LengthLimitError>() {
                ClientError::TooLong {
                    base: self.base.clone(),
                }
            } else {
                ClientError::Body {
                    base: self.base.clone(),
                    error,
                }
            }
        })?
        .to_bytes();
        let payload = String::from_utf8_lossy(&body).into_owned();
        if (200..300).contains(&status) {
            return Ok(payload);
        }
        Err(self.refusal(status, &payload))
    }

    /// The request: `Host` as in the URL, `Connection: close`, the bearer token if
    /// any, and a JSON body for everything but GET.
    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<HttpRequest<Full<Bytes>>, ClientError> {
        let target = format!("{}{path}", self.prefix);
        let body = body.unwrap_or_default();
        let mut b = HttpRequest::builder()
            .uri(target.as_str())
            .header(header::HOST, self.host.as_str())
            .header(header::CONNECTION, "close")
            .header(
                header::USER_AGENT,
                concat!("mqgate/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::ACCEPT, "application/json");
        if let Some(t) = self.token {
            let mut v =
                HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| ClientError::BadToken)?;
            v.set_sensitive(true);
            b = b.header(header::AUTHORIZATION, v);
        }
        if method != Method::GET {
            b = b
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, body.len());
        }
        b.method(method)
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| ClientError::BadRequest {
                base: self.base.clone(),
                target,
                error,
            })
    }

    /// A TCP connection to the first address of the host that takes one within
    /// [`CONNECT_TIMEOUT`].
    async fn connect(&self) -> Result<tokio::net::TcpStream, ClientError> {
        let unreachable = |error| ClientError::Unreachable {
            base: self.base.clone(),
            error,
        };
        let addrs = tokio::net::lookup_host(self.host.as_str())
            .await
            .map_err(unreachable)?;
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        for a in addrs {
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(a)).await {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection to {a} within {CONNECT_TIMEOUT:?}"),
                    )
                }
            }
        }
        Err(unreachable(last))
    }

    /// An answer that is not HTTP (or none at all) says so; other errors as they are.
    fn http_error(&self, error: hyper::Error) -> ClientError {
        if error.is_parse() || error.is_incomplete_message() {
            ClientError::NotHttp {
                base: self.base.clone(),
            }
        } else {
            ClientError::Http {
                base: self.base.clone(),
                error,
            }
        }
    }

    fn timeout(&self) -> ClientError {
        ClientError::Timeout {
            base: self.base.clone(),
        }
    }

    /// A status outside 2xx: what the API's JSON `error` (else its text) says, with
    /// what to do about a missing or refused token.
    fn refusal(&self, status: u16, payload: &str) -> ClientError {
        let message = serde_json::from_str::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| payload.trim().to_string());
        match status {
            401 if self.token.is_none() => match self.token_problem {
                Some(p) => ClientError::TokenUnavailable {
                    problem: p.to_string(),
                },
                None => ClientError::TokenNeeded,
            },
            401 => ClientError::TokenRefused { message },
            403 => ClientError::Refused { message },
            _ => ClientError::Api {
                status,
                message: message.lines().next().unwrap_or("").to_string(),
            },
        }
    }
}

/// Percent-encode a path segment.
pub(super) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}
