//! The checker the validation runs with ([`V`]): it collects every error and warning
//! with its key path, reads durations, numbers, enumerations, files and secrets, and
//! holds the bounds of every number in the file.

use super::*;

pub(super) struct V {
    pub(super) errors: Vec<ConfigError>,
    pub(super) warnings: Vec<ConfigError>,
    pub(super) base: PathBuf,
}

impl V {
    pub(super) fn warn(&mut self, key: impl Into<String>, message: impl Into<String>, hint: &str) {
        self.warnings.push(ConfigError {
            line: None,
            key: key.into(),
            message: message.into(),
            hint: Some(hint.to_string()),
        });
    }
    pub(super) fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            line: None,
            key: key.into(),
            message: message.into(),
            hint: None,
        });
    }
    pub(super) fn err_hint(
        &mut self,
        key: impl Into<String>,
        message: impl Into<String>,
        hint: &str,
    ) {
        self.errors.push(ConfigError {
            line: None,
            key: key.into(),
            message: message.into(),
            hint: Some(hint.to_string()),
        });
    }

    /// A duration of `0s` or from [`MIN_DURATION`] to [`MAX_DURATION`].
    pub(super) fn duration(&mut self, key: String, value: &str) -> Duration {
        let Some(d) = parse_duration(value) else {
            self.err_hint(
                key,
                format!("invalid duration {value:?}"),
                "use a number with a unit, like \"250ms\", \"10s\", \"5m\", \"24h\"",
            );
            return Duration::from_secs(1);
        };
        if d > MAX_DURATION {
            self.err_hint(
                key,
                format!("{value:?} is longer than 1y, the longest duration mqgate takes"),
                "every duration is at most \"1y\" (365.25 days), so that timers and deadlines \
                 (now + duration) stay exact",
            );
            return MAX_DURATION;
        }
        if !d.is_zero() && d < MIN_DURATION {
            self.err_hint(
                key,
                format!("{value:?} is shorter than 1ms, the resolution of mqgate's timers"),
                "write at least \"1ms\"",
            );
            return MIN_DURATION;
        }
        d
    }

    /// A duration from [`MIN_DURATION`] to [`MAX_DURATION`].
    pub(super) fn positive_duration(&mut self, key: String, value: &str) -> Duration {
        let d = self.duration(key.clone(), value);
        if d.is_zero() {
            self.err(key, "must be greater than zero");
        }
        d
    }

    /// An integer from `min` to `max` (both included), as `T`.
    pub(super) fn int<T: TryFrom<i64>>(
        &mut self,
        key: String,
        v: i64,
        (min, max): (i64, i64),
        fallback: T,
    ) -> T {
        if v < min || v > max {
            self.err(
                key,
                format!("must be at least {min} and at most {max}, got {v}"),
            );
            return fallback;
        }
        match T::try_from(v) {
            Ok(x) => x,
            Err(_) => {
                self.err(key, format!("{v} does not fit this platform's integers"));
                fallback
            }
        }
    }

    pub(super) fn socket(&mut self, key: String, v: &str) -> SocketAddr {
        match v.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.err_hint(
                    key,
                    format!("invalid bind address {v:?}"),
                    "use IP:PORT, for example \"0.0.0.0:1883\" or \"[::]:1883\"",
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    }

    pub(super) fn path(&self, v: &str) -> PathBuf {
        let p = PathBuf::from(v);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    pub(super) fn existing_file(&mut self, key: String, v: &str) -> PathBuf {
        let p = self.path(v);
        if !p.is_file() {
            self.err_hint(
                key,
                format!("file {} does not exist or is not readable", p.display()),
                if Path::new(v).is_absolute() {
                    "check the path and that the mqgate user may read it"
                } else {
                    "relative paths are resolved from the config file's directory"
                },
            );
        }
        p
    }

    pub(super) fn secret(
        &mut self,
        key_file: String,
        file: Option<&str>,
        key_env: String,
        env: Option<&str>,
    ) -> Option<Secret> {
        if let Some(f) = file {
            let p = self.path(f);
            return match read_private(&p) {
                Ok((mut bytes, meta)) => {
                    self.private_file(key_file.clone(), &p, &meta, "secret file");
                    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                        bytes.pop();
                    }
                    if bytes.is_empty() {
                        self.err(key_file, format!("secret file {} is empty", p.display()));
                    }
                    Some(Secret::new(bytes))
                }
                Err(e) => {
                    self.err_hint(
                        key_file,
                        format!("cannot read secret file {}: {e}", p.display()),
                        "put the secret on one line of this file, readable only by the user mqgate runs as",
                    );
                    None
                }
            };
        }
        if let Some(var) = env {
            return match std::env::var_os(var) {
                Some(v) if !v.is_empty() => Some(Secret::new(v.into_encoded_bytes())),
                _ => {
                    self.err(
                        key_env,
                        format!("environment variable {var} is not set or empty"),
                    );
                    None
                }
            };
        }
        None
    }

    /// Warn, as ssh does for private keys, when a file that holds a secret (`what`: "secret
    /// file", "private key file") lets every user on the host read or write it. Group
    /// access is fine: owner root, group mqgate, mode 0640 is how the systemd unit's user
    /// reads its secrets (docs/migration.md, "Secret files"); who else is in that group
    /// is for the operator to keep in check.
    pub(super) fn private_file(
        &mut self,
        key: String,
        path: &Path,
        meta: &std::fs::Metadata,
        what: &str,
    ) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            let access = match (mode & 0o004 != 0, mode & 0o002 != 0) {
                (false, false) => return,
                (true, false) => "readable",
                (false, true) => "writable",
                (true, true) => "readable and writable",
            };
            let p = path.display();
            self.warn(
                key,
                format!("{what} {p} is {access} by every user on this host (mode {mode:04o})"),
                &format!(
                    "chmod 600 {p}, or chmod 640 with a group that only mqgate's user is in \
                     (chown root:mqgate {p}); see \"Secret files\" in docs/migration.md"
                ),
            );
        }
        #[cfg(not(unix))]
        let _ = (key, path, meta, what);
    }

    /// [`V::private_file`] for a file named by path (a TLS private key).
    pub(super) fn private_file_at(&mut self, key: String, path: &Path, what: &str) {
        if let Ok(meta) = std::fs::metadata(path) {
            self.private_file(key, path, &meta, what);
        }
    }

    /// Load TLS material exactly as `run` will (`build`: `crate::tls::server_config` or
    /// `crate::tls::peer_configs`), so that `check` and a reload refuse what `run` would:
    /// each file on its own first, to name the key that is wrong, then all together
    /// (which also checks that the key belongs to the certificate). `prefix` is the
    /// table's key path; `ca` the CA key's name and file. Files that do not exist are
    /// reported by [`V::existing_file`] already.
    pub(super) fn tls_material(
        &mut self,
        prefix: &str,
        cert: &Path,
        key: &Path,
        ca: Option<(&str, &Path)>,
        build: impl FnOnce() -> Result<(), crate::tls::TlsError>,
    ) {
        if key.is_file() {
            self.private_file_at(format!("{prefix}.key"), key, "private key file");
        }
        if !cert.is_file() || !key.is_file() || ca.is_some_and(|(_, c)| !c.is_file()) {
            return;
        }
        let before = self.errors.len();
        if let Err(e) = crate::tls::load_certs(cert) {
            self.err_hint(format!("{prefix}.cert"), e.to_string(), &cert_hint(cert));
        }
        if let Err(e) = crate::tls::load_key(key) {
            self.err_hint(format!("{prefix}.key"), e.to_string(), &key_hint(key));
        }
        if let Some((ca_key, ca)) = ca {
            if let Err(e) = crate::tls::load_roots(ca) {
                self.err_hint(
                    format!("{prefix}.{ca_key}"),
                    e.to_string(),
                    "a PEM bundle of CA certificates (-----BEGIN CERTIFICATE-----)",
                );
            }
        }
        if self.errors.len() > before {
            return;
        }
        let Err(e) = build() else { return };
        use crate::tls::TlsError;
        use rustls::{Error as R, InconsistentKeys};
        let key_key = format!("{prefix}.key");
        let cert_key = format!("{prefix}.cert");
        match &e {
            TlsError::Rustls(R::InconsistentKeys(InconsistentKeys::KeyMismatch)) => self.err_hint(
                key_key,
                format!(
                    "the private key in {} does not belong to the certificate in {}",
                    key.display(),
                    cert.display()
                ),
                "cert and key must be a pair: `openssl x509 -noout -pubkey -in CERT` and \
                 `openssl pkey -pubout -in KEY` print the same public key",
            ),
            TlsError::Rustls(R::InconsistentKeys(_)) | TlsError::NoKey { .. } => {
                self.err(key_key, format!("private key {}: {e}", key.display()))
            }
            TlsError::Rustls(R::General(m)) if m.contains("private key") => self.err_hint(
                key_key,
                format!("private key {}: {m}", key.display()),
                "a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) that is not damaged",
            ),
            TlsError::Rustls(R::InvalidCertificate(_)) | TlsError::NoCert { .. } => {
                self.err(cert_key, format!("certificate {}: {e}", cert.display()))
            }
            TlsError::ClientCa { .. } => match ca {
                Some((ca_key, _)) => self.err(format!("{prefix}.{ca_key}"), e.to_string()),
                None => self.err(prefix.to_string(), e.to_string()),
            },
            _ => self.err(prefix.to_string(), e.to_string()),
        }
    }

    pub(super) fn one_of<T: Copy>(&mut self, key: String, v: &str, options: &[(&str, T)]) -> T {
        for (name, val) in options {
            if *name == v {
                return *val;
            }
        }
        let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
        self.err(
            key,
            format!("invalid value {v:?}; expected one of {}", names.join(", ")),
        );
        options[0].1
    }
}

/// A secret file's bytes and the metadata of the file they were read from.
pub(super) fn read_private(path: &Path) -> std::io::Result<(Vec<u8>, std::fs::Metadata)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok((bytes, meta))
}

/// What to say about a `cert` file that holds no certificate.
pub(super) fn cert_hint(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    if text.contains("PRIVATE KEY-----") && !text.contains("CERTIFICATE-----") {
        "this file holds a private key but no certificate: are `cert` and `key` swapped?".into()
    } else {
        "a PEM certificate chain (-----BEGIN CERTIFICATE-----), the server's own \
         certificate first"
            .into()
    }
}

/// What to say about a `key` file that holds no private key.
pub(super) fn key_hint(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    if text.contains("CERTIFICATE-----") && !text.contains("PRIVATE KEY-----") {
        "this file holds a certificate but no private key: `key` must name the private key \
         (-----BEGIN PRIVATE KEY-----), or a combined PEM that holds both"
            .into()
    } else {
        "a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)".into()
    }
}

/// The bounds of every number in the file, as `(min, max)` (both included). Each row of
/// docs/configuration.md gives its key's bounds (`tests/config_bounds.rs` checks that the
/// two agree). They keep every value in the range the code that uses it was written
/// for: tokio's semaphore (`max_connections`), `u32` permit counts, `Instant + Duration`
/// (which panics on overflow), threads that must start.
pub mod bounds {
    use std::time::Duration;

    /// The smallest duration other than zero: tokio's timers count whole milliseconds.
    pub const MIN_DURATION: Duration = Duration::from_millis(1);
    /// The longest duration any key takes: `"1y"` (365.25 days, humantime's year).
    /// `Instant::now() + MAX_DURATION` cannot overflow, and tokio's timer wheel
    /// (about 2 years) still holds it exactly.
    pub const MAX_DURATION: Duration = Duration::from_secs(31_557_600);
    /// Client connections: two open files and about 1.4 KB each; a hundred million is
    /// beyond any one host, and far below tokio's `Semaphore::MAX_PERMITS`.
    pub const MAX_CONNECTIONS: (i64, i64) = (1, 100_000_000);
    /// The largest MQTT packet: 1 type byte, 4 length bytes, 268,435,455 bytes.
    pub const MAX_CONNECT_SIZE: (i64, i64) = (16, 268_435_460);
    pub const PER_IP_CONNECT_RATE: (i64, i64) = (0, 1_000_000);
    pub const THREADS: (i64, i64) = (0, 1024);
    pub const RETRIES: (i64, i64) = (0, 100);
    /// Held clients count against `max_connections` too.
    pub const QUEUE_MAX: (i64, i64) = (0, 100_000_000);
    /// `health.rise` and `health.fall`.
    pub const RISE_FALL: (i64, i64) = (1, 1000);
    pub const STICKY_CAPACITY: (i64, i64) = (1, 100_000_000);
}

use bounds::{MAX_DURATION, MIN_DURATION};

/// Parse `"250ms"`, `"10s"`, `"5m"`, `"24h"`, `"1d"`, also combined (`"1h30m"`), via humantime.
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    humantime::parse_duration(v).ok()
}
