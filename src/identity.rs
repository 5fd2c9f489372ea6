//! Client-certificate identity on an mTLS listener (`[listeners.tls] username_from`,
//! `client_id_from`, `require_username_match`, `require_client_id_match`): what NGINX
//! Plus's `mqtt_set_connect` does. A broker behind TLS termination cannot see the
//! client's certificate (Mosquitto 2.0 reads no PROXY header, and
//! `use_identity_as_username` / `use_subject_as_username` need the TLS session), so
//! mqgate puts the certificate's identity into the CONNECT it forwards, or refuses a
//! CONNECT that claims another one.
//!
//! [`CertIds::from_der`] reads the configured fields once, after the handshake;
//! [`apply`] decides per CONNECT: forward unchanged, forward a rewritten CONNECT
//! (`crate::mqtt::rewrite`), or refuse (CONNACK 0x05 on 3.x, 0x87 on 5.0).

use crate::config::{CertField, IdentityPolicy};
use crate::mqtt::rewrite::rewrite_connect;
use crate::mqtt::Connect;
use x509_parser::extensions::GeneralName;
use x509_parser::objects::{oid2abbrev, oid_registry};

pub use crate::proxy::CertIds;

impl CertIds {
    /// Read what `policy` needs from the leaf certificate `der`.
    pub fn from_der(der: &[u8], policy: &IdentityPolicy) -> Self {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return CertIds::default();
        };
        let get = |f: Option<CertField>| f.and_then(|f| field(&cert, f));
        CertIds {
            username: get(policy.username_field()),
            client_id: get(policy.client_id_field()),
        }
    }
}

fn field(cert: &x509_parser::certificate::X509Certificate<'_>, f: CertField) -> Option<String> {
    match f {
        CertField::Cn => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        CertField::Subject => Some(rfc4514(cert.subject())),
        CertField::SanDns | CertField::SanEmail => {
            let san = cert.subject_alternative_name().ok()??;
            san.value.general_names.iter().find_map(|n| match (f, n) {
                (CertField::SanDns, GeneralName::DNSName(d)) => Some(d.to_string()),
                (CertField::SanEmail, GeneralName::RFC822Name(e)) => Some(e.to_string()),
                _ => None,
            })
        }
    }
}

/// The subject as RFC 4514 (RFC 2253) writes it, most specific first, short attribute
/// names: `CN=dev1,O=Example,C=DE`, as OpenSSL's `XN_FLAG_RFC2253` (and so Mosquitto's
/// `use_subject_as_username`) does.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let reg = oid_registry();
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|a| {
                    let key = oid2abbrev(a.attr_type(), reg)
                        .map(str::to_string)
                        .unwrap_or_else(|_| a.attr_type().to_id_string());
                    let val = a.as_str().map(escape).unwrap_or_default();
                    format!("{key}={val}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == v.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What to do with a CONNECT.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Forward it as it is.
    Unchanged,
    /// Forward this CONNECT instead; the fields rewritten, for the counter.
    Rewritten(Vec<u8>, &'static [&'static str]),
    /// Refuse with "not authorized"; why, for the log.
    Refuse(String),
}

/// Apply `policy` to the CONNECT `packet` (parsed as `c`) of a client whose
/// certificate gave `ids`.
pub fn apply(packet: &[u8], c: &Connect<'_>, policy: &IdentityPolicy, ids: &CertIds) -> Decision {
    let need = |field: Option<CertField>, value: &Option<String>, what: &str| match (field, value) {
        (Some(f), None) => Err(format!(
            "the client certificate has no {} for the {what}",
            f.as_str()
        )),
        _ => Ok(()),
    };
    if let Err(why) = need(policy.username_field(), &ids.username, "username").and(need(
        policy.client_id_field(),
        &ids.client_id,
        "client id",
    )) {
        return Decision::Refuse(why);
    }
    if policy.require_username_match.is_some() {
        let want = ids.username.as_deref();
        if c.username != want {
            return Decision::Refuse(format!(
                "username {:?} is not the certificate's {:?}",
                c.username.unwrap_or("(none)"),
                want.unwrap_or_default()
            ));
        }
    }
    if policy.require_client_id_match.is_some() {
        let want = ids.client_id.as_deref().unwrap_or_default();
        if c.client_id != want {
            return Decision::Refuse(format!(
                "client id {:?} is not the certificate's {want:?}",
                c.client_id
            ));
        }
    }
    let new_user = policy
        .username_from
        .and(ids.username.as_deref())
        .filter(|u| c.username != Some(*u));
    let new_id = policy
        .client_id_from
        .and(ids.client_id.as_deref())
        .filter(|id| c.client_id != *id);
    let fields: &'static [&'static str] = match (new_id.is_some(), new_user.is_some()) {
        (false, false) => return Decision::Unchanged,
        (true, false) => &["client_id"],
        (false, true) => &["username"],
        (true, true) => &["client_id", "username"],
    };
    match rewrite_connect(packet, c, new_id, new_user) {
        Ok(p) => Decision::Rewritten(p, fields),
        Err(e) => Decision::Refuse(format!("cannot rewrite the CONNECT: {e}")),
    }
}

/// The session step, on a listener with an active identity `policy`: decide on the CONNECT in
/// `buf[..len]` (followed by whatever the client sent after it). Answers the buffer to
/// forward and its CONNECT length, or `None` when the client was refused (CONNACK
/// "not authorized", counted as `reason="identity"`, logged).
pub(crate) async fn enforce<S>(
    data: &crate::runtime::DataPath,
    lst: &crate::runtime::ListenerRt,
    ctx: &crate::proxy::ClientCtx,
    client: &mut S,
    buf: Vec<u8>,
    len: usize,
    policy: &IdentityPolicy,
) -> Option<(Vec<u8>, usize)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(c) = crate::mqtt::parse_connect(&buf[..len]) else {
        return Some((buf, len)); // refused by the caller's parse, as any malformed CONNECT
    };
    let ids = ctx.cert_ids.as_deref().cloned().unwrap_or_default();
    let lname = lst.config.name.as_str();
    match apply(&buf[..len], &c, policy, &ids) {
        Decision::Unchanged => Some((buf, len)),
        Decision::Rewritten(mut packet, fields) => {
            tracing::debug!(?fields, "CONNECT rewritten from the client certificate");
            for f in fields {
                data.metrics
                    .identity_rewrites
                    .with_label_values(&[lname, f])
                    .inc();
            }
            let n = packet.len();
            packet.extend_from_slice(&buf[len..]);
            Some((packet, n))
        }
        Decision::Refuse(why) => {
            let v5 = c.version.is_v5();
            let code = if v5 { 0x87 } else { 0x05 };
            tracing::debug!(reason = "identity", "refused: {why}");
            data.metrics.reject(lname, crate::metrics::Reject::Identity);
            crate::reply::log_refusal(
                data,
                lst,
                ctx,
                Some(&c),
                crate::metrics::Reject::Identity,
                Some(code),
            );
            Box::pin(crate::reply::refuse(client, v5, code)).await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::parse_connect;

    fn v311(user: Option<&str>) -> Vec<u8> {
        crate::mqtt::connect::encode_connect(false, "c1", user, None, 60)
    }

    #[test]
    fn check_refuses_another_identity_and_rewrite_replaces_it() {
        let ids = CertIds {
            username: Some("dev1".into()),
            client_id: Some("dev1".into()),
        };
        let p = v311(Some("dev2"));
        let c = parse_connect(&p).unwrap();
        let check = IdentityPolicy {
            require_username_match: Some(CertField::Cn),
            ..Default::default()
        };
        assert!(matches!(apply(&p, &c, &check, &ids), Decision::Refuse(_)));
        let rewrite = IdentityPolicy {
            username_from: Some(CertField::Cn),
            client_id_from: Some(CertField::Cn),
            ..Default::default()
        };
        match apply(&p, &c, &rewrite, &ids) {
            Decision::Rewritten(out, fields) => {
                let n = parse_connect(&out).unwrap();
                assert_eq!((n.client_id, n.username), ("dev1", Some("dev1")));
                assert_eq!(fields, &["client_id", "username"]);
            }
            other => panic!("{other:?}"),
        }
        let p = v311(Some("dev1"));
        let c = parse_connect(&p).unwrap();
        assert_eq!(apply(&p, &c, &check, &ids), Decision::Unchanged);
        let none = CertIds::default();
        assert!(matches!(
            apply(&p, &c, &rewrite, &none),
            Decision::Refuse(_)
        ));
    }

    #[test]
    fn subject_escapes_specials() {
        assert_eq!(escape("a,b"), "a\\,b");
        assert_eq!(escape(" x "), "\\ x\\ ");
    }
}
