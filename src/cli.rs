//! The operator-facing side of the binary: `check`'s summary, `version`, and the
//! commands that talk to a running gateway's admin API (`status`, `node`, `sticky`).
//!
//! STUB for the client commands: the observability work completes them.

use crate::config::{Config, Mode};
use std::fmt::Write as _;
use std::process::ExitCode;

pub enum Request {
    Status,
    Node {
        state: String,
        cluster: String,
        node: String,
    },
    Sticky {
        action: String,
        cluster: String,
        key: String,
    },
}

pub fn version() -> String {
    format!(
        "mqgate {} ({} {})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

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
        let _ = writeln!(
            s,
            "  listener {:<12} {}{}{} -> cluster {}",
            l.name, l.bind, tls, pp, l.cluster
        );
    }
    for cl in &c.clusters {
        let how = match cl.mode {
            Mode::FullSync => "full-sync: every client goes to the leader".to_string(),
            Mode::Dynsec => format!(
                "dynsec: balance {}, sticky on {:?} ({:?} sessions, expire {:?})",
                cl.balance.as_str(),
                cl.sticky.key,
                cl.sticky.sessions,
                cl.sticky.expire
            ),
        };
        let _ = writeln!(s, "  cluster  {:<12} {}", cl.name, how);
        let _ = writeln!(
            s,
            "           health {:?} every {:?} (rise {}, fall {}), on node down: {:?}",
            cl.health.check, cl.health.interval, cl.health.rise, cl.health.fall, cl.on_node_down
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
    let _ = writeln!(
        s,
        "  limits   {} connections, CONNECT within {:?}, at most {} bytes",
        c.limits.max_connections, c.limits.connect_timeout, c.limits.max_connect_size
    );
    s
}

pub fn client(_req: Request, _admin: Option<String>) -> ExitCode {
    eprintln!("mqgate: this command is not implemented yet");
    ExitCode::FAILURE
}
