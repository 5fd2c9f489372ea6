//! The `mqgate status` tables.

use super::*;

/// Left-aligned columns, two spaces apart, each line prefixed by `indent`.
pub(super) fn table(header: &[&str], rows: &[Vec<String>], indent: &str) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::from(indent);
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{:<w$}  ", c, w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub(super) fn cluster_block(out: &mut String, c: &ClusterView) {
    let mut head = format!("cluster {}  mode {}", c.name, c.mode);
    if c.mode == "full-sync" {
        let _ = write!(head, "  leader {}", c.leader.as_deref().unwrap_or("NONE"));
    } else {
        let _ = write!(
            head,
            "  balance {}  sticky entries {}",
            c.balance, c.sticky_entries
        );
    }
    head.push_str(if c.ready {
        "  ready"
    } else {
        "  NOT READY (no node can take clients)"
    });
    out.push_str(&head);
    out.push('\n');
    let rows: Vec<Vec<String>> = c
        .nodes
        .iter()
        .map(|n| {
            let role = if n.leader {
                "leader"
            } else if c.mode == "full-sync" {
                "follower"
            } else {
                "-"
            };
            vec![
                n.name.clone(),
                n.address.clone(),
                n.health.clone(),
                crate::cluster::pacing::state_label(&n.admin_state, n.paced_close_lanes_left),
                role.to_string(),
                n.active_connections.to_string(),
                n.connections_total.to_string(),
                n.connack_failures.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NODE",
            "ADDRESS",
            "HEALTH",
            "STATE",
            "ROLE",
            "ACTIVE",
            "TOTAL",
            "CONNACK FAILURES",
        ],
        &rows,
        "  ",
    ));
}

/// `mqgate status` output.
pub fn status_table(s: &StatusView) -> String {
    let mut out = format!(
        "mqgate {} (version {}): {}\n",
        s.instance,
        s.version,
        if s.ready { "ready" } else { "NOT READY" }
    );
    for c in &s.clusters {
        out.push('\n');
        cluster_block(&mut out, c);
    }
    match &s.peers {
        None => out.push_str("\npeers: none configured\n"),
        Some(p) => {
            let _ = writeln!(out, "\npeers (this gateway: {} on {})", p.name, p.bind);
            let rows: Vec<Vec<String>> = p
                .peers
                .iter()
                .map(|x| {
                    vec![
                        x.name.clone(),
                        x.address.clone(),
                        match x.up {
                            Some(true) => "up",
                            Some(false) => "down",
                            None => "unknown",
                        }
                        .to_string(),
                        x.updates_sent.to_string(),
                        x.updates_received.to_string(),
                    ]
                })
                .collect();
            out.push_str(&table(
                &["PEER", "ADDRESS", "LINK", "SENT", "RECEIVED"],
                &rows,
                "  ",
            ));
        }
    }
    out
}
