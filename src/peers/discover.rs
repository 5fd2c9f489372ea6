//! `[peers] discover`: peers found through DNS. Every address the name resolves to
//! (A/AAAA records and the configured port, or SRV records), except this instance's
//! own and those of static peers, is dialed (`super::dial`); addresses that leave the
//! answer are no longer dialed, and links with gateways whose address left it close.
//! The name is looked up again every `discover_interval`, when a discovered link fails,
//! and when an unknown address dials in (at most once per [`MIN_SPACING`]). A failed
//! lookup keeps the previous answer (a DNS outage does not cut the mesh).

use super::dial::dial_loop;
use super::Ctx;
use crate::config::PeerDiscovery;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Lookups are at least this far apart.
pub const MIN_SPACING: Duration = Duration::from_secs(1);
/// Bound on one lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Every address `d` names.
pub async fn lookup(
    resolver: &TokioResolver,
    d: &PeerDiscovery,
) -> Result<BTreeSet<SocketAddr>, String> {
    let mut out = BTreeSet::new();
    match d.port {
        Some(port) => {
            let ips = resolver
                .lookup_ip(d.name.as_str())
                .await
                .map_err(|e| e.to_string())?;
            out.extend(
                ips.iter()
                    .map(|ip| SocketAddr::new(ip.to_canonical(), port)),
            );
        }
        None => {
            let srv = resolver
                .srv_lookup(d.name.as_str())
                .await
                .map_err(|e| e.to_string())?;
            for r in srv.answers() {
                let RData::SRV(s) = &r.data else { continue };
                let target = s.target.to_string();
                match resolver.lookup_ip(target.as_str()).await {
                    Ok(ips) => out.extend(
                        ips.iter()
                            .map(|ip| SocketAddr::new(ip.to_canonical(), s.port)),
                    ),
                    Err(e) => tracing::debug!(%target, "SRV target does not resolve: {e}"),
                }
            }
        }
    }
    Ok(out)
}

/// Whether `addr` is this instance's own peers listener (`bound`).
pub fn is_own(addr: SocketAddr, bound: SocketAddr) -> bool {
    if addr.port() != bound.port() {
        return false;
    }
    if !bound.ip().is_unspecified() {
        return addr.ip() == bound.ip().to_canonical();
    }
    // Bound on every address: ours if this host has it (binding to it succeeds).
    std::net::UdpSocket::bind(SocketAddr::new(addr.ip(), 0)).is_ok()
}

/// The discovery loop of one peer service, until `stop`.
pub(super) async fn run(ctx: Ctx, stop: CancellationToken) {
    let mut dialers: HashMap<SocketAddr, CancellationToken> = HashMap::new();
    let mut logged_error = false;
    let mut previous: Option<BTreeSet<SocketAddr>> = None;
    loop {
        let settings = ctx.settings.load_full();
        let answer = match &settings.discovery {
            None => Some(BTreeSet::new()),
            Some(d) => {
                let r = tokio::select! {
                    r = tokio::time::timeout(LOOKUP_TIMEOUT, lookup(&ctx.host.resolver, d)) => r,
                    _ = stop.cancelled() => return,
                };
                match r {
                    Ok(Ok(a)) => {
                        logged_error = false;
                        Some(a)
                    }
                    Ok(Err(e)) => {
                        let msg = "peer discovery: lookup failed; keeping the previous answer";
                        if std::mem::replace(&mut logged_error, true) {
                            tracing::debug!(name = %d.name, "{msg}: {e}");
                        } else {
                            tracing::warn!(name = %d.name, "{msg}: {e}");
                        }
                        None
                    }
                    Err(_) => {
                        tracing::debug!(name = %d.name, "peer discovery: lookup timed out");
                        None
                    }
                }
            }
        };
        if let Some(answer) = answer {
            let statics = static_addresses(&settings.peers).await;
            let bound = ctx.bound();
            let peers: BTreeSet<SocketAddr> = answer
                .into_iter()
                .filter(|a| !is_own(*a, bound) && !statics.contains(a))
                .collect();
            if previous.as_ref() != Some(&peers) {
                tracing::info!(
                    peers = ?peers.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "peer discovery: answer changed"
                );
                previous = Some(peers.clone());
            }
            let ips: HashSet<IpAddr> = peers.iter().map(|a| a.ip()).collect();
            ctx.discovered.store(Arc::new(ips.clone()));
            dialers.retain(|addr, token| {
                let keep = peers.contains(addr);
                if !keep {
                    token.cancel();
                }
                keep
            });
            ctx.links.close_unlisted(&settings.peers, &ips);
            for addr in peers {
                if dialers.contains_key(&addr) {
                    continue;
                }
                let token = stop.child_token();
                dialers.insert(addr, token.clone());
                ctx.host
                    .bg_tracker
                    .spawn(dial_loop(ctx.clone(), None, addr.to_string(), token));
            }
        }
        let interval = settings
            .discovery
            .as_ref()
            .map(|d| d.interval)
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = ctx.rediscover.notified() => {}
            _ = stop.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(MIN_SPACING) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// The static peers' addresses, resolved (a discovered address that is one of them is
/// left to the static dialer).
async fn static_addresses(peers: &[crate::config::PeerConfig]) -> HashSet<SocketAddr> {
    let mut out = HashSet::new();
    for p in peers {
        if let Ok(Ok(addrs)) =
            tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(&p.address)).await
        {
            out.extend(addrs.map(|a| SocketAddr::new(a.ip().to_canonical(), a.port())));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::config::{
        LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
    };
    use hickory_resolver::net::runtime::TokioRuntimeProvider;

    /// A DNS server on loopback: `_peers._tcp.mesh.test` SRV → `gate-b.mesh.test`
    /// port 7401 and `gate-c.mesh.test` port 7402; those names (and `mesh.test`) A →
    /// 127.0.0.2 / .3.
    async fn srv_dns() -> SocketAddr {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind fake DNS");
        let addr = sock.local_addr().expect("addr");
        fn name(n: &str) -> Vec<u8> {
            let mut out = Vec::new();
            for l in n.split('.') {
                out.push(l.len() as u8);
                out.extend_from_slice(l.as_bytes());
            }
            out.push(0);
            out
        }
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let q = &buf[..n];
                let mut i = 12;
                let mut labels = Vec::new();
                while i < n && q[i] != 0 {
                    let l = q[i] as usize;
                    labels.push(String::from_utf8_lossy(&q[i + 1..(i + 1 + l).min(n)]).to_string());
                    i += 1 + l;
                }
                let qname = labels.join(".").to_ascii_lowercase();
                let qend = (i + 5).min(n);
                let qtype = u16::from_be_bytes([q[qend - 4], q[qend - 3]]);
                let mut answers: Vec<(u16, Vec<u8>)> = Vec::new();
                match (qtype, qname.as_str()) {
                    (33, "_peers._tcp.mesh.test") => {
                        for (target, port) in
                            [("gate-b.mesh.test", 7401u16), ("gate-c.mesh.test", 7402)]
                        {
                            let mut rd = vec![0, 10, 0, 50];
                            rd.extend_from_slice(&port.to_be_bytes());
                            rd.extend_from_slice(&name(target));
                            answers.push((33, rd));
                        }
                    }
                    (1, "gate-b.mesh.test") => answers.push((1, vec![127, 0, 0, 2])),
                    (1, "gate-c.mesh.test") => answers.push((1, vec![127, 0, 0, 3])),
                    (1, "mesh.test") => {
                        answers.push((1, vec![127, 0, 0, 2]));
                        answers.push((1, vec![127, 0, 0, 3]));
                    }
                    _ => {}
                }
                let mut r = Vec::with_capacity(128);
                r.extend_from_slice(&q[..2]);
                r.extend_from_slice(&[0x81, 0x80, 0, 1]);
                r.extend_from_slice(&(answers.len() as u16).to_be_bytes());
                r.extend_from_slice(&[0, 0, 0, 0]);
                r.extend_from_slice(&q[12..qend]);
                for (t, rd) in answers {
                    r.extend_from_slice(&[0xc0, 0x0c]);
                    r.extend_from_slice(&t.to_be_bytes());
                    r.extend_from_slice(&[0, 1, 0, 0, 0, 0]);
                    r.extend_from_slice(&(rd.len() as u16).to_be_bytes());
                    r.extend_from_slice(&rd);
                }
                let _ = sock.send_to(&r, from).await;
            }
        });
        addr
    }

    /// A/AAAA targets use the configured port; SRV targets their own ports.
    #[tokio::test]
    async fn a_records_and_srv_records_give_the_peer_addresses() {
        let dns = srv_dns().await;
        let mut ns = NameServerConfig::udp(dns.ip());
        for c in &mut ns.connections {
            c.port = dns.port();
        }
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ip_strategy = LookupIpStrategy::Ipv4Only;
        opts.timeout = Duration::from_secs(2);
        let resolver = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .expect("resolver");
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let srv = PeerDiscovery {
            name: "_peers._tcp.mesh.test".into(),
            port: None,
            interval: Duration::from_secs(5),
        };
        let got = lookup(&resolver, &srv).await.expect("SRV lookup");
        assert_eq!(
            got,
            BTreeSet::from([a("127.0.0.2:7401"), a("127.0.0.3:7402")])
        );
        let plain = PeerDiscovery {
            name: "mesh.test".into(),
            port: Some(7400),
            interval: Duration::from_secs(5),
        };
        let got = lookup(&resolver, &plain).await.expect("A lookup");
        assert_eq!(
            got,
            BTreeSet::from([a("127.0.0.2:7400"), a("127.0.0.3:7400")])
        );
    }

    #[test]
    fn own_address_is_the_bound_one_or_a_local_one_with_the_same_port() {
        let a = |s: &str| s.parse().expect("addr");
        assert!(is_own(a("127.0.0.2:7400"), a("127.0.0.2:7400")));
        assert!(!is_own(a("127.0.0.3:7400"), a("127.0.0.2:7400")));
        assert!(!is_own(a("127.0.0.2:7401"), a("127.0.0.2:7400")));
        assert!(is_own(a("127.0.0.1:7400"), a("0.0.0.0:7400")));
        assert!(
            !is_own(a("192.0.2.1:7400"), a("0.0.0.0:7400")),
            "TEST-NET is not local"
        );
    }
}
