//! Turn a [`RawConfig`] into a typed [`Config`], collecting every error with its key path.

use super::raw::*;
use super::*;
use std::collections::HashSet;

struct V {
    errors: Vec<ConfigError>,
    base: PathBuf,
}

impl V {
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

    fn duration(&mut self, key: String, value: &str) -> Duration {
        match parse_duration(value) {
            Some(d) => d,
            None => {
                self.err_hint(
                    key,
                    format!("invalid duration {value:?}"),
                    "use a number with a unit, like \"250ms\", \"10s\", \"5m\", \"24h\"",
                );
                Duration::from_secs(1)
            }
        }
    }

    fn positive_duration(&mut self, key: String, value: &str) -> Duration {
        let d = self.duration(key.clone(), value);
        if d.is_zero() {
            self.err(key, "must be greater than zero");
        }
        d
    }

    fn int<T: TryFrom<i64>>(&mut self, key: String, v: i64, min: i64, fallback: T) -> T {
        if v < min {
            self.err(key, format!("must be at least {min}, got {v}"));
            return fallback;
        }
        match T::try_from(v) {
            Ok(x) => x,
            Err(_) => {
                self.err(key, format!("{v} is out of range"));
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
            return match std::fs::read(&p) {
                Ok(mut bytes) => {
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
    let limits = Limits {
        max_connections: v.int("limits.max_connections".into(), l.max_connections, 1, 1),
        connect_timeout: v.positive_duration("limits.connect_timeout".into(), &l.connect_timeout),
        max_connect_size: v.int(
            "limits.max_connect_size".into(),
            l.max_connect_size,
            16,
            65536,
        ),
        tls_handshake_timeout: v.positive_duration(
            "limits.tls_handshake_timeout".into(),
            &l.tls_handshake_timeout,
        ),
        per_ip_connect_rate: v.int(
            "limits.per_ip_connect_rate".into(),
            l.per_ip_connect_rate,
            0,
            0,
        ),
        shutdown_grace: v.duration("limits.shutdown_grace".into(), &l.shutdown_grace),
        threads: l.threads.map(|t| v.int("limits.threads".into(), t, 0, 0)),
    };

    let admin = AdminConfig {
        bind: v.socket("admin.bind".into(), &raw.admin.bind),
        token: v.secret(
            "admin.token_file".into(),
            raw.admin.token_file.as_deref(),
            "admin.token_env".into(),
            raw.admin.token_env.as_deref(),
        ),
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
                &[("mqtt", CheckKind::Mqtt), ("tcp", CheckKind::Tcp)],
            ),
            interval: v.positive_duration(hk("interval"), &h.interval),
            fast_interval: v.positive_duration(hk("fast_interval"), &h.fast_interval),
            down_interval: v.positive_duration(hk("down_interval"), &h.down_interval),
            timeout: v.positive_duration(hk("timeout"), &h.timeout),
            rise: v.int(hk("rise"), h.rise, 1, 1),
            fall: v.int(hk("fall"), h.fall, 1, 1),
            username: h.username.clone(),
            password: v.secret(
                hk("password_file"),
                h.password_file.as_deref(),
                hk("password_env"),
                h.password_env.as_deref(),
            ),
        };
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
            capacity: v.int(sk("capacity"), s.capacity, 1, 1),
        };
        clusters.push(ClusterConfig {
            name: cname.clone(),
            mode,
            balance,
            connect_timeout: v.positive_duration(k("connect_timeout"), &c.connect_timeout),
            retries: v.int(k("retries"), c.retries, 0, 0),
            on_node_down: v.one_of(
                k("on_node_down"),
                &c.on_node_down,
                &[
                    ("disconnect", OnNodeDown::Disconnect),
                    ("keep", OnNodeDown::Keep),
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
            tls: p.tls.as_ref().map(|t| PeerTlsConfig {
                cert: v.existing_file("peers.tls.cert".into(), &t.cert),
                key: v.existing_file("peers.tls.key".into(), &t.key),
                ca: v.existing_file("peers.tls.ca".into(), &t.ca),
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

fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}
