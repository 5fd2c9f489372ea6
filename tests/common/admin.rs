//! The admin HTTP API as a client sees it: requests, metric samples, the JSON status
//! and sticky entries.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Send `head` (request line and headers, no final blank line) and `body` to
/// 127.0.0.1:`port`; `Connection: close` and `Content-Length` are added. Reads the
/// answer to its end: (status, body).
pub fn request(port: u16, head: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no HTTP status in {text:?}"),
            )
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `method path` with a JSON `body` and, if given, `Authorization: Bearer token`:
/// (status, body).
pub fn http(
    method: &str,
    port: u16,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let auth = token
        .map(|t| format!("\r\nAuthorization: Bearer {t}"))
        .unwrap_or_default();
    request(
        port,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1{auth}\r\nContent-Type: application/json"
        ),
        body.unwrap_or(""),
    )
}

/// Sum of the samples of `name` whose labels include all of `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, lbl) = match head.find('{') {
            Some(i) => (&head[..i], &head[i..]),
            None => (head, ""),
        };
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| lbl.contains(&format!("{k}=\"{v}\"")))
        {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

/// `GET /api/v1/status`, which must answer 200 with JSON.
pub fn status_json(port: u16) -> serde_json::Value {
    let (code, body) = http("GET", port, "/api/v1/status", None, None).expect("GET status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status is JSON")
}

/// `field` of node `node` of the first cluster in a status.
pub fn node_field(status: &serde_json::Value, node: &str, field: &str) -> serde_json::Value {
    status["clusters"][0]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == node)
        .unwrap_or_else(|| panic!("node {node} in {status}"))[field]
        .clone()
}

/// The node of sticky entry `key` in cluster `brokers`, from
/// `GET /api/v1/clusters/brokers/sticky/{key}` (no token).
pub fn sticky_node(admin: u16, key: &str) -> Option<String> {
    let (status, body) = http(
        "GET",
        admin,
        &format!("/api/v1/clusters/brokers/sticky/{key}"),
        None,
        None,
    )
    .ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v.get("node")?.as_str().map(str::to_string)
}

/// `PUT /api/v1/clusters/brokers/nodes/{node}/state` (no token), which must answer 200.
pub fn set_node_state(admin: u16, node: &str, state: &str) {
    let (status, body) = http(
        "PUT",
        admin,
        &format!("/api/v1/clusters/brokers/nodes/{node}/state"),
        Some(&format!("{{\"state\":\"{state}\"}}")),
        None,
    )
    .expect("admin API answers");
    assert_eq!(status, 200, "PUT state {state}: {body}");
}

/// `mqgate cluster rebalance brokers [args]` against the admin API on `admin` (no
/// token): what the command printed; it must succeed.
pub fn cli_rebalance(admin: u16, args: &[&str]) -> String {
    let url = format!("http://127.0.0.1:{admin}");
    let mut all = vec!["cluster", "rebalance", "brokers"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--admin", &url]);
    let out = crate::common::mqgate(&all);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said
}
