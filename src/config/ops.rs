//! Validation of the operator-facing keys of issue 29: the access log (`[log] access`,
//! `access_format`, `access_syslog_socket`), a listener's own `max_connections`, and
//! client-certificate identity on an mTLS listener (`[listeners.tls] username_from`,
//! `client_id_from`, `require_username_match`, `require_client_id_match`).
//!
//! Called from `validate.rs`; each function returns its typed value and pushes its
//! errors, so that `mqgate check`, start-up and reload refuse the same files.

use super::raw::{RawLog, RawTls};
use super::ConfigError;
use std::path::{Path, PathBuf};

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessTarget {
    #[default]
    Off,
    Stderr,
    /// Appended to this file; reopened on SIGUSR1 and on every reload (logrotate).
    File(PathBuf),
    /// One datagram per line to this Unix socket (`/dev/log`), RFC 3164 framing.
    Syslog(PathBuf),
}

impl AccessTarget {
    pub fn is_off(&self) -> bool {
        *self == AccessTarget::Off
    }

    /// For `mqgate check` and logs: `off`, `stderr`, `syslog (/dev/log)`, the path.
    pub fn describe(&self) -> String {
        match self {
            AccessTarget::Off => "off".into(),
            AccessTarget::Stderr => "stderr".into(),
            AccessTarget::File(p) => p.display().to_string(),
            AccessTarget::Syslog(p) => format!("syslog ({})", p.display()),
        }
    }
}

/// A field of the client certificate that names the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertField {
    /// The subject's (first) common name.
    Cn,
    /// The whole subject, RFC 4514 (`CN=dev1,O=Example`), as Mosquitto's
    /// `use_subject_as_username` writes it.
    Subject,
    /// The first subjectAltName DNS entry.
    SanDns,
    /// The first subjectAltName e-mail (rfc822Name) entry.
    SanEmail,
}

impl CertField {
    pub const NAMES: [(&'static str, CertField); 4] = [
        ("cn", CertField::Cn),
        ("subject", CertField::Subject),
        ("san_dns", CertField::SanDns),
        ("san_email", CertField::SanEmail),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CertField::Cn => "cn",
            CertField::Subject => "subject",
            CertField::SanDns => "san_dns",
            CertField::SanEmail => "san_email",
        }
    }
}

/// What an mTLS listener does with the identity in the client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdentityPolicy {
    /// Rewrite the CONNECT's username to this field.
    pub username_from: Option<CertField>,
    /// Rewrite the CONNECT's client id to this field.
    pub client_id_from: Option<CertField>,
    /// Refuse a CONNECT whose username is not this field.
    pub require_username_match: Option<CertField>,
    /// Refuse a CONNECT whose client id is not this field.
    pub require_client_id_match: Option<CertField>,
}

impl IdentityPolicy {
    /// Anything to do at all (the certificate is read only then).
    pub fn is_active(&self) -> bool {
        *self != IdentityPolicy::default()
    }

    /// The field the username is taken from or checked against.
    pub fn username_field(&self) -> Option<CertField> {
        self.username_from.or(self.require_username_match)
    }

    /// The field the client id is taken from or checked against.
    pub fn client_id_field(&self) -> Option<CertField> {
        self.client_id_from.or(self.require_client_id_match)
    }
}

fn error(key: String, message: String, hint: Option<&str>) -> ConfigError {
    ConfigError {
        line: None,
        key,
        message,
        hint: hint.map(str::to_string),
    }
}

/// `[log] access`, `access_syslog_socket`: the target. Relative paths are resolved
/// from `base` (the config file's directory).
pub fn access_target(raw: &RawLog, base: &Path, errors: &mut Vec<ConfigError>) -> AccessTarget {
    let resolve = |p: &str| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            base.join(p)
        }
    };
    if raw.access_syslog_socket.is_empty() {
        errors.push(error(
            "log.access_syslog_socket".into(),
            "the syslog socket path must not be empty".into(),
            Some("the default is /dev/log"),
        ));
    }
    match raw.access.as_str() {
        "off" => AccessTarget::Off,
        "stderr" => AccessTarget::Stderr,
        "syslog" => AccessTarget::Syslog(resolve(&raw.access_syslog_socket)),
        "" => {
            errors.push(error(
                "log.access".into(),
                "empty access log target".into(),
                Some("access = \"off\", \"stderr\", \"syslog\" or a file path such as \"/var/log/mqgate/access.log\""),
            ));
            AccessTarget::Off
        }
        path => {
            let p = resolve(path);
            match p.parent() {
                Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
                    errors.push(error(
                        "log.access".into(),
                        format!(
                            "the directory of the access log file {} does not exist",
                            p.display()
                        ),
                        Some("create the directory (mqgate creates the file, not its directory)"),
                    ));
                }
                _ => {}
            }
            if p.is_dir() {
                errors.push(error(
                    "log.access".into(),
                    format!("{} is a directory, not a file", p.display()),
                    None,
                ));
            }
            AccessTarget::File(p)
        }
    }
}

fn cert_field(key: String, v: Option<&str>, errors: &mut Vec<ConfigError>) -> Option<CertField> {
    let v = v?;
    match CertField::NAMES.iter().find(|(n, _)| *n == v) {
        Some((_, f)) => Some(*f),
        None => {
            errors.push(error(
                key,
                format!("invalid value {v:?}; expected one of \"cn\", \"subject\", \"san_dns\", \"san_email\""),
                None,
            ));
            None
        }
    }
}

/// `[listeners.tls]` identity keys of listener `i`.
pub fn identity(i: usize, t: &RawTls, errors: &mut Vec<ConfigError>) -> IdentityPolicy {
    let k = |s: &str| format!("listeners[{i}].tls.{s}");
    let p = IdentityPolicy {
        username_from: cert_field(k("username_from"), t.username_from.as_deref(), errors),
        client_id_from: cert_field(k("client_id_from"), t.client_id_from.as_deref(), errors),
        require_username_match: cert_field(
            k("require_username_match"),
            t.require_username_match.as_deref(),
            errors,
        ),
        require_client_id_match: cert_field(
            k("require_client_id_match"),
            t.require_client_id_match.as_deref(),
            errors,
        ),
    };
    if t.username_from.is_some() && t.require_username_match.is_some() {
        errors.push(error(
            k("require_username_match"),
            "both username_from and require_username_match are set".into(),
            Some("username_from replaces the username (nothing left to check); keep one"),
        ));
    }
    if t.client_id_from.is_some() && t.require_client_id_match.is_some() {
        errors.push(error(
            k("require_client_id_match"),
            "both client_id_from and require_client_id_match are set".into(),
            Some("client_id_from replaces the client id (nothing left to check); keep one"),
        ));
    }
    let any = [
        &t.username_from,
        &t.client_id_from,
        &t.require_username_match,
        &t.require_client_id_match,
    ]
    .iter()
    .find_map(|x| x.as_ref().map(|_| ()));
    if any.is_some() && t.client_ca.is_none() {
        let key = [
            ("username_from", &t.username_from),
            ("client_id_from", &t.client_id_from),
            ("require_username_match", &t.require_username_match),
            ("require_client_id_match", &t.require_client_id_match),
        ]
        .iter()
        .find(|(_, v)| v.is_some())
        .map(|(n, _)| *n)
        .unwrap_or("username_from");
        errors.push(error(
            k(key),
            "client-certificate identity needs client certificates".into(),
            Some("set client_ca in the same [listeners.tls] (mutual TLS)"),
        ));
    }
    p
}

/// `[[listeners]] max_connections` of listener `i`: 1–100000000. Above the global
/// `[limits] max_connections` it has no effect (the global limit is reached first):
/// a warning, as for HAProxy's `maxconn` on a `bind` above the global one.
pub fn listener_max_connections(
    i: usize,
    v: Option<i64>,
    global: i64,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
) -> Option<usize> {
    let v = v?;
    let (lo, hi) = super::bounds::MAX_CONNECTIONS;
    if v < lo || v > hi {
        errors.push(error(
            format!("listeners[{i}].max_connections"),
            format!("must be at least {lo} and at most {hi}, got {v}"),
            None,
        ));
        return None;
    }
    if v > global {
        warnings.push(error(
            format!("listeners[{i}].max_connections"),
            format!("{v} is more than [limits] max_connections ({global}): the global limit is reached first"),
            Some("a listener's limit counts within the global one; raise [limits] max_connections or lower this"),
        ));
    }
    usize::try_from(v).ok()
}
