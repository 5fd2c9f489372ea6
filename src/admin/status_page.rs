//! `/status`: one self-contained HTML page for a person at a browser — clusters with
//! mode and leader, nodes with health, admin state, connections and CONNACK failures,
//! peers and sticky entry counts.
//!
//! It has no external assets (styles are inline, no scripts), so it works on an
//! isolated network, and it reloads itself with `<meta http-equiv="refresh">`
//! (`?refresh=N` seconds, `0` turns it off). Every string taken from the
//! configuration or the state is HTML-escaped before it is embedded.

use super::view::{ClusterView, NodeView, PeersView, StatusView};
use std::fmt::Write as _;

/// Escape text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em;color:#1d2330;background:#f6f7f9}
h1{font-size:1.4em;margin:0 0 .2em}
h2{font-size:1.15em;margin:1.4em 0 .4em}
.meta{color:#5b6474;font-size:.9em}
table{border-collapse:collapse;background:#fff;min-width:60%;box-shadow:0 1px 2px #0001}
th,td{padding:.35em .8em;border-bottom:1px solid #e3e6eb;text-align:left;white-space:nowrap}
th{background:#eef0f4;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.05em .55em;border-radius:.8em;font-size:.85em;font-weight:600}
.ok{background:#d7f5df;color:#11632c}
.bad{background:#fbd9d9;color:#8a1111}
.warn{background:#fdeccb;color:#7a4b00}
.muted{background:#e6e8ec;color:#4a5160}
.leader{background:#dbe7ff;color:#123f99}
";

fn badge(class: &str, text: &str) -> String {
    format!("<span class=\"badge {class}\">{}</span>", escape(text))
}

fn health_badge(h: &str) -> String {
    let class = match h {
        "up" => "ok",
        "down" => "bad",
        _ => "muted",
    };
    badge(class, h)
}

fn admin_badge(s: &str) -> String {
    let class = match s {
        "ready" => "ok",
        "drain" => "warn",
        _ => "bad",
    };
    badge(class, s)
}

/// A unix time as `2024-05-01 12:00:00 UTC`.
fn utc(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

/// The whole page.
pub fn render(s: &StatusView, refresh_secs: u32) -> String {
    let mut h = String::with_capacity(8 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
    );
    if refresh_secs > 0 {
        let _ = write!(
            h,
            "<meta http-equiv=\"refresh\" content=\"{refresh_secs}\">"
        );
    }
    let _ = write!(
        h,
        "<title>mqgate {} — status</title><style>{STYLE}</style></head><body>",
        escape(&s.instance)
    );
    let overall = if s.ready {
        badge("ok", "ready")
    } else {
        badge("bad", "not ready")
    };
    let _ = write!(
        h,
        "<h1>mqgate <span id=\"instance\">{}</span> {overall}</h1>\
         <div class=\"meta\">version {} · config {} loaded {} · page generated {} · {}</div>",
        escape(&s.instance),
        escape(&s.version),
        escape(&s.config_file),
        utc(s.config_loaded_at.max(0) as u64),
        utc(crate::sticky::now_ms() / 1000),
        if refresh_secs > 0 {
            format!("refreshes every {refresh_secs}s")
        } else {
            "auto-refresh off".to_string()
        },
    );
    for c in &s.clusters {
        cluster(&mut h, c);
    }
    listeners(&mut h, s);
    peers(&mut h, s.peers.as_ref());
    h.push_str("</body></html>\n");
    h
}

fn cluster(h: &mut String, c: &ClusterView) {
    let cid = escape(&c.name);
    let ready = if c.ready {
        badge("ok", "ready")
    } else {
        badge("bad", "cannot take clients")
    };
    let _ = write!(
        h,
        "<section class=\"cluster\" id=\"cluster-{cid}\"><h2>cluster {cid} {ready}</h2>\
         <div class=\"meta\">mode <b>{}</b>",
        escape(&c.mode)
    );
    if c.mode == "full-sync" {
        let leader = match &c.leader {
            Some(l) => badge("leader", l),
            None => badge("bad", "none"),
        };
        let _ = write!(h, " · leader <span class=\"leader-name\">{leader}</span>");
    } else {
        let _ = write!(
            h,
            " · balance {} · sticky entries <span class=\"sticky-entries\">{}</span>",
            escape(&c.balance),
            c.sticky_entries
        );
        if c.subscriptions > 0 {
            let _ = write!(
                h,
                " · stored subscriptions <span class=\"subscriptions\">{}</span>",
                c.subscriptions
            );
        }
    }
    h.push_str(
        "</div><table><thead><tr><th>node</th><th>address</th><th>health</th><th>admin state</th>\
         <th>role</th><th>active</th><th>total</th><th>CONNACK failures</th></tr></thead><tbody>",
    );
    for n in &c.nodes {
        node_row(h, c, n);
    }
    h.push_str("</tbody></table></section>");
}

fn node_row(h: &mut String, c: &ClusterView, n: &NodeView) {
    let role = if n.leader {
        badge("leader", "leader")
    } else if c.mode == "full-sync" {
        "follower".to_string()
    } else {
        String::new()
    };
    let fails = if n.connack_failures > 0 {
        badge("warn", &n.connack_failures.to_string())
    } else {
        "0".to_string()
    };
    let _ = write!(
        h,
        "<tr class=\"node\" data-node=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{role}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{fails}</td></tr>",
        escape(&n.name),
        escape(&n.name),
        escape(&n.address),
        health_badge(&n.health),
        admin_badge(&crate::cluster::pacing::state_label(&n.admin_state, n.paced_close_lanes_left)),
        n.active_connections,
        n.connections_total,
    );
}

fn listeners(h: &mut String, s: &StatusView) {
    if s.listeners.is_empty() {
        return;
    }
    h.push_str(
        "<h2>listeners</h2><table><thead><tr><th>listener</th><th>bind</th><th>cluster</th>\
         <th>transport</th><th>PROXY header</th></tr></thead><tbody>",
    );
    for l in &s.listeners {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&l.name),
            escape(&l.bind),
            escape(&l.cluster),
            escape(&l.transport),
            if l.proxy_protocol { "expected" } else { "no" },
        );
    }
    h.push_str("</tbody></table>");
}

fn peers(h: &mut String, p: Option<&PeersView>) {
    let Some(p) = p else {
        h.push_str("<h2>peers</h2><p class=\"meta\">no peers configured</p>");
        return;
    };
    let _ = write!(
        h,
        "<h2>peers</h2><div class=\"meta\">this gateway is <b>{}</b>, listening on {}</div>\
         <table><thead><tr><th>peer</th><th>address</th><th>link</th><th>updates sent</th>\
         <th>updates received</th></tr></thead><tbody>",
        escape(&p.name),
        escape(&p.bind)
    );
    for peer in &p.peers {
        let link = match peer.up {
            Some(true) => badge("ok", "up"),
            Some(false) => badge("bad", "down"),
            None => badge("muted", "unknown"),
        };
        let _ = write!(
            h,
            "<tr class=\"peer\"><td>{}</td><td>{}</td><td>{link}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td></tr>",
            escape(&peer.name),
            escape(&peer.address),
            peer.updates_sent,
            peer.updates_received
        );
    }
    h.push_str("</tbody></table>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::view::ListenerView;

    fn sample(name: &str) -> StatusView {
        StatusView {
            instance: "gate<1>".into(),
            version: "0.1.0".into(),
            ready: true,
            config_loaded_at: 0,
            config_file: "/etc/mqgate.toml".into(),
            clusters: vec![ClusterView {
                name: "c&1".into(),
                mode: "full-sync".into(),
                balance: "hash".into(),
                ready: true,
                leader: Some(name.into()),
                sticky_entries: 0,
                subscriptions: 0,
                nodes: vec![NodeView {
                    name: name.into(),
                    address: "127.0.0.1:1883".into(),
                    health: "up".into(),
                    admin_state: "ready".into(),
                    leader: true,
                    active_connections: 3,
                    connections_total: 7,
                    connack_failures: 1,
                    paced_close_lanes_left: 0,
                }],
            }],
            listeners: vec![ListenerView {
                name: "mqtt".into(),
                bind: "0.0.0.0:1883".into(),
                cluster: "c&1".into(),
                tls: false,
                transport: "ws".into(),
                proxy_protocol: false,
            }],
            peers: None,
        }
    }

    #[test]
    fn escapes_everything_embedded() {
        let page = render(&sample("<script>alert('x')</script>"), 5);
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(page.contains("gate&lt;1&gt;"));
        assert!(page.contains("c&amp;1"));
        assert!(page.contains("<td>ws</td>"), "the listener's transport");
    }

    #[test]
    fn refresh_can_be_turned_off() {
        assert!(render(&sample("n1"), 5).contains("http-equiv=\"refresh\" content=\"5\""));
        assert!(!render(&sample("n1"), 0).contains("http-equiv"));
    }
}
