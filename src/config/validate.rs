//! Turn a [`RawConfig`] into a typed [`Config`], collecting every error with its key path.

use super::raw::*;
use super::*;
use std::collections::HashSet;

struct V {
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
    base: PathBuf,
}

impl V {
    fn warn(&mut self, key: impl Into<String>, message: impl Into<String>, hint: &str) {
        self.warnings.push(ConfigError {
            line: None,
            key: key.into(),
            message: message.into(),
            hint: Some(hint.to_string()),
        });
    }
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            line: None,
            key: key.into(),
            message: message.into(),
            hint: None,
        });
    }
    fn err_hint(&mut self, key: impl Into<String>, message: impl Into<String>, hint: &str) {
        self.errors.push(ConfigError {
            line: None,
            key: key.into(),
            message: message.into(),
            hint: Some(hint.to_string()),
        });
    }

    /// A duration of `0s` or from [`MIN_DURATION`] to [`MAX_DURATION`].
    fn duration(&mut self, key: String, value: &str) -> Duration {
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
    fn positive_duration(&mut self, key: String, value: &str) -> Duration {
        let d = self.duration(key.clone(), value);
        if d.is_zero() {
            self.err(key, "must be greater than zero");
        }
        d
    }

    /// An integer from `min` to `max` (both included), as `T`.
    fn int<T: TryFrom<i64>>(
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

    fn socket(&mut self, key: String, v: &str) -> SocketAddr {
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

    fn path(&self, v: &str) -> PathBuf {
        let p = PathBuf::from(v);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    fn existing_file(&mut self, key: String, v: &str) -> PathBuf {
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

    fn secret(
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
    fn private_file(&mut self, key: String, path: &Path, meta: &std::fs::Metadata, what: &str) {
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
    fn private_file_at(&mut self, key: String, path: &Path, what: &str) {
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
    fn tls_material(
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

    fn one_of<T: Copy>(&mut self, key: String, v: &str, options: &[(&str, T)]) -> T {
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
fn read_private(path: &Path) -> std::io::Result<(Vec<u8>, std::fs::Metadata)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok((bytes, meta))
}

/// What to say about a `cert` file that holds no certificate.
fn cert_hint(path: &Path) -> String {
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
fn key_hint(path: &Path) -> String {
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

pub fn validate(path: &Path, raw: &RawConfig) -> Result<Config, Vec<ConfigError>> {
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut v = V {
        errors: Vec::new(),
        warnings: Vec::new(),
        base,
    };

    let log = LogConfig {
        level: {
            let l = raw.log.level.to_ascii_lowercase();
            if !["error", "warn", "info", "debug", "trace"].contains(&l.as_str()) {
                v.err(
                    "log.level",
                    format!(
                        "invalid level {:?}; expected error, warn, info, debug or trace",
                        raw.log.level
                    ),
                );
            }
            l
        },
        format: v.one_of(
            "log.format".into(),
            &raw.log.format,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        ),
    };

    let l = &raw.limits;
    let connect_packet_timeout = match (&l.connect_packet_timeout, &l.connect_timeout) {
        (Some(new), None) => v.positive_duration("limits.connect_packet_timeout".into(), new),
        (None, Some(old)) => {
            v.warn(
                "limits.connect_timeout",
                "`[limits] connect_timeout` is renamed `connect_packet_timeout` (the time a \
                 client has to send its CONNECT); the old name still works for now",
                &format!("write connect_packet_timeout = {old:?} instead"),
            );
            v.positive_duration("limits.connect_timeout".into(), old)
        }
        (Some(_), Some(_)) => {
            v.err_hint(
                "limits.connect_timeout",
                "both `connect_packet_timeout` and its old name `connect_timeout` are set in [limits]",
                "keep only connect_packet_timeout (the time a client has to send its CONNECT; \
                 the broker connect timeout is [clusters.NAME] connect_timeout)",
            );
            Duration::from_secs(10)
        }
        (None, None) => Duration::from_secs(10),
    };
    let limits = Limits {
        max_connections: v.int(
            "limits.max_connections".into(),
            l.max_connections,
            bounds::MAX_CONNECTIONS,
            1,
        ),
        connect_timeout: connect_packet_timeout,
        max_connect_size: v.int(
            "limits.max_connect_size".into(),
            l.max_connect_size,
            bounds::MAX_CONNECT_SIZE,
            65536,
        ),
        tls_handshake_timeout: v.positive_duration(
            "limits.tls_handshake_timeout".into(),
            &l.tls_handshake_timeout,
        ),
        per_ip_connect_rate: v.int(
            "limits.per_ip_connect_rate".into(),
            l.per_ip_connect_rate,
            bounds::PER_IP_CONNECT_RATE,
            0,
        ),
        shutdown_grace: v.duration("limits.shutdown_grace".into(), &l.shutdown_grace),
        threads: l
            .threads
            .map(|t| v.int("limits.threads".into(), t, bounds::THREADS, 0)),
    };

    let admin = AdminConfig {
        bind: v.socket("admin.bind".into(), &raw.admin.bind),
        token: v.secret(
            "admin.token_file".into(),
            raw.admin.token_file.as_deref(),
            "admin.token_env".into(),
            raw.admin.token_env.as_deref(),
        ),
        allowed_hosts: raw
            .admin
            .allowed_hosts
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                let host = host_name(h);
                if host.is_none() {
                    v.err_hint(
                        format!("admin.allowed_hosts[{i}]"),
                        format!("{h:?} is not a host name or IP address"),
                        "write the name as it appears in the URL, without scheme or port, e.g. \"gw1.example.com\" or \"10.0.0.5\"",
                    );
                }
                host
            })
            .collect(),
    };

    let mut clusters = Vec::new();
    for (cname, c) in &raw.clusters {
        let k = |s: &str| format!("clusters.{cname}.{s}");
        if cname.is_empty() {
            v.err("clusters", "cluster name must not be empty");
        }
        let mode = v.one_of(
            k("mode"),
            &c.mode,
            &[("dynsec", Mode::Dynsec), ("full-sync", Mode::FullSync)],
        );
        let balance = v.one_of(
            k("balance"),
            &c.balance,
            &[
                ("hash", Balance::Hash),
                ("least-conn", Balance::LeastConn),
                ("round-robin", Balance::RoundRobin),
            ],
        );
        let mut nodes = Vec::new();
        let mut names = HashSet::new();
        if c.nodes.is_empty() {
            v.err_hint(
                k("nodes"),
                "a cluster needs at least one node",
                "nodes = [ { name = \"node1\", address = \"10.0.0.1:1883\" } ]",
            );
        }
        for (i, n) in c.nodes.iter().enumerate() {
            if n.name.is_empty() {
                v.err(
                    k(&format!("nodes[{i}].name")),
                    "node name must not be empty",
                );
            }
            if !names.insert(n.name.clone()) {
                v.err(
                    k(&format!("nodes[{i}].name")),
                    format!("duplicate node name {:?}", n.name),
                );
            }
            match parse_host_port(&n.address) {
                Some(address) => nodes.push(NodeConfig {
                    name: n.name.clone(),
                    address,
                }),
                None => v.err_hint(
                    k(&format!("nodes[{i}].address")),
                    format!("invalid node address {:?}", n.address),
                    "use HOST:PORT, for example \"10.0.0.1:1883\" or \"broker-1.internal:1883\"",
                ),
            }
        }
        let h = &c.health;
        let hk = |s: &str| format!("clusters.{cname}.health.{s}");
        let health = HealthConfig {
            check: v.one_of(
                hk("check"),
                &h.check,
                &[
                    ("mqtt", CheckKind::Mqtt),
                    ("mqtt5", CheckKind::Mqtt5),
                    ("tcp", CheckKind::Tcp),
                ],
            ),
            interval: v.positive_duration(hk("interval"), &h.interval),
            fast_interval: v.positive_duration(hk("fast_interval"), &h.fast_interval),
            down_interval: v.positive_duration(hk("down_interval"), &h.down_interval),
            timeout: v.positive_duration(hk("timeout"), &h.timeout),
            rise: v.int(hk("rise"), h.rise, bounds::RISE_FALL, 1),
            fall: v.int(hk("fall"), h.fall, bounds::RISE_FALL, 1),
            username: h.username.clone(),
            client_id_prefix: h.client_id_prefix.clone(),
            password: v.secret(
                hk("password_file"),
                h.password_file.as_deref(),
                hk("password_env"),
                h.password_env.as_deref(),
            ),
        };
        if health.client_id_prefix.len() > 23 - 8 {
            v.err_hint(
                hk("client_id_prefix"),
                format!(
                    "{} bytes is too long: with the 8 hex digits added, a client id must fit \
                     the 23 bytes every MQTT broker accepts",
                    health.client_id_prefix.len()
                ),
                "client_id_prefix = \"hc-\"",
            );
        }
        if health.password.is_some() && health.username.is_none() {
            v.err(
                hk("password_file"),
                "a health-check password needs a username",
            );
        }
        if mode == Mode::FullSync && c.sticky.is_some() {
            v.err_hint(
                k("sticky"),
                "sticky settings apply to dynsec clusters only",
                "remove [clusters.X.sticky] or set mode = \"dynsec\"",
            );
        }
        let s_default = RawSticky::default();
        let s = c.sticky.as_ref().unwrap_or(&s_default);
        let sk = |x: &str| format!("clusters.{cname}.sticky.{x}");
        let sticky = StickyConfig {
            key: v.one_of(
                sk("key"),
                &s.key,
                &[
                    ("client_id", StickyKey::ClientId),
                    ("username", StickyKey::Username),
                ],
            ),
            sessions: v.one_of(
                sk("sessions"),
                &s.sessions,
                &[
                    ("persistent", StickySessions::Persistent),
                    ("all", StickySessions::All),
                ],
            ),
            expire: v.positive_duration(sk("expire"), &s.expire),
            capacity: v.int(sk("capacity"), s.capacity, bounds::STICKY_CAPACITY, 1),
        };
        let (sessions, errs) = super::sessions::sessions(cname, mode, c.sessions.as_ref());
        v.errors.extend(errs);
        let (shaping, errs) = super::shaping::shaping(cname, c.shaping.as_ref());
        v.errors.extend(errs);
        clusters.push(ClusterConfig {
            name: cname.clone(),
            mode,
            balance,
            connect_timeout: v.positive_duration(k("connect_timeout"), &c.connect_timeout),
            retries: v.int(k("retries"), c.retries, bounds::RETRIES, 0),
            on_node_down: v.one_of(
                k("on_node_down"),
                &c.on_node_down,
                &[
                    ("disconnect", OnNodeDown::Disconnect),
                    ("keep", OnNodeDown::Keep),
                ],
            ),
            queue_timeout: v.duration(k("queue_timeout"), &c.queue_timeout),
            connack_timeout: v.duration(k("connack_timeout"), &c.connack_timeout),
            queue_max: v.int(k("queue_max"), c.queue_max, bounds::QUEUE_MAX, 0),
            no_node_reply: v.one_of(
                k("no_node_reply"),
                &c.no_node_reply,
                &[
                    ("close", NoNodeReply::Close),
                    ("connack-v5", NoNodeReply::ConnackV5),
                    ("connack", NoNodeReply::Connack),
                ],
            ),
            send_proxy_protocol: v.one_of(
                k("send_proxy_protocol"),
                &c.send_proxy_protocol,
                &[
                    ("off", ProxyProtocolOut::Off),
                    ("v1", ProxyProtocolOut::V1),
                    ("v2", ProxyProtocolOut::V2),
                ],
            ),
            dns_refresh: v.positive_duration(k("dns_refresh"), &c.dns_refresh),
            nodes,
            health,
            sticky,
            sessions,
            shaping,
        });
    }

    let mut listeners = Vec::new();
    let mut lnames = HashSet::new();
    let mut binds = HashSet::new();
    if raw.listeners.is_empty() {
        v.err_hint(
            "listeners",
            "at least one [[listeners]] is needed",
            "[[listeners]] name = \"mqtt\", bind = \"0.0.0.0:1883\", cluster = \"brokers\"",
        );
    }
    for (i, rl) in raw.listeners.iter().enumerate() {
        let k = |s: &str| format!("listeners[{i}].{s}");
        if rl.name.is_empty() {
            v.err(k("name"), "listener name must not be empty");
        }
        if !lnames.insert(rl.name.clone()) {
            v.err(k("name"), format!("duplicate listener name {:?}", rl.name));
        }
        let bind = v.socket(k("bind"), &rl.bind);
        if bind.port() != 0 && !binds.insert(bind) {
            v.err(
                k("bind"),
                format!("address {bind} is used by another listener"),
            );
        }
        if !raw.clusters.contains_key(&rl.cluster) {
            let known: Vec<&str> = raw.clusters.keys().map(String::as_str).collect();
            v.err_hint(
                k("cluster"),
                format!("unknown cluster {:?}", rl.cluster),
                &format!("defined clusters: {}", known.join(", ")),
            );
        }
        let mut trusted = Vec::new();
        for (j, t) in rl.trusted_proxies.iter().enumerate() {
            match parse_cidr(t) {
                Some(n) => trusted.push(n),
                None => v.err(
                    k(&format!("trusted_proxies[{j}]")),
                    format!("invalid CIDR {t:?}"),
                ),
            }
        }
        if rl.proxy_protocol && trusted.is_empty() {
            v.err_hint(
                k("trusted_proxies"),
                "proxy_protocol = true needs trusted_proxies",
                "list the balancer's addresses, e.g. [\"10.0.0.0/8\"]",
            );
        }
        let tls = rl.tls.as_ref().map(|t| TlsConfig {
            cert: v.existing_file(format!("listeners[{i}].tls.cert"), &t.cert),
            key: v.existing_file(format!("listeners[{i}].tls.key"), &t.key),
            client_ca: t
                .client_ca
                .as_ref()
                .map(|c| v.existing_file(format!("listeners[{i}].tls.client_ca"), c)),
            min_version: v.one_of(
                format!("listeners[{i}].tls.min_version"),
                &t.min_version,
                &[("1.2", TlsVersion::V1_2), ("1.3", TlsVersion::V1_3)],
            ),
        });
        if let Some(t) = &tls {
            v.tls_material(
                &format!("listeners[{i}].tls"),
                &t.cert,
                &t.key,
                t.client_ca.as_deref().map(|c| ("client_ca", c)),
                || crate::tls::server_config(t).map(drop),
            );
        }
        listeners.push(ListenerConfig {
            name: rl.name.clone(),
            bind,
            cluster: rl.cluster.clone(),
            proxy_protocol: rl.proxy_protocol,
            trusted_proxies: trusted,
            tls,
        });
    }

    let peers = raw.peers.as_ref().map(|p| {
        let secret = v.secret(
            "peers.secret_file".into(),
            p.secret_file.as_deref(),
            "peers.secret_env".into(),
            p.secret_env.as_deref(),
        );
        let secret = match secret {
            Some(s) => s,
            None => {
                if p.tls.is_none() {
                    v.err_hint(
                        "peers.secret_file",
                        "peers need a shared secret (or [peers.tls])",
                        "secret_file = \"/etc/mqgate/peers.secret\"",
                    );
                }
                Secret::new(Vec::new())
            }
        };
        let mut pnames = HashSet::new();
        for (i, peer) in p.peers.iter().enumerate() {
            if peer.name == p.name {
                v.err(
                    format!("peers.peers[{i}].name"),
                    "a peer cannot have this instance's own name",
                );
            }
            if !pnames.insert(peer.name.clone()) {
                v.err(
                    format!("peers.peers[{i}].name"),
                    format!("duplicate peer name {:?}", peer.name),
                );
            }
            if parse_host_port(&peer.address).is_none() {
                v.err(
                    format!("peers.peers[{i}].address"),
                    format!("invalid peer address {:?}", peer.address),
                );
            }
        }
        // With TLS, each side's certificate must name it (a subjectAltName DNS entry
        // equal to its `name`), so every name must be a DNS name.
        if p.tls.is_some() {
            let names = std::iter::once(("peers.name".to_string(), &p.name)).chain(
                p.peers
                    .iter()
                    .enumerate()
                    .map(|(i, x)| (format!("peers.peers[{i}].name"), &x.name)),
            );
            for (key, name) in names {
                if !matches!(
                    rustls::pki_types::ServerName::try_from(name.as_str()),
                    Ok(rustls::pki_types::ServerName::DnsName(_))
                ) {
                    v.err_hint(
                        key,
                        format!(
                            "with [peers.tls], peer names must be DNS names (the certificate of \
                             each instance names it in a subjectAltName DNS entry); {name:?} is not"
                        ),
                        "\"gate-a\"",
                    );
                }
            }
        }
        PeersConfig {
            name: p.name.clone(),
            bind: v.socket("peers.bind".into(), &p.bind),
            secret,
            peers: p
                .peers
                .iter()
                .map(|x| PeerConfig {
                    name: x.name.clone(),
                    address: x.address.clone(),
                })
                .collect(),
            snapshot: p.snapshot.as_deref().map(|s| v.path(s)),
            tls: p.tls.as_ref().map(|t| {
                let t = PeerTlsConfig {
                    cert: v.existing_file("peers.tls.cert".into(), &t.cert),
                    key: v.existing_file("peers.tls.key".into(), &t.key),
                    ca: v.existing_file("peers.tls.ca".into(), &t.ca),
                };
                v.tls_material("peers.tls", &t.cert, &t.key, Some(("ca", &t.ca)), || {
                    crate::tls::peer_configs(&t).map(drop)
                });
                t
            }),
        }
    });

    if v.errors.is_empty() {
        Ok(Config {
            source: path.to_path_buf(),
            log,
            limits,
            admin,
            listeners,
            clusters,
            peers,
            warnings: v.warnings,
        })
    } else {
        Err(v.errors)
    }
}

/// `host:port`, `ip:port` or `[v6]:port`.
pub fn parse_host_port(s: &str) -> Option<NodeAddress> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(NodeAddress {
            host: sa.ip().to_string(),
            port: sa.port(),
        });
    }
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if host.is_empty() || port == 0 || host.contains(':') {
        return None;
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return None;
    }
    Some(NodeAddress {
        host: host.to_string(),
        port,
    })
}

/// A host name or IP address as the admin API compares it with a request's `Host` or
/// `Origin` (no port): an IP in its canonical text form (an IPv6 address may be in
/// brackets; an IPv4-mapped one becomes IPv4), or a DNS name in lower case without a
/// trailing dot. `None` for anything else (ports, schemes, wildcards, empty labels).
pub fn host_name(s: &str) -> Option<String> {
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Some(ip.to_canonical().to_string());
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}
