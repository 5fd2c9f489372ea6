//! The HTTP/1.1 upgrade request (RFC 6455 section 4.2): a pure parser over the request
//! head, bounded by [`MAX_HEAD`], that answers either the `101 Switching Protocols`
//! response or a refusal (an HTTP status, the `mqgate_connections_rejected_total`
//! reason and why). No I/O here: `super::accept` reads and writes.

use crate::metrics::Reject;

/// The longest request head read (request line and headers): a longer one is refused
/// with 431 without reading further. Browsers send 400–900 bytes; cookies for the
/// host come along, hence some room.
pub const MAX_HEAD: usize = 8192;

/// Subprotocols of MQTT over WebSocket: `mqtt` (3.1.1 and 5, OASIS) and `mqttv3.1`
/// (older clients). The first one the client lists is answered.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What the listener accepts (`[listeners.websocket]`).
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub path: &'a str,
    /// Lower-case origins; empty = any origin (and none).
    pub allowed_origins: &'a [String],
}

/// A refused upgrade: the HTTP answer and how it is counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: Reject,
    pub why: String,
}

impl Refusal {
    fn new(status: u16, reason: Reject, why: impl Into<String>) -> Self {
        Refusal {
            status,
            reason,
            why: why.into(),
        }
    }

    /// The response bytes: a short text body, `Connection: close`; 426 names what to
    /// upgrade to.
    pub fn response(&self) -> Vec<u8> {
        let text = match self.status {
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            426 => "Upgrade Required",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        let extra = if self.status == 426 {
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        } else {
            ""
        };
        let body = format!("{}\n", self.why);
        format!(
            "HTTP/1.1 {} {text}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.status,
            body.len()
        )
        .into_bytes()
    }
}

/// Where the request head ends (the index after `\r\n\r\n`), once it is all there.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// A refusal decided before the head is complete: bytes that cannot start an HTTP
/// request (an MQTT CONNECT or a TLS hello on a WebSocket port) are answered at once
/// instead of waiting for a blank line that will never come.
pub fn early_refusal(buf: &[u8]) -> Option<Refusal> {
    let first = *buf.first()?;
    (!first.is_ascii_uppercase()).then(|| {
        Refusal::new(
            400,
            Reject::WsRequest,
            "not an HTTP request (MQTT over WebSocket is expected here)",
        )
    })
}

/// Check a complete request head; the `101` response on success.
pub fn respond(head: &[u8], policy: &Policy<'_>) -> Result<Vec<u8>, Refusal> {
    let bad = |why: &str| Refusal::new(400, Reject::WsRequest, why);
    let text = std::str::from_utf8(head).map_err(|_| bad("request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err(bad("malformed request line")),
    };
    if version != "HTTP/1.1" {
        return Err(bad("not an HTTP/1.1 request"));
    }
    if method != "GET" {
        return Err(bad("a WebSocket upgrade is a GET"));
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != policy.path {
        return Err(Refusal::new(
            404,
            Reject::WsPath,
            format!("no WebSocket endpoint at {path:?}"),
        ));
    }
    let mut h = Headers::default();
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("malformed header line"));
        };
        if name.is_empty() || !name.bytes().all(is_token) {
            return Err(bad("malformed header name"));
        }
        h.add(name, value.trim_matches([' ', '\t']));
    }
    if !h.has_token(&h.upgrade, "websocket") || !h.has_token(&h.connection, "upgrade") {
        return Err(Refusal::new(
            426,
            Reject::WsUpgrade,
            "this endpoint speaks MQTT over WebSocket only",
        ));
    }
    if h.version.as_deref() != Some("13") {
        return Err(Refusal::new(
            426,
            Reject::WsUpgrade,
            "unsupported Sec-WebSocket-Version (13 expected)",
        ));
    }
    if h.host == 0 {
        return Err(bad("no Host header"));
    }
    let key = match h.key {
        Some(k) if valid_key(k) => k,
        _ => return Err(bad("missing or malformed Sec-WebSocket-Key")),
    };
    if !policy.allowed_origins.is_empty() {
        if let Some(o) = h.origin {
            if !policy
                .allowed_origins
                .iter()
                .any(|a| a.eq_ignore_ascii_case(o))
            {
                return Err(Refusal::new(
                    403,
                    Reject::WsOrigin,
                    format!("origin {o:?} is not allowed"),
                ));
            }
        }
    }
    let protocol = h
        .protocols
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| SUBPROTOCOLS.iter().any(|s| s.eq_ignore_ascii_case(p)))
        .ok_or_else(|| {
            Refusal::new(
                400,
                Reject::WsSubprotocol,
                "Sec-WebSocket-Protocol must offer mqtt (or mqttv3.1)",
            )
        })?;
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n",
        accept_key(key)
    )
    .into_bytes())
}

#[derive(Default)]
struct Headers<'a> {
    host: usize,
    upgrade: Vec<&'a str>,
    connection: Vec<&'a str>,
    version: Option<String>,
    key: Option<&'a str>,
    origin: Option<&'a str>,
    protocols: Vec<&'a str>,
}

impl<'a> Headers<'a> {
    fn add(&mut self, name: &str, value: &'a str) {
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("host") {
            self.host += 1;
        } else if is("upgrade") {
            self.upgrade.push(value);
        } else if is("connection") {
            self.connection.push(value);
        } else if is("sec-websocket-version") {
            self.version = Some(value.to_string());
        } else if is("sec-websocket-key") {
            self.key = Some(value);
        } else if is("origin") {
            self.origin = Some(value);
        } else if is("sec-websocket-protocol") {
            self.protocols.push(value);
        }
    }

    fn has_token(&self, values: &[&str], token: &str) -> bool {
        values
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A base64 encoding of 16 bytes: 22 characters and `==`.
fn valid_key(k: &str) -> bool {
    let b = k.as_bytes();
    b.len() == 24
        && b[22..] == *b"=="
        && b[..22]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

/// `Sec-WebSocket-Accept` for a client key.
pub fn accept_key(key: &str) -> String {
    let mut input = Vec::with_capacity(key.len() + GUID.len());
    input.extend_from_slice(key.as_bytes());
    input.extend_from_slice(GUID.as_bytes());
    base64(&sha1(&input))
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// SHA-1 (FIPS 180-4), only for the handshake's accept key (RFC 6455 requires it; it
/// protects nothing here).
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn req(path: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET {path} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    fn policy(origins: &[String]) -> Policy<'_> {
        Policy {
            path: "/mqtt",
            allowed_origins: origins,
        }
    }

    #[test]
    fn rfc_6455_example_key() {
        assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
    }

    #[test]
    fn accepts_and_answers_the_offered_subprotocol() {
        let r = respond(
            &req("/mqtt?x=1", "Sec-WebSocket-Protocol: mqttv3.1\r\n"),
            &policy(&[]),
        );
        let r = String::from_utf8(r.unwrap()).unwrap();
        assert!(r.starts_with("HTTP/1.1 101 "), "{r}");
        assert!(r.contains("Sec-WebSocket-Protocol: mqttv3.1\r\n"), "{r}");
        assert!(r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn each_bad_request_has_its_status_and_reason() {
        let o = vec!["https://app.example.com".to_string()];
        let p = "Sec-WebSocket-Protocol: mqtt\r\n";
        let cases: Vec<(Vec<u8>, u16, Reject)> = vec![
            (
                b"GET /mqtt HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                426,
                Reject::WsUpgrade,
            ),
            (req("/other", p), 404, Reject::WsPath),
            (req("/mqtt", ""), 400, Reject::WsSubprotocol),
            (
                req("/mqtt", "Sec-WebSocket-Protocol: chat\r\n"),
                400,
                Reject::WsSubprotocol,
            ),
            (
                req(
                    "/mqtt",
                    "Origin: https://evil.example\r\nSec-WebSocket-Protocol: mqtt\r\n",
                ),
                403,
                Reject::WsOrigin,
            ),
            (
                b"POST /mqtt HTTP/1.1\r\n\r\n".to_vec(),
                400,
                Reject::WsRequest,
            ),
            (
                b"\x10\x0c\x00\x04MQTT\r\n\r\n".to_vec(),
                400,
                Reject::WsRequest,
            ),
        ];
        for (head, status, reason) in cases {
            let e = respond(&head, &policy(&o)).unwrap_err();
            assert_eq!(
                (e.status, e.reason),
                (status, reason),
                "{}",
                String::from_utf8_lossy(&head)
            );
            let resp = String::from_utf8(e.response()).unwrap();
            assert!(resp.starts_with(&format!("HTTP/1.1 {status} ")));
        }
        let ok = req(
            "/mqtt",
            "Origin: HTTPS://app.example.com\r\nSec-WebSocket-Protocol: mqtt\r\n",
        );
        assert!(respond(&ok, &policy(&o)).is_ok());
        assert!(
            respond(&req("/mqtt", p), &policy(&o)).is_ok(),
            "no Origin: not a browser"
        );
    }

    #[test]
    fn bytes_that_cannot_start_a_request_are_refused_at_once() {
        assert_eq!(early_refusal(&[0x10, 0x0c]).map(|r| r.status), Some(400));
        assert!(early_refusal(b"GE").is_none() && early_refusal(b"").is_none());
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nxx"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
