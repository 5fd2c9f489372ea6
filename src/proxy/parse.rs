//! The PROXY header parser: a pure, incremental function over bytes (no I/O), so that it
//! is unit-tested and fuzzed on its own (`fuzz/fuzz_targets/proxy_header.rs`).
//!
//! [`parse`] answers [`Parsed::Incomplete`] only while every byte seen so far can still
//! be part of a header (a prefix of a signature, a v1 line without its CRLF, a v2 header
//! shorter than its declared length). The socket reader relies on that: it may consume
//! all bytes of an incomplete header without ever eating a client byte. Once a decision
//! (complete or error) has been made for a prefix, more bytes never change it.
//!
//! Formats: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature (12 bytes).
pub const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 line starts with this.
pub const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest v1 line, CRLF included (spec: 107).
pub const V1_MAX: usize = 107;
/// Longest v2 address block + TLVs accepted (HAProxy keeps headers within a buffer too).
pub const V2_MAX_BODY: usize = 8 * 1024;

/// What a PROXY header said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyInfo {
    /// 1 or 2.
    pub version: u8,
    /// The real client address (None for LOCAL / UNKNOWN / UNSPEC / UNIX).
    pub source: Option<SocketAddr>,
    /// The address the client connected to at the upstream balancer.
    pub destination: Option<SocketAddr>,
    /// v2 PP2_TYPE_AUTHORITY (the SNI the balancer saw), if sent.
    pub authority: Option<String>,
}

/// Result of [`parse`] on the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Every byte so far may belong to a header; more are needed.
    Incomplete,
    /// A header of `len` bytes; the client's own bytes start after it.
    Complete { len: usize, info: ProxyInfo },
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY header (neither the v1 nor the v2 signature)")]
    NotProxy,
    #[error("PROXY v1 line longer than 107 bytes")]
    V1TooLong,
    #[error("PROXY v2 header longer than {} bytes", 16 + V2_MAX_BODY)]
    V2TooLong,
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
}

/// Parse a PROXY v1 or v2 header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(HeaderError::NotProxy),
    }
}

fn is_prefix_of(buf: &[u8], sig: &[u8]) -> bool {
    let n = buf.len().min(sig.len());
    buf[..n] == sig[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, HeaderError> {
    if !is_prefix_of(buf, V1_PREFIX) {
        return Err(HeaderError::NotProxy);
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(HeaderError::V1TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    if lf < V1_PREFIX.len() + 1 || window[lf - 1] != b'\r' {
        return Err(HeaderError::Malformed("v1 line does not end with CRLF"));
    }
    let line = std::str::from_utf8(&window[V1_PREFIX.len()..lf - 1])
        .map_err(|_| HeaderError::Malformed("v1 line is not ASCII"))?;
    let mut parts = line.split(' ');
    let proto = parts.next().unwrap_or("");
    let mut info = ProxyInfo {
        version: 1,
        ..ProxyInfo::default()
    };
    match proto {
        // "the receiver must ignore anything presented before the CRLF is found"
        "UNKNOWN" => {}
        "TCP4" | "TCP6" => {
            let fields: Vec<&str> = parts.collect();
            let [src, dst, sport, dport] = fields[..] else {
                return Err(HeaderError::Malformed("v1 line needs 4 address fields"));
            };
            let (src, dst) = if proto == "TCP4" {
                (
                    IpAddr::V4(v1_ip::<Ipv4Addr>(src)?),
                    IpAddr::V4(v1_ip::<Ipv4Addr>(dst)?),
                )
            } else {
                (
                    IpAddr::V6(v1_ip::<Ipv6Addr>(src)?),
                    IpAddr::V6(v1_ip::<Ipv6Addr>(dst)?),
                )
            };
            info.source = Some(SocketAddr::new(src, v1_port(sport)?));
            info.destination = Some(SocketAddr::new(dst, v1_port(dport)?));
        }
        _ => {
            return Err(HeaderError::Malformed(
                "v1 protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    }
    Ok(Parsed::Complete { len: lf + 1, info })
}

fn v1_ip<T: std::str::FromStr>(s: &str) -> Result<T, HeaderError> {
    s.parse()
        .map_err(|_| HeaderError::Malformed("v1 address is not a valid IP address"))
}

fn v1_port(s: &str) -> Result<u16, HeaderError> {
    let digits_only = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (s.len() > 1 && s.starts_with('0')) {
        return Err(HeaderError::Malformed("v1 port is not a decimal number"));
    }
    s.parse()
        .map_err(|_| HeaderError::Malformed("v1 port is over 65535"))
}

/// v2 address families (high nibble; 0 is UNSPEC) we read addresses from.
const AF_INET: u8 = 0x1;
const AF_INET6: u8 = 0x2;
const AF_UNIX: u8 = 0x3;

/// TLV types used here.
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
pub const PP2_TYPE_SSL: u8 = 0x20;
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
pub const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
pub const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
pub const PP2_CLIENT_SSL: u8 = 0x01;
pub const PP2_CLIENT_CERT_CONN: u8 = 0x02;
pub const PP2_CLIENT_CERT_SESS: u8 = 0x04;

fn parse_v2(buf: &[u8]) -> Result<Parsed, HeaderError> {
    if !is_prefix_of(buf, &V2_SIG) {
        return Err(HeaderError::NotProxy);
    }
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(HeaderError::Malformed("v2 version nibble is not 2"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(HeaderError::Malformed("v2 command is not LOCAL or PROXY")),
    };
    let fam = buf[13];
    let (family, transport) = (fam >> 4, fam & 0x0f);
    if family > AF_UNIX || transport > 2 {
        return Err(HeaderError::Malformed("v2 unknown address family"));
    }
    let body_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if body_len > V2_MAX_BODY {
        return Err(HeaderError::V2TooLong);
    }
    let addr_len = match family {
        AF_INET => 12,
        AF_INET6 => 36,
        AF_UNIX => 216,
        _ => 0,
    };
    if body_len < addr_len {
        return Err(HeaderError::Malformed(
            "v2 length shorter than its address block",
        ));
    }
    let total = 16 + body_len;
    if buf.len() < total {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[16..total];
    let mut info = ProxyInfo {
        version: 2,
        ..ProxyInfo::default()
    };
    // Datagram transports make no sense on a stream listener: keep the balancer's
    // address, like LOCAL, rather than trusting it.
    if !local && transport == 1 {
        match family {
            AF_INET => {
                let ip = |o: usize| Ipv4Addr::new(body[o], body[o + 1], body[o + 2], body[o + 3]);
                let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                info.source = Some(SocketAddr::new(IpAddr::V4(ip(0)), port(8)));
                info.destination = Some(SocketAddr::new(IpAddr::V4(ip(4)), port(10)));
            }
            AF_INET6 => {
                let ip = |o: usize| {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&body[o..o + 16]);
                    Ipv6Addr::from(a)
                };
                let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                info.source = Some(SocketAddr::new(IpAddr::V6(ip(0)), port(32)));
                info.destination = Some(SocketAddr::new(IpAddr::V6(ip(16)), port(34)));
            }
            _ => {}
        }
    }
    let mut tlvs = &body[addr_len..];
    while !tlvs.is_empty() {
        if tlvs.len() < 3 {
            return Err(HeaderError::Malformed("v2 TLV header cut short"));
        }
        let (kind, len) = (tlvs[0], usize::from(u16::from_be_bytes([tlvs[1], tlvs[2]])));
        if tlvs.len() < 3 + len {
            return Err(HeaderError::Malformed("v2 TLV longer than the header"));
        }
        let value = &tlvs[3..3 + len];
        if kind == PP2_TYPE_AUTHORITY {
            let host = std::str::from_utf8(value)
                .map_err(|_| HeaderError::Malformed("v2 authority is not UTF-8"))?;
            info.authority = Some(host.to_string());
        }
        tlvs = &tlvs[3 + len..];
    }
    Ok(Parsed::Complete { len: total, info })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (usize, ProxyInfo) {
        match parse(buf) {
            Ok(Parsed::Complete { len, info }) => (len, info),
            other => panic!("expected a complete header, got {other:?}"),
        }
    }

    #[test]
    fn v1_tcp4_and_following_bytes() {
        let mut b = b"PROXY TCP4 192.0.2.1 198.51.100.2 51000 1883\r\n".to_vec();
        let header_len = b.len();
        b.extend_from_slice(&[0x10, 0x0c]);
        let (len, info) = complete(&b);
        assert_eq!(len, header_len);
        assert_eq!(info.version, 1);
        assert_eq!(info.source, Some("192.0.2.1:51000".parse().unwrap()));
        assert_eq!(info.destination, Some("198.51.100.2:1883".parse().unwrap()));
        for n in 0..header_len {
            assert_eq!(
                parse(&b[..n]),
                Ok(Parsed::Incomplete),
                "prefix of {n} bytes"
            );
        }
    }

    #[test]
    fn v1_tcp6_and_unknown() {
        let (_, info) = complete(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n");
        assert_eq!(info.source, Some("[2001:db8::1]:1".parse().unwrap()));
        let (len, info) = complete(b"PROXY UNKNOWN ffff::1 whatever\r\nXYZ");
        assert_eq!(len, 32);
        assert_eq!(info.source, None);
        let (_, info) = complete(b"PROXY UNKNOWN\r\n");
        assert_eq!(info.source, None);
    }

    #[test]
    fn v1_refusals() {
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 +2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY \r\n",
        ];
        for b in bad {
            assert!(
                matches!(parse(b), Err(HeaderError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HeaderError::NotProxy));
        assert_eq!(parse(b"PROXX"), Err(HeaderError::NotProxy));
        assert_eq!(parse(&[0x10, 0x0c]), Err(HeaderError::NotProxy));
        let long = [b"PROXY ".as_slice(), &[b'A'; 101]].concat();
        assert_eq!(parse(&long), Err(HeaderError::V1TooLong));
        assert_eq!(parse(&long[..106]), Ok(Parsed::Incomplete));
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut b = V2_SIG.to_vec();
        b.push(0x20 | cmd);
        b.push(fam);
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn v2_tcp4_with_tlvs_incremental() {
        let mut body = vec![192, 0, 2, 1, 10, 0, 0, 1, 0xc7, 0x38, 0x07, 0x5b];
        body.extend_from_slice(&[PP2_TYPE_AUTHORITY, 0, 3, b'a', b'.', b'b']);
        body.extend_from_slice(&[0x04, 0, 2, 0, 0]); // NOOP padding
        let mut b = v2(1, 0x11, &body);
        let header_len = b.len();
        b.extend_from_slice(b"\x10\x0c rest");
        let (len, info) = complete(&b);
        assert_eq!(len, header_len);
        assert_eq!(info.source, Some("192.0.2.1:51000".parse().unwrap()));
        assert_eq!(info.destination, Some("10.0.0.1:1883".parse().unwrap()));
        assert_eq!(info.authority.as_deref(), Some("a.b"));
        for n in 0..header_len {
            assert_eq!(
                parse(&b[..n]),
                Ok(Parsed::Incomplete),
                "prefix of {n} bytes"
            );
        }
    }

    #[test]
    fn v2_tcp6_local_unspec() {
        let mut body = vec![0u8; 36];
        body[15] = 1; // ::1
        body[31] = 2; // ::2
        body[32..34].copy_from_slice(&1234u16.to_be_bytes());
        let (_, info) = complete(&v2(1, 0x21, &body));
        assert_eq!(info.source, Some("[::1]:1234".parse().unwrap()));
        let (_, info) = complete(&v2(0, 0x21, &body));
        assert_eq!(info.source, None, "LOCAL keeps the balancer's address");
        let (len, info) = complete(&v2(1, 0x00, &[]));
        assert_eq!((len, info.source), (16, None));
        let (_, info) = complete(&v2(1, 0x12, &[0; 12]));
        assert_eq!(info.source, None, "UDP is not trusted on a stream listener");
    }

    #[test]
    fn v2_refusals() {
        let mut bad = v2(1, 0x11, &[0; 12]);
        bad[12] = 0x11;
        assert_eq!(
            parse(&bad),
            Err(HeaderError::Malformed("v2 version nibble is not 2"))
        );
        assert!(parse(&v2(2, 0x11, &[0; 12])).is_err());
        assert!(parse(&v2(1, 0x41, &[0; 12])).is_err());
        assert!(parse(&v2(1, 0x11, &[0; 11])).is_err());
        assert!(parse(&v2(1, 0x11, &[0; 14])).is_err(), "cut TLV");
        let mut cut = vec![0; 12];
        cut.extend_from_slice(&[0x04, 0, 9, 0]);
        assert!(parse(&v2(1, 0x11, &cut)).is_err(), "TLV past the end");
        let mut huge = v2(1, 0x11, &[0; 12]);
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&huge), Err(HeaderError::V2TooLong));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIT\r"), Err(HeaderError::NotProxy));
    }
}
