//! `mqgate check`: the one-screen summary of a valid config, and its JSON form.

use super::*;

/// One screen describing what a valid config sets up.
pub fn summary(c: &Config) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}: OK", c.source.display());
    for l in &c.listeners {
        let tls = match &l.tls {
            Some(t) if t.client_ca.is_some() => " (TLS, client certificates required)",
            Some(_) => " (TLS)",
            None => "",
        };
        let pp = if l.proxy_protocol {
            ", expects PROXY header"
        } else {
            ""
        };
        let ws = match &l.websocket {
            Some(w) => format!(", MQTT over WebSocket at {}", w.path),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "  listener {:<12} {}{}{}{} -> cluster {}",
            l.name, l.bind, tls, ws, pp, l.cluster
        );
        if let Some(max) = l.max_connections {
            let _ = writeln!(s, "           at most {max} connections on this listener");
        }
        if let Some(id) = l.tls.as_ref().map(|t| t.identity).filter(|p| p.is_active()) {
            let _ = writeln!(
                s,
                "           client certificate identity: {}",
                identity(&id)
            );
        }
    }
    for cl in &c.clusters {
        let how = match cl.mode {
            Mode::FullSync => "full-sync: every client goes to the leader".to_string(),
            Mode::Dynsec => format!(
                "dynsec: balance {}, sticky on {} ({} sessions, expire {})",
                cl.balance.as_str(),
                cl.sticky.key.as_str(),
                cl.sticky.sessions.as_str(),
                human(cl.sticky.expire)
            ),
        };
        let _ = writeln!(s, "  cluster  {:<12} {}", cl.name, how);
        let _ = writeln!(
            s,
            "           health {} every {} (rise {}, fall {}), on node down: {}",
            cl.health.check.as_str(),
            human(cl.health.interval),
            cl.health.rise,
            cl.health.fall,
            cl.on_node_down.as_str()
        );
        for n in &cl.nodes {
            let _ = writeln!(s, "           node {:<12} {}", n.name, n.address);
        }
    }
    let _ = writeln!(
        s,
        "  admin    {}{}",
        c.admin.bind,
        if c.admin.token.is_some() {
            " (token required for changes)"
        } else {
            ""
        }
    );
    if let Some(p) = &c.peers {
        let _ = writeln!(
            s,
            "  peers    {} on {} with {} peer(s)",
            p.name,
            p.bind,
            p.peers.len()
        );
    }
    if !c.log.access.is_off() {
        let _ = writeln!(
            s,
            "  access   log to {} ({})",
            c.log.access.describe(),
            format_name(c.log.access_format)
        );
    }
    let _ = writeln!(
        s,
        "  limits   {} connections, CONNECT within {}, at most {} bytes",
        c.limits.max_connections,
        human(c.limits.connect_timeout),
        c.limits.max_connect_size
    );
    // `run` raises its soft open-file limit to the hard one: the pipes it will have.
    let _ = match c.limits.splice {
        crate::config::Splice::Auto => writeln!(
            s,
            "  splice   large flows between plain-TCP sockets, at most {} pipes{}",
            crate::fdlimit::pipe_budget(c, crate::fdlimit::current().hard),
            if c.limits.max_pipes.is_none() {
                " (from the open-file limit)"
            } else {
                ""
            }
        ),
        crate::config::Splice::Off => writeln!(s, "  splice   off"),
    };
    s
}

/// A duration the way the config file writes it: "250ms", "10s", "5m", "24h".
pub(super) fn human(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms >= 3_600_000 && ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms >= 60_000 && ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn format_name(f: crate::config::LogFormat) -> &'static str {
    match f {
        crate::config::LogFormat::Text => "text",
        crate::config::LogFormat::Json => "json",
    }
}

/// `username from cn, client id must match san_dns`.
fn identity(p: &crate::config::IdentityPolicy) -> String {
    let mut parts = Vec::new();
    if let Some(f) = p.username_from {
        parts.push(format!("username from {}", f.as_str()));
    }
    if let Some(f) = p.require_username_match {
        parts.push(format!("username must match {}", f.as_str()));
    }
    if let Some(f) = p.client_id_from {
        parts.push(format!("client id from {}", f.as_str()));
    }
    if let Some(f) = p.require_client_id_match {
        parts.push(format!("client id must match {}", f.as_str()));
    }
    parts.join(", ")
}

/// `mqgate check --json`: what the config would listen on and which nodes it would
/// use, for CI pipelines. Stable keys; absent settings are `null`.
pub fn summary_json(c: &Config) -> serde_json::Value {
    use serde_json::json;
    let field = |f: Option<crate::config::CertField>| f.map(|f| f.as_str());
    let listeners: Vec<_> = c
        .listeners
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "bind": l.bind.to_string(),
                "cluster": l.cluster,
                "tls": l.tls.is_some(),
                "client_certificates": l.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
                "proxy_protocol": l.proxy_protocol,
                "max_connections": l.max_connections,
                "identity": l.tls.as_ref().map(|t| json!({
                    "username_from": field(t.identity.username_from),
                    "client_id_from": field(t.identity.client_id_from),
                    "require_username_match": field(t.identity.require_username_match),
                    "require_client_id_match": field(t.identity.require_client_id_match),
                })),
            })
        })
        .collect();
    let clusters: Vec<_> = c
        .clusters
        .iter()
        .map(|cl| {
            json!({
                "name": cl.name,
                "mode": cl.mode.as_str(),
                "balance": cl.balance.as_str(),
                "health_check": cl.health.check.as_str(),
                "nodes": cl.nodes.iter().map(|n| json!({
                    "name": n.name,
                    "address": n.address.to_string(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "file": c.source.display().to_string(),
        "valid": true,
        "listeners": listeners,
        "clusters": clusters,
        "admin": { "bind": c.admin.bind.to_string(), "token": c.admin.token.is_some() },
        "peers": c.peers.as_ref().map(|p| json!({
            "name": p.name,
            "bind": p.bind.to_string(),
            "peers": p.peers.iter().map(|x| json!({"name": x.name, "address": x.address.to_string()})).collect::<Vec<_>>(),
        })),
        "limits": {
            "max_connections": c.limits.max_connections,
            "max_connect_size": c.limits.max_connect_size,
            "splice": c.limits.splice == crate::config::Splice::Auto,
            "max_pipes": crate::fdlimit::pipe_budget(c, crate::fdlimit::current().hard),
        },
        "access_log": {
            "target": c.log.access.describe(),
            "format": format_name(c.log.access_format),
        },
        "warnings": c.warning_lines(),
    })
}
