//! Turn a [`RawConfig`] into a typed [`Config`], collecting every error with its key path.

use super::address::{parse_cidr, parse_host_port};
use super::checker::*;
use super::peers_discovery;
use super::raw::*;
use super::tls_checks;
use super::*;
use std::collections::HashSet;

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
        access: super::ops::access_target(&raw.log, &v.base, &mut v.errors),
        access_format: v.one_of(
            "log.access_format".into(),
            &raw.log.access_format,
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
    let (splice, max_pipes) = super::splice::splice(&mut v, l);
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
        splice,
        max_pipes,
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
        let (fanout, errs) = super::fanout::rules(cname, mode, &c.fanout);
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
            tls: tls_checks::broker_tls(&mut v, &k("tls"), c.tls.as_ref(), &nodes),
            nodes,
            health,
            sticky,
            sessions,
            shaping,
            fanout,
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
            crl: tls_checks::crl_files(&mut v, &format!("listeners[{i}].tls"), t),
            identity: super::ops::identity(i, t, &mut v.errors),
        });
        if let Some(t) = &tls {
            v.tls_material(
                &format!("listeners[{i}].tls"),
                &t.cert,
                &t.key,
                t.client_ca.as_deref().map(|c| ("client_ca", c)),
                || crate::tls::server_config(t, &rl.name).map(drop),
            );
        }
        let websocket = rl
            .websocket
            .as_ref()
            .map(|w| super::websocket::typed(w, &k("websocket"), &mut |key, m| v.err(key, m)));
        listeners.push(ListenerConfig {
            websocket,
            name: rl.name.clone(),
            bind,
            cluster: rl.cluster.clone(),
            proxy_protocol: rl.proxy_protocol,
            trusted_proxies: trusted,
            max_connections: super::ops::listener_max_connections(
                i,
                rl.max_connections,
                raw.limits.max_connections,
                &mut v.errors,
                &mut v.warnings,
            ),
            tls,
        });
    }

    let peers = raw.peers.as_ref().map(|p| {
        let own_name = peers_discovery::name(&mut v, p);
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
            if peer.name == own_name {
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
            let names = std::iter::once(("peers.name".to_string(), &own_name)).chain(
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
            discover: peers_discovery::discovery(&mut v, p),
            name: own_name.clone(),
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
