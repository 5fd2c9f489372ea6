//! Health checks: one task per node on its own timer (SPEC section 4).
//!
//! `rise` successes in a row mark a node up, `fall` failures mark it down; while a
//! node is changing state the next probe comes after `fast_interval`, while it is down
//! after `down_interval`. A node's first probe decides its state at once, so a fresh
//! gateway knows the full-sync leader after one round. Only state changes are logged
//! (once: "node is up" at `info`, "node is down" at `warn` when capacity is lost, see
//! `down_is_a_warning`) and counted (`mqgate_node_state_changes_total`; every probe is
//! counted in `mqgate_health_checks_total`). While a full-sync cluster has no leader, down nodes are probed
//! every `fast_interval` instead of `down_interval`, so that the new leader is found
//! quickly. The same task re-resolves DNS names every `dns_refresh`, and at once when
//! a reload changed the node's address.

use crate::cluster::{Cluster, Health, Node};
use crate::config::{CheckKind, HealthConfig, Mode, NodeAddress, ProxyProtocolOut};
use crate::metrics::Metrics;
use crate::mqtt::{self, observe_connack, Parse};
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::{ResolverBuilder, TokioResolver};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio::time::{sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared DNS resolver: the system configuration (`/etc/resolv.conf`, `/etc/hosts`
/// first).
pub fn resolver() -> Result<Arc<TokioResolver>, NetError> {
    Ok(Arc::new(build_resolver(TokioResolver::builder_tokio())?))
}

/// The resolver from the system configuration, or, without a usable
/// `/etc/resolv.conf` (`system` is the error), `/etc/hosts` then a name server on this
/// host (127.0.0.1:53, as the C library does then). Names resolve to their IPv4
/// addresses, and to IPv6 ones only when they have none: hickory's default (since 0.25)
/// asks for both and puts IPv6 first, so every connect to a `localhost` node bound to
/// 127.0.0.1 would try ::1 first and be refused.
fn build_resolver(
    system: Result<ResolverBuilder<TokioRuntimeProvider>, NetError>,
) -> Result<TokioResolver, NetError> {
    let mut builder = system.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read system DNS configuration; using /etc/hosts and 127.0.0.1:53");
        let local = NameServerConfig::udp_and_tcp(std::net::Ipv4Addr::LOCALHOST.into());
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![local]),
            TokioRuntimeProvider::default(),
        )
    });
    builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
    builder.build()
}

pub fn spawn(
    tracker: &TaskTracker,
    cluster: Arc<Cluster>,
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    resolver: Arc<TokioResolver>,
    shutdown: CancellationToken,
) {
    tracker.spawn(run(cluster, node, metrics, resolver, shutdown));
}

async fn run(
    cluster: Arc<Cluster>,
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    resolver: Arc<TokioResolver>,
    shutdown: CancellationToken,
) {
    let suffix = format!("{:08x}", rand::random::<u32>());
    let ok_counter = metrics
        .health_checks
        .with_label_values(&[&cluster.name, &node.name, "ok"]);
    let fail_counter =
        metrics
            .health_checks
            .with_label_values(&[&cluster.name, &node.name, "fail"]);
    let duration = metrics
        .health_check_duration
        .with_label_values(&[&cluster.name, &node.name]);
    let (mut oks, mut fails) = (0u32, 0u32);
    let mut next_dns = Instant::now();
    let mut resolved_for: Option<Arc<NodeAddress>> = None;
    let mut last_error = String::new();
    // The state these checks last saw: a node marked down from elsewhere (clients that
    // got no CONNACK, `Cluster::connack_missed`) needs `rise` passes from there.
    let mut seen = node.health();
    loop {
        let cfg = cluster.config();
        let h = &cfg.health;
        let start = Instant::now();
        let addr = node.address();
        let changed = resolved_for.as_ref().map(|r| **r != *addr).unwrap_or(true);
        if addr.literal().is_none() && (changed || start >= next_dns) {
            // Bounded so that a dead DNS server cannot stop the health checks.
            let limit = h.timeout.max(Duration::from_secs(2));
            if timeout(limit, refresh_dns(&resolver, &node, &addr))
                .await
                .is_err()
            {
                tracing::warn!(cluster = %node.cluster, node = %node.name, host = %addr.host, "DNS lookup timed out; keeping the last addresses");
            }
            resolved_for = Some(addr.clone());
            next_dns = Instant::now() + cfg.dns_refresh;
        }
        let client_id = format!("{}{suffix}", h.client_id_prefix);
        let tls = cluster.tls();
        let result = match timeout(
            h.timeout,
            probe(
                &node,
                h,
                cfg.send_proxy_protocol,
                tls.as_deref(),
                &client_id,
            ),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ProbeError::Timeout(h.timeout)),
        };
        duration.observe(start.elapsed().as_secs_f64());
        if node.health() != seen {
            (oks, fails) = (0, 0);
        }
        match &result {
            Ok(()) => {
                ok_counter.inc();
                oks += 1;
                fails = 0;
            }
            Err(e) => {
                fail_counter.inc();
                fails += 1;
                oks = 0;
                last_error = e.to_string();
            }
        }
        if let Some(n) = transition(node.health(), oks, fails, h.rise, h.fall) {
            match n {
                Health::Up => {
                    tracing::info!(cluster = %cluster.name, node = %node.name, address = %addr, "node is up")
                }
                _ if down_is_a_warning(cfg.mode, node.health()) => {
                    tracing::warn!(cluster = %cluster.name, node = %node.name, address = %addr, reason = %last_error, "node is down")
                }
                _ => {
                    tracing::info!(cluster = %cluster.name, node = %node.name, address = %addr, reason = %last_error, "node is down")
                }
            }
            cluster.set_health(&node, n);
        }
        seen = node.health();
        let wait = next_wait(
            h,
            node.health(),
            oks,
            fails,
            cfg.mode == Mode::FullSync && cluster.leader().is_none(),
        );
        tokio::select! {
            _ = sleep_until(start + wait) => {}
            _ = node.recheck.notified() => {}
            _ = node.tasks.cancelled() => return,
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The state a node moves to after a probe, given the successes (`oks`) or failures
/// (`fails`) in a row so far; `None` if it stays. The first probe decides at once.
fn transition(state: Health, oks: u32, fails: u32, rise: u32, fall: u32) -> Option<Health> {
    match state {
        Health::Unknown if oks > 0 => Some(Health::Up),
        Health::Unknown if fails > 0 => Some(Health::Down),
        Health::Down if oks >= rise => Some(Health::Up),
        Health::Up if fails >= fall => Some(Health::Down),
        _ => None,
    }
}

/// Is a node going down from `was` worth a warning? Yes when capacity is lost: a node
/// that was up, or, in dynsec mode, any node (each one should take clients). A
/// full-sync node found down by its first probe is a follower with its listener
/// closed, as designed: info.
fn down_is_a_warning(mode: Mode, was: Health) -> bool {
    was == Health::Up || mode == Mode::Dynsec
}

/// How long until the next probe: `fast_interval` while the node is changing state
/// (or, in a full-sync cluster without a leader, while it is down: it may be the new
/// leader), `down_interval` while it is down, `interval` otherwise.
fn next_wait(h: &HealthConfig, state: Health, oks: u32, fails: u32, no_leader: bool) -> Duration {
    let changing = (state == Health::Up && fails > 0) || (state == Health::Down && oks > 0);
    if changing || (state == Health::Down && no_leader) {
        h.fast_interval
    } else if state == Health::Down {
        h.down_interval
    } else {
        h.interval
    }
}

/// Resolve the node's host name; a changed answer takes effect for new connections
/// (and the next probe). A failed lookup keeps the last addresses.
pub async fn refresh_dns(resolver: &TokioResolver, node: &Node, a: &NodeAddress) {
    match resolver.lookup_ip(a.host.as_str()).await {
        Ok(ips) => {
            let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(ip, a.port)).collect();
            if !addrs.is_empty() && *node.resolved() != addrs {
                tracing::info!(cluster = %node.cluster, node = %node.name, host = %a.host, addresses = ?addrs, "node address resolved");
                node.set_resolved(addrs);
            }
        }
        Err(e) => {
            tracing::warn!(cluster = %node.cluster, node = %node.name, host = %a.host, error = %e, "DNS lookup failed; keeping the last addresses");
        }
    }
}

/// Why a probe failed; its text is the `reason` of the "node is down" log line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed (`[clusters.X.tls]`): the name checked and why.
    #[error("{0}")]
    Tls(crate::broker_tls::HandshakeError),
    #[error("send CONNECT: {0}")]
    Send(std::io::Error),
    #[error("read CONNACK: {0}")]
    Read(std::io::Error),
    #[error("closed before CONNACK")]
    Closed,
    #[error("answer is not a CONNACK")]
    NotConnack,
    /// A CONNACK other than "accepted", with what to change (see [`refused`]).
    #[error("{0}")]
    Refused(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One check of `node`: connect, send a PROXY header when the cluster sends them to
/// its brokers (`proxy`; a broker listener that expects one closes a connection
/// without it), with `tls` the TLS handshake (as HAProxy's checks of an `ssl` server
/// do), then for `mqtt` checks a CONNECT and its CONNACK.
///
/// The header is the one the PROXY protocol defines for a proxy's own connections,
/// and the one HAProxy sends on the checks of a `send-proxy`/`send-proxy-v2` server:
/// v1 `PROXY UNKNOWN`, v2 the LOCAL command, both telling the broker to use the
/// connection's own addresses.
pub(crate) async fn probe(
    node: &Node,
    h: &HealthConfig,
    proxy: ProxyProtocolOut,
    tls: Option<&crate::broker_tls::BrokerTls>,
    client_id: &str,
) -> Result<(), ProbeError> {
    let mut tcp = crate::upstream::connect_node(node)
        .await
        .map_err(ProbeError::Connect)?;
    let header = crate::proxy::encode::own_connection_header(proxy);
    if !header.is_empty() {
        tcp.write_all(&header).await.map_err(ProbeError::Send)?;
    }
    let mut s = match tls {
        None => crate::upstream::Broker::Plain(tcp),
        Some(t) => {
            let _ = tcp.set_nodelay(true);
            let host = node.address().host.clone();
            let tls = t.handshake(tcp, &host).await.map_err(ProbeError::Tls)?;
            crate::upstream::Broker::Tls(Box::new(tls))
        }
    };
    if h.check == CheckKind::Tcp {
        // Closed with a reset, as HAProxy closes its checks: a FIN would leave one
        // TIME_WAIT socket on an ephemeral port per check.
        let _ = s.tcp().set_zero_linger();
        return Ok(());
    }
    let _ = s.tcp().set_nodelay(true);
    let pkt = mqtt::connect::encode_connect(
        h.check == CheckKind::Mqtt5,
        client_id,
        h.username.as_deref(),
        h.password.as_ref().map(|p| p.expose()),
        10,
    );
    s.write_all(&pkt).await.map_err(ProbeError::Send)?;
    let mut buf = [0u8; 8];
    let mut n = 0;
    let info = loop {
        let r = s.read(&mut buf[n..]).await.map_err(ProbeError::Read)?;
        if r == 0 {
            return Err(ProbeError::Closed);
        }
        n += r;
        match observe_connack(&buf[..n]) {
            Ok(Parse::Complete(info)) => break info,
            Ok(Parse::Incomplete) if n < buf.len() => continue,
            _ => return Err(ProbeError::NotConnack),
        }
    };
    let _ = s.write_all(&mqtt::CONNECT_DISCONNECT).await;
    let _ = s.shutdown().await;
    if info.code == 0 {
        Ok(())
    } else {
        Err(ProbeError::Refused(refused(
            info.code,
            &node.cluster,
            h.username.as_deref(),
        )))
    }
}

/// Why an `mqtt` check got CONNACK `code` and, for a refused login (0x04 bad user name
/// or password, 0x05 not authorized: a broker with `allow_anonymous false`), exactly
/// what to add to the config.
fn refused(code: u8, cluster: &str, username: Option<&str>) -> String {
    let table = format!("[clusters.{cluster}.health]");
    // 3.1.1 return codes 0x04 / 0x05 and their MQTT 5 reason codes 0x86 / 0x87.
    let what = match code {
        0x04 | 0x86 => "bad user name or password",
        0x05 | 0x87 => "not authorized",
        0x02 | 0x85 => {
            return format!(
                "CONNACK code {code:#04x} (client identifier not valid): set \
                 client_id_prefix in {table} to a prefix the broker accepts"
            )
        }
        _ => return format!("CONNACK code {code:#04x}"),
    };
    let prefix = "if the broker only takes some client ids (clientid_prefixes), set \
                  client_id_prefix there too";
    match username {
        None => format!(
            "CONNACK code {code:#04x} ({what}): the broker refuses the anonymous health check; \
             add username = \"...\" and password_file = \"...\" (a client the broker \
             accepts) to {table}, or set check = \"tcp\" there; {prefix}"
        ),
        Some(user) => format!(
            "CONNACK code {code:#04x} ({what}): the broker refuses the health check's login \
             as {user:?}; check {table} username and password_file (or password_env) \
             against the broker's clients, or set check = \"tcp\" there; {prefix}"
        ),
    }
}

/// Used by tests and the status page: how long until a node flips, roughly.
pub fn worst_case_detection(h: &HealthConfig) -> Duration {
    h.interval + h.fast_interval * h.fall.saturating_sub(1) + h.timeout * h.fall
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `localhost` resolves to 127.0.0.1 only (not ::1 first), with the system
    /// configuration and without it.
    #[tokio::test]
    async fn localhost_resolves_to_ipv4() {
        let no_conf = || Err(std::io::Error::other("no resolv.conf").into());
        for (what, r) in [
            ("system", build_resolver(TokioResolver::builder_tokio())),
            ("fallback", build_resolver(no_conf())),
        ] {
            let r = r.expect("resolver");
            let ips = timeout(Duration::from_secs(5), r.lookup_ip("localhost"))
                .await
                .expect("answered in time")
                .expect("localhost resolves");
            let ips: Vec<_> = ips.iter().collect();
            assert_eq!(ips, [std::net::IpAddr::from([127, 0, 0, 1])], "{what}");
        }
    }

    /// Without `/etc/resolv.conf` the resolver still builds and reads `/etc/hosts`
    /// (a name other than `localhost`, which hickory answers by itself).
    #[tokio::test]
    async fn the_fallback_resolver_reads_the_hosts_file() {
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let entry = hosts.lines().find_map(|l| {
            let mut w = l.split('#').next().unwrap_or("").split_whitespace();
            let ip: std::net::Ipv4Addr = w.next()?.parse().ok()?;
            let name = w.find(|n| !n.ends_with("localhost") && !n.starts_with("ip6-"))?;
            Some((std::net::IpAddr::from(ip), name.to_string()))
        });
        let Some((ip, name)) = entry else {
            eprintln!("/etc/hosts names no IPv4 host but localhost; skipping");
            return;
        };
        let no_conf = Err(std::io::Error::other("no resolv.conf").into());
        let r = build_resolver(no_conf).expect("fallback resolver");
        let ips = timeout(Duration::from_secs(5), r.lookup_ip(name.as_str()))
            .await
            .expect("answered in time")
            .unwrap_or_else(|e| panic!("{name} from /etc/hosts: {e}"));
        assert!(ips.iter().any(|a| a == ip), "{name}: {ips:?}, want {ip}");
    }

    #[test]
    fn losing_capacity_is_a_warning() {
        assert!(down_is_a_warning(Mode::FullSync, Health::Up), "leader lost");
        assert!(down_is_a_warning(Mode::Dynsec, Health::Up));
        assert!(down_is_a_warning(Mode::Dynsec, Health::Unknown));
        assert!(
            !down_is_a_warning(Mode::FullSync, Health::Unknown),
            "a full-sync follower is down by design"
        );
    }

    fn cfg() -> HealthConfig {
        HealthConfig {
            check: CheckKind::Tcp,
            interval: Duration::from_secs(2),
            fast_interval: Duration::from_millis(250),
            down_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            username: None,
            password: None,
            client_id_prefix: "mqgate-hc-".into(),
        }
    }

    #[test]
    fn rise_and_fall_need_that_many_results_in_a_row() {
        // Up: two failures are not enough with fall = 3, the third is.
        assert_eq!(transition(Health::Up, 0, 1, 2, 3), None);
        assert_eq!(transition(Health::Up, 0, 2, 2, 3), None);
        assert_eq!(transition(Health::Up, 0, 3, 2, 3), Some(Health::Down));
        // Down: one success is not enough with rise = 2.
        assert_eq!(transition(Health::Down, 1, 0, 2, 3), None);
        assert_eq!(transition(Health::Down, 2, 0, 2, 3), Some(Health::Up));
        // Successes while up and failures while down change nothing.
        assert_eq!(transition(Health::Up, 5, 0, 2, 3), None);
        assert_eq!(transition(Health::Down, 0, 9, 2, 3), None);
        // The first probe decides at once.
        assert_eq!(transition(Health::Unknown, 1, 0, 2, 3), Some(Health::Up));
        assert_eq!(transition(Health::Unknown, 0, 1, 2, 3), Some(Health::Down));
    }

    #[test]
    fn probe_timers_follow_the_node_state() {
        let h = cfg();
        assert_eq!(next_wait(&h, Health::Up, 4, 0, false), h.interval);
        assert_eq!(next_wait(&h, Health::Up, 0, 1, false), h.fast_interval);
        assert_eq!(next_wait(&h, Health::Down, 0, 3, false), h.down_interval);
        assert_eq!(next_wait(&h, Health::Down, 1, 0, false), h.fast_interval);
        // A full-sync cluster without a leader looks for the new one quickly.
        assert_eq!(next_wait(&h, Health::Down, 0, 3, true), h.fast_interval);
        assert_eq!(next_wait(&h, Health::Up, 4, 0, true), h.interval);
    }

    /// A broker with `allow_anonymous false` answers the anonymous `mqtt` check with
    /// CONNACK 0x05: the reason (logged with "node is down") says what to add.
    #[tokio::test]
    async fn a_refused_login_says_what_to_add_to_the_config() {
        use tokio::io::AsyncReadExt;
        let broker = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake broker");
        let port = broker.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = broker.accept().await {
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(&[0x20, 0x02, 0x00, 0x05]).await;
            }
        });
        let text = format!(
            "[[listeners]]\nname = \"m\"\nbind = \"127.0.0.1:0\"\ncluster = \"brokers\"\n\
             [clusters.brokers]\nnodes = [ {{ name = \"n1\", address = \"127.0.0.1:{port}\" }} ]\n"
        );
        let cfg = match crate::config::parse(std::path::Path::new("/tmp/hc.toml"), &text) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let cluster = Cluster::new(&cfg.clusters[0], Arc::new(Metrics::new()), "t");
        let node = cluster.node("n1").expect("node");
        let err = probe(
            &node,
            &cfg.clusters[0].health,
            ProxyProtocolOut::Off,
            None,
            "hc-test",
        )
        .await
        .expect_err("CONNACK 0x05 is a failed check")
        .to_string();
        for want in [
            "CONNACK code 0x05 (not authorized)",
            "[clusters.brokers.health]",
            "username",
            "password_file",
            "check = \"tcp\"",
        ] {
            assert!(err.contains(want), "{want:?} missing in: {err}");
        }
        let with_user = refused(0x04, "brokers", Some("mqgate-health"));
        assert!(
            with_user.contains("bad user name or password")
                && with_user.contains("\"mqgate-health\"")
                && with_user.contains("password_file"),
            "{with_user}"
        );
        assert_eq!(refused(0x03, "brokers", None), "CONNACK code 0x03");
    }

    /// A one-record DNS server: answers every A query with `answer`, others empty.
    async fn fake_dns(answer: Arc<std::sync::Mutex<[u8; 4]>>) -> SocketAddr {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind fake DNS");
        let addr = sock.local_addr().expect("fake DNS addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let q = &buf[..n];
                let mut i = 12;
                while i < n && q[i] != 0 {
                    i += 1 + q[i] as usize;
                }
                let qend = (i + 5).min(n);
                let qtype = u16::from_be_bytes([q[qend - 4], q[qend - 3]]);
                let a = qtype == 1;
                let mut r = Vec::with_capacity(64);
                r.extend_from_slice(&q[..2]);
                r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, a as u8, 0, 0, 0, 0]);
                r.extend_from_slice(&q[12..qend]);
                if a {
                    let ip = *answer.lock().unwrap_or_else(|p| p.into_inner());
                    r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
                    r.extend_from_slice(&ip);
                }
                let _ = sock.send_to(&r, from).await;
            }
        });
        addr
    }

    /// A node named by a host name follows its DNS answer: after the answer changes,
    /// the next refresh moves new connections to the new address.
    #[tokio::test]
    async fn a_changed_dns_answer_moves_new_connections() {
        use hickory_resolver::config::{ResolveHosts, ResolverOpts};
        let l1 = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let port = l1.local_addr().expect("addr").port();
        let Ok(l2) = tokio::net::TcpListener::bind(("127.0.0.2", port)).await else {
            eprintln!("127.0.0.2:{port} not bindable here; skipping");
            return;
        };
        let answer = Arc::new(std::sync::Mutex::new([127, 0, 0, 1]));
        let dns = fake_dns(answer.clone()).await;
        let mut ns = NameServerConfig::udp(dns.ip());
        for c in &mut ns.connections {
            c.port = dns.port();
        }
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
        opts.timeout = Duration::from_secs(2);
        let resolver = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .expect("resolver");

        let text = format!(
            "[[listeners]]\nname = \"m\"\nbind = \"127.0.0.1:0\"\ncluster = \"c\"\n\
             [clusters.c]\nnodes = [ {{ name = \"n1\", address = \"broker.mqgate.internal:{port}\" }} ]\n"
        );
        let cfg = match crate::config::parse(std::path::Path::new("/tmp/dns.toml"), &text) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let cluster = Cluster::new(&cfg.clusters[0], Arc::new(Metrics::new()), "t");
        let node = cluster.node("n1").expect("node");
        assert!(node.resolved().is_empty(), "nothing resolved yet");

        let wait = Duration::from_secs(5);
        for (ip, listener) in [
            ([127, 0, 0, 1], &l1),
            ([127, 0, 0, 2], &l2),
            ([127, 0, 0, 1], &l1),
        ] {
            *answer.lock().unwrap_or_else(|p| p.into_inner()) = ip;
            refresh_dns(&resolver, &node, &node.address()).await;
            let want = SocketAddr::from((ip, port));
            assert_eq!(*node.resolved(), vec![want]);
            let _client = crate::upstream::connect_node(&node).await.expect("connect");
            let (_, from) = timeout(wait, listener.accept())
                .await
                .expect("accepted in time")
                .expect("accept");
            assert_eq!(from.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
        }
    }
}
