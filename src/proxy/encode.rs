//! The PROXY headers mqgate sends to brokers (`send_proxy_protocol`).
//!
//! Source: the real client (the PROXY source when a trusted balancer sent one, else
//! the TCP peer). Destination: the address the client connected to (the incoming
//! header's destination, else the client socket's local address). v2 adds
//! PP2_TYPE_AUTHORITY (SNI) and PP2_TYPE_SSL (client bits and verify as HAProxy's
//! `send-proxy-v2-ssl-cn` sets them; version, cipher, client certificate CN) when
//! mqgate terminated TLS. Mixed families are written as IPv6 (IPv4-mapped), as
//! the spec requires one family per header.

use super::parse::{
    PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS, PP2_CLIENT_SSL, PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN, PP2_SUBTYPE_SSL_VERSION, PP2_TYPE_AUTHORITY, PP2_TYPE_SSL, V2_SIG,
};
use super::ClientCtx;
use super::TlsInfo;
use crate::config::ProxyProtocolOut;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

/// IPv4-mapped IPv6 addresses (dual-stack sockets) as IPv4.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

fn unmap_sa(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(unmap(a.ip()), a.port())
}

/// Bring both addresses to one family: IPv4 if both are (or map to) IPv4, else IPv6.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (s, d) = (unmap_sa(src), unmap_sa(dst));
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if s.is_ipv4() == d.is_ipv4() {
        (s, d)
    } else {
        (v6(s), v6(d))
    }
}

/// The header to send to a broker before the client's bytes (empty when off).
/// `local` is used as the destination when the context knows none.
pub fn header_out(mode: ProxyProtocolOut, ctx: &ClientCtx, local: Option<SocketAddr>) -> Vec<u8> {
    let dst = ctx
        .proxied
        .as_ref()
        .and_then(|p| p.destination)
        .or(ctx.local)
        .or(local);
    let addrs = dst.map(|d| same_family(ctx.peer, d));
    match mode {
        ProxyProtocolOut::Off => Vec::new(),
        ProxyProtocolOut::V1 => v1_header(addrs),
        ProxyProtocolOut::V2 => v2_header(addrs, ctx.tls_info.as_ref()),
    }
}

/// The header for a connection of mqgate's own (a health check, the orphan cleaner),
/// not relayed for a client: v1 `PROXY UNKNOWN\r\n`, v2 the LOCAL command with no
/// addresses; a receiver uses the connection's own endpoints for both (the PROXY
/// protocol's rule for a proxy's health checks, and what HAProxy sends on them).
/// Empty when off.
pub fn own_connection_header(mode: ProxyProtocolOut) -> Vec<u8> {
    match mode {
        ProxyProtocolOut::Off => Vec::new(),
        ProxyProtocolOut::V1 => v1_header(None),
        ProxyProtocolOut::V2 => {
            let mut out = Vec::with_capacity(16);
            out.extend_from_slice(&super::parse::V2_SIG);
            // Version 2, command LOCAL; family and protocol UNSPEC; no address block.
            out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
            out
        }
    }
}

/// `PROXY TCP4|TCP6 src dst sport dport\r\n`, or `PROXY UNKNOWN\r\n` without addresses.
pub fn v1_header(addrs: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let _ = match addrs {
        Some((s, d)) => {
            let (s, d) = same_family(s, d);
            let proto = if s.is_ipv4() { "TCP4" } else { "TCP6" };
            write!(
                out,
                "PROXY {proto} {} {} {} {}\r\n",
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            )
        }
        None => write!(out, "PROXY UNKNOWN\r\n"),
    };
    out
}

/// Longest string value put in a TLV (a CN is at most 64 by X.520; SNI at most 255).
const MAX_TLV_STR: usize = 255;

fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let value = &value[..value.len().min(u16::MAX as usize)];
    out.push(kind);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

fn str_tlv(out: &mut Vec<u8>, kind: u8, s: &str) {
    let mut end = s.len().min(MAX_TLV_STR);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    tlv(out, kind, &s.as_bytes()[..end]);
}

/// The PP2_TYPE_SSL `client` field, as HAProxy sets it: SSL; with a client certificate
/// CERT_SESS (the TLS session has one), plus CERT_CONN when it was sent on this
/// connection (a full handshake, not a resumption). Mosquitto 2.1 counts a certificate
/// only with CERT_SESS set (and verify 0); CERT_CONN alone is refused as "no
/// certificate".
fn ssl_client_bits(t: &TlsInfo) -> u8 {
    let mut client = PP2_CLIENT_SSL;
    if t.client_cert {
        client |= PP2_CLIENT_CERT_SESS;
        if !t.resumed {
            client |= PP2_CLIENT_CERT_CONN;
        }
    }
    client
}

/// The OpenSSL name of a cipher suite, as HAProxy writes PP2_SUBTYPE_SSL_CIPHER (and
/// as the PROXY protocol spec's example, "ECDHE-RSA-AES128-GCM-SHA256", reads). TLS 1.3
/// suites have the same name in OpenSSL and IANA; the TLS 1.2 ones rustls offers are
/// listed (`openssl ciphers -stdname`); anything else is sent as it is.
fn openssl_cipher_name(iana: &str) -> &str {
    match iana {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => "ECDHE-RSA-CHACHA20-POLY1305",
        other => other,
    }
}

/// A v2 PROXY header (command PROXY, TCP over IPv4/IPv6, or UNSPEC without addresses),
/// with PP2_TYPE_AUTHORITY and PP2_TYPE_SSL when `tls` is given.
pub fn v2_header(addrs: Option<(SocketAddr, SocketAddr)>, tls: Option<&TlsInfo>) -> Vec<u8> {
    let mut body = Vec::with_capacity(128);
    let fam = match addrs.map(|(s, d)| same_family(s, d)) {
        Some((SocketAddr::V4(s), SocketAddr::V4(d))) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            body.extend_from_slice(&s.port().to_be_bytes());
            body.extend_from_slice(&d.port().to_be_bytes());
            0x11
        }
        Some((s, d)) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V6(v) => v.octets(),
                IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
            };
            body.extend_from_slice(&v6(s));
            body.extend_from_slice(&v6(d));
            body.extend_from_slice(&s.port().to_be_bytes());
            body.extend_from_slice(&d.port().to_be_bytes());
            0x21
        }
        None => 0x00,
    };
    if let Some(t) = tls {
        if let Some(sni) = &t.sni {
            str_tlv(&mut body, PP2_TYPE_AUTHORITY, sni);
        }
        let mut ssl = Vec::with_capacity(96);
        ssl.push(ssl_client_bits(t));
        // verify = 0 (X509_V_OK): rustls refused the handshake unless the certificate
        // verified, and a resumed session was made by such a handshake.
        ssl.extend_from_slice(&0u32.to_be_bytes());
        if let Some(v) = &t.version {
            str_tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, v);
        }
        if let Some(cn) = &t.client_cn {
            str_tlv(&mut ssl, PP2_SUBTYPE_SSL_CN, cn);
        }
        if let Some(c) = &t.cipher {
            str_tlv(&mut ssl, PP2_SUBTYPE_SSL_CIPHER, openssl_cipher_name(c));
        }
        tlv(&mut body, PP2_TYPE_SSL, &ssl);
    }
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&V2_SIG);
    out.push(0x21); // version 2, command PROXY
    out.push(fam);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{parse, Parsed, ProxyInfo};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn roundtrip(h: &[u8]) -> ProxyInfo {
        match parse(h) {
            Ok(Parsed::Complete { len, info }) if len == h.len() => info,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn v1_forms() {
        let h = v1_header(Some((sa("192.0.2.1:5000"), sa("10.0.0.1:1883"))));
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 10.0.0.1 5000 1883\r\n");
        let h = v1_header(Some((sa("[::ffff:192.0.2.1]:5000"), sa("10.0.0.1:1883"))));
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 10.0.0.1 5000 1883\r\n");
        let h = v1_header(Some((sa("[2001:db8::1]:5000"), sa("10.0.0.1:1883"))));
        assert_eq!(
            roundtrip(&h).destination,
            Some(sa("[::ffff:10.0.0.1]:1883"))
        );
        assert_eq!(v1_header(None), b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn own_connections_carry_unknown_or_local() {
        assert!(own_connection_header(ProxyProtocolOut::Off).is_empty());
        assert_eq!(
            own_connection_header(ProxyProtocolOut::V1),
            b"PROXY UNKNOWN\r\n"
        );
        let h = own_connection_header(ProxyProtocolOut::V2);
        assert_eq!(h.len(), 16);
        assert_eq!(h[12], 0x20, "version 2, command LOCAL");
        let info = roundtrip(&h);
        assert_eq!((info.version, info.source), (2, None));
    }

    #[test]
    fn v2_with_tls_round_trips() {
        let tls = TlsInfo {
            version: Some("TLSv1.3".into()),
            cipher: Some("TLS_AES_128_GCM_SHA256".into()),
            sni: Some("mqtt.example".into()),
            client_cn: Some("device-7".into()),
            client_cert: true,
            resumed: false,
        };
        let h = v2_header(
            Some((sa("192.0.2.1:5000"), sa("10.0.0.1:8883"))),
            Some(&tls),
        );
        let info = roundtrip(&h);
        assert_eq!(info.source, Some(sa("192.0.2.1:5000")));
        assert_eq!(info.authority.as_deref(), Some("mqtt.example"));
        let text = String::from_utf8_lossy(&h);
        for s in ["TLSv1.3", "TLS_AES_128_GCM_SHA256", "device-7"] {
            assert!(text.contains(s), "{s} missing");
        }
        let h6 = v2_header(Some((sa("[2001:db8::1]:1"), sa("[2001:db8::2]:2"))), None);
        assert_eq!(roundtrip(&h6).source, Some(sa("[2001:db8::1]:1")));
        assert_eq!(roundtrip(&v2_header(None, None)).source, None);
    }

    /// The PP2_TYPE_SSL value (client, verify, sub-TLVs) of a header without addresses.
    fn ssl_value(tls: &TlsInfo) -> Vec<u8> {
        let h = v2_header(None, Some(tls));
        let mut rest = &h[16..];
        while rest.len() >= 3 {
            let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
            if rest[0] == PP2_TYPE_SSL {
                return rest[3..3 + len].to_vec();
            }
            rest = &rest[3 + len..];
        }
        panic!("no PP2_TYPE_SSL in {h:?}");
    }

    /// HAProxy's bits, which Mosquitto 2.1 needs (CERT_SESS with verify 0).
    #[test]
    fn ssl_client_bits_match_haproxy() {
        let mut tls = TlsInfo {
            version: Some("TLSv1.3".into()),
            ..TlsInfo::default()
        };
        assert_eq!(&ssl_value(&tls)[..5], &[0x01, 0, 0, 0, 0], "no certificate");
        tls.client_cert = true;
        tls.client_cn = Some("dev1".into());
        assert_eq!(
            &ssl_value(&tls)[..5],
            &[0x07, 0, 0, 0, 0],
            "full handshake: SSL | CERT_CONN | CERT_SESS"
        );
        tls.resumed = true;
        assert_eq!(
            &ssl_value(&tls)[..5],
            &[0x05, 0, 0, 0, 0],
            "resumed: SSL | CERT_SESS"
        );
        tls.client_cert = false;
        assert_eq!(ssl_value(&tls)[0], 0x01, "resumed, no certificate");
    }

    #[test]
    fn cipher_sub_tlv_uses_openssl_names() {
        for (iana, sent) in [
            ("TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"),
            (
                "TLS_CHACHA20_POLY1305_SHA256",
                "TLS_CHACHA20_POLY1305_SHA256",
            ),
            (
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "ECDHE-RSA-AES256-GCM-SHA384",
            ),
            (
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "ECDHE-ECDSA-CHACHA20-POLY1305",
            ),
            ("SomethingElse", "SomethingElse"),
        ] {
            let tls = TlsInfo {
                cipher: Some(iana.into()),
                ..TlsInfo::default()
            };
            let ssl = ssl_value(&tls);
            let mut want = vec![PP2_SUBTYPE_SSL_CIPHER, 0, sent.len() as u8];
            want.extend_from_slice(sent.as_bytes());
            assert_eq!(&ssl[5..], &want[..], "{iana}");
        }
    }
}
