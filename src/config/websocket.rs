//! `[listeners.websocket]`: the raw table to a typed [`WebSocketConfig`], each problem
//! reported against its key (`listeners[i].websocket.path`, …). Called from
//! `validate.rs`, so `mqgate check`, `run` and reload check it alike.

use super::raw::RawWebSocket;
use super::WebSocketConfig;

/// Check one listener's table; `err(key, message)` collects problems (`prefix` is
/// `listeners[i].websocket`).
pub(super) fn typed(
    raw: &RawWebSocket,
    prefix: &str,
    err: &mut dyn FnMut(String, String),
) -> WebSocketConfig {
    let p = &raw.path;
    if !p.starts_with('/')
        || p.bytes()
            .any(|b| b <= b' ' || b == b'?' || b == b'#' || b >= 0x7F)
    {
        err(
            format!("{prefix}.path"),
            format!("path {p:?} must start with \"/\" and hold no spaces, \"?\" or \"#\""),
        );
    }
    let mut allowed_origins = Vec::new();
    for (j, o) in raw.allowed_origins.iter().enumerate() {
        if valid_origin(o) {
            allowed_origins.push(o.to_ascii_lowercase());
        } else {
            err(
                format!("{prefix}.allowed_origins[{j}]"),
                format!(
                    "origin {o:?} is not of the form \"https://host[:port]\" (scheme and host, no path)"
                ),
            );
        }
    }
    WebSocketConfig {
        path: raw.path.clone(),
        allowed_origins,
    }
}

/// `scheme://host[:port]`, as a browser's `Origin` header carries it.
fn valid_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, p)) => (
                h,
                p.strip_prefix(':')
                    .or(if p.is_empty() { None } else { Some("x") }),
            ),
            None => return false,
        },
        None => match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return false;
    }
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, origins: &[&str]) -> Vec<String> {
        let raw = RawWebSocket {
            path: path.into(),
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
        };
        let mut errs = Vec::new();
        typed(&raw, "listeners[0].websocket", &mut |k, _| errs.push(k));
        errs
    }

    #[test]
    fn good_and_bad_values() {
        assert!(check(
            "/mqtt",
            &["https://App.example.com", "http://localhost:8080"]
        )
        .is_empty());
        assert_eq!(check("mqtt", &[]), ["listeners[0].websocket.path"]);
        assert_eq!(check("/a b", &[]), ["listeners[0].websocket.path"]);
        assert_eq!(
            check("/", &["app.example.com", "https://a/x", "https://a:99999"]),
            [
                "listeners[0].websocket.allowed_origins[0]",
                "listeners[0].websocket.allowed_origins[1]",
                "listeners[0].websocket.allowed_origins[2]"
            ]
        );
    }
}
