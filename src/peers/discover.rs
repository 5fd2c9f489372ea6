//! `[peers] discover`: peers found through DNS. Every address the name resolves to
//! (A/AAAA records and the configured port, or SRV records), except this instance's
//! own and those of static peers, is dialed ([`super::dial`]); addresses that leave the
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
    use super::is_own;

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
