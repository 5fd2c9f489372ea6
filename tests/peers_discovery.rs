//! `[peers] discover`: gateways find each other through DNS (issue 30). Three real
//! mqgate processes on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (same peers port), each in
//! its own mount namespace whose `/etc/resolv.conf` names a DNS server this test runs
//! on loopback (`common::dns`); the test changes that server's answer.

use crate::common::dns::Dns;
use crate::common::*;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

const SECRET: &str = "discovered peers share this secret";
const NAME: &str = "mqgate-peers.test.internal";

/// A port free on 127.0.0.1, .2 and .3 (the gateways' peers port, as on Kubernetes
/// every pod listens on the same one).
fn port_free_on_three() -> Option<u16> {
    (0..50).find_map(|_| {
        let p = free_port();
        let ok =
            (1..=3).all(|i| std::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, i), p)).is_ok());
        ok.then_some(p)
    })
}

fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, i)
}

fn config(
    dir: &Path,
    name: &str,
    i: u8,
    listen: u16,
    admin: u16,
    peer_port: u16,
    nodes: &[Mosquitto],
) -> String {
    let secret_file = dir.join(format!("{name}.secret"));
    std::fs::write(&secret_file, SECRET).expect("write secret");
    config_with(
        name,
        i,
        listen,
        admin,
        peer_port,
        nodes,
        &format!("secret_file = \"{}\"\n", secret_file.display()),
    )
}

/// A gateway on 127.0.0.`i` that discovers its peers; `auth`: its secret or TLS lines.
fn config_with(
    name: &str,
    i: u8,
    listen: u16,
    admin: u16,
    peer_port: u16,
    nodes: &[Mosquitto],
    auth: &str,
) -> String {
    let nodes: Vec<&Mosquitto> = nodes.iter().collect();
    let mut s = basic_config(
        listen,
        admin,
        "dynsec",
        &nodes,
        "balance = \"round-robin\"\n[clusters.brokers.sticky]\nsessions = \"all\"\n",
    );
    s.push_str(&format!(
        "\n[peers]\nname = \"{name}\"\nbind = \"127.0.0.{i}:{peer_port}\"\n\
         discover = \"{NAME}:{peer_port}\"\ndiscover_interval = \"1s\"\n{auth}"
    ));
    s
}

fn peer_up(g: &Gate, peer: &str) -> f64 {
    g.metric("mqgate_peer_up", &[("peer", peer)])
}

/// `peer` as `g`'s status API lists it: (address, up), or `None` when not listed.
fn listed_peer(g: &Gate, peer: &str) -> Option<(String, bool)> {
    let status = crate::common::admin::status_json(g.admin_port);
    status["peers"]["peers"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == peer)
        .map(|p| {
            let addr = p["address"].as_str().unwrap_or_default().to_string();
            (addr, p["up"].as_bool().unwrap_or(false))
        })
}

/// Wait until `g`'s link to `peer` is up (or down); on timeout, fail with `g`'s log.
fn wait_link(g: &Gate, peer: &str, up: bool) {
    let want = if up { 1.0 } else { 0.0 };
    let t0 = std::time::Instant::now();
    while peer_up(g, peer) != want {
        if t0.elapsed() > Duration::from_secs(30) {
            let log = g.log_text();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("mqgate::peers"))
                .collect();
            panic!(
                "link to {peer} not up={up} after 30 s; the gateway's last peer log lines:\n{}",
                tail[tail.len().saturating_sub(60)..].join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn gateways_found_through_dns_link_and_follow_the_answer() {
    let dir = tempdir();
    let Some(peer_port) = port_free_on_three() else {
        eprintln!("127.0.0.2/127.0.0.3 not bindable here; skipping");
        return;
    };
    let Some(dns) = Dns::start(dir.path(), &[ip(1), ip(2)]) else {
        eprintln!("cannot bind UDP port 53 on loopback (not root?); skipping");
        return;
    };
    let nodes = Mosquitto::start_nodes(dir.path(), 2);
    let start = |name: &str, i: u8| {
        let (listen, admin) = (free_port(), free_port());
        let toml = config(dir.path(), name, i, listen, admin, peer_port, &nodes);
        let g = Gate::start_resolving(dir.path(), name, &toml, admin, &dns.resolv_conf);
        wait_until(Duration::from_secs(20), "nodes up", || {
            g.metric("mqgate_node_up", &[]) == 2.0
        });
        (g, listen)
    };
    // Two gateways in the answer link with each other, names unknown in advance.
    let (a, a_listen) = start("gate-a", 1);
    let (b, _) = start("gate-b", 2);
    wait_link(&a, "gate-b", true);
    wait_link(&b, "gate-a", true);
    assert!(
        !a.log_text().contains("claims this gateway's own name"),
        "a gateway dialed itself"
    );
    // The status API (and page) lists a discovered peer while it is linked.
    assert_eq!(
        listed_peer(&a, "gate-b"),
        Some((ip(2).to_string(), true)),
        "gate-a's status lists gate-b"
    );
    // A table made through gate-a.
    let keys: Vec<String> = (0..20).map(|i| format!("disc-{i}")).collect();
    for k in &keys {
        drop(raw_session(a_listen, k));
    }
    for k in &keys {
        let node = sticky_node(a.admin_port, k).expect("entry on gate-a");
        wait_until(Duration::from_secs(10), "entry on gate-b", || {
            sticky_node(b.admin_port, k).as_deref() == Some(node.as_str())
        });
    }

    // gate-c runs, but is not in the answer yet: nobody links with it.
    let (c, c_listen) = start("gate-c", 3);
    // Added to the answer: it joins and gets the full table.
    dns.set(&[ip(1), ip(2), ip(3)]);
    wait_link(&c, "gate-a", true);
    wait_link(&c, "gate-b", true);
    wait_link(&a, "gate-c", true);
    for k in &keys {
        let node = sticky_node(a.admin_port, k).expect("entry on gate-a");
        wait_until(Duration::from_secs(10), "full table on gate-c", || {
            sticky_node(c.admin_port, k).as_deref() == Some(node.as_str())
        });
    }
    // Changes made through the newcomer reach the others.
    drop(raw_session(c_listen, "disc-from-c"));
    let node = sticky_node(c.admin_port, "disc-from-c").expect("entry on gate-c");
    wait_until(Duration::from_secs(10), "gate-c's entry on gate-a", || {
        sticky_node(a.admin_port, "disc-from-c").as_deref() == Some(node.as_str())
    });

    // gate-b removed from the answer: its links close and stay closed.
    dns.set(&[ip(1), ip(3)]);
    wait_link(&a, "gate-b", false);
    wait_link(&c, "gate-b", false);
    drop(raw_session(a_listen, "disc-after-b"));
    let node = sticky_node(a.admin_port, "disc-after-b").expect("entry on gate-a");
    wait_until(Duration::from_secs(10), "new entry on gate-c", || {
        sticky_node(c.admin_port, "disc-after-b").as_deref() == Some(node.as_str())
    });
    assert_eq!(
        sticky_node(b.admin_port, "disc-after-b"),
        None,
        "gate-b, dropped from the answer, still receives updates"
    );
    assert_eq!(peer_up(&a, "gate-b"), 0.0);
    assert_eq!(
        listed_peer(&a, "gate-b"),
        None,
        "a discovered peer no longer linked is not listed"
    );
    assert_eq!(listed_peer(&a, "gate-c").map(|p| p.1), Some(true));
    assert!(
        a.log_text().contains("not in the discovery answer")
            || a.log_text().contains("no longer configured nor discovered"),
        "gate-a should say why gate-b's link closed:\n{}",
        a.log_text()
    );
}

/// With `[peers.tls]` and no secret, discovered peers are identified by their
/// certificates (one peers CA): a gateway whose certificate does not name the name it
/// claims links with nobody, in either direction.
#[test]
fn discovered_peers_with_tls_are_named_by_their_certificates() {
    let dir = tempdir();
    let d = dir.path();
    let Some(peer_port) = port_free_on_three() else {
        eprintln!("127.0.0.2/127.0.0.3 not bindable here; skipping");
        return;
    };
    let Some(dns) = Dns::start(d, &[ip(1), ip(2), ip(3)]) else {
        eprintln!("cannot bind UDP port 53 on loopback (not root?); skipping");
        return;
    };
    let ca = Pki::new("peers-ca");
    let nodes = Mosquitto::start_nodes(d, 1);
    let start = |name: &str, i: u8, cert_name: &str| {
        let (cert, key) = ca.leaf(cert_name, &[cert_name]);
        let p = |f: &str| d.join(format!("{name}-{f}"));
        std::fs::write(p("cert.pem"), cert).expect("write cert");
        std::fs::write(p("key.pem"), key).expect("write key");
        std::fs::write(p("ca.pem"), &ca.ca_pem).expect("write ca");
        let tls = format!(
            "[peers.tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            p("cert.pem").display(),
            p("key.pem").display(),
            p("ca.pem").display()
        );
        let (listen, admin) = (free_port(), free_port());
        let toml = config_with(name, i, listen, admin, peer_port, &nodes, &tls);
        (
            Gate::start_resolving(d, name, &toml, admin, &dns.resolv_conf),
            listen,
        )
    };
    let (a, a_listen) = start("gate-a", 1, "gate-a");
    let (b, _) = start("gate-b", 2, "gate-b");
    // gate-c's certificate, from the same CA, names another gateway.
    let (c, _) = start("gate-c", 3, "gate-x");
    wait_link(&a, "gate-b", true);
    wait_link(&b, "gate-a", true);
    drop(raw_session(a_listen, "tls-disc"));
    let node = sticky_node(a.admin_port, "tls-disc").expect("entry on gate-a");
    wait_until(Duration::from_secs(10), "entry on gate-b", || {
        sticky_node(b.admin_port, "tls-disc").as_deref() == Some(node.as_str())
    });
    // gate-a dials gate-c, which proves the name gate-c with a certificate for gate-x.
    wait_until(
        Duration::from_secs(30),
        "gate-a refuses gate-c's certificate",
        || {
            a.log_text()
                .contains("does not name `gate-c`, the name it proved")
        },
    );
    for g in [&a, &b] {
        assert_eq!(peer_up(g, "gate-c"), 0.0, "a peer linked with gate-c");
    }
    assert_eq!(sticky_node(c.admin_port, "tls-disc"), None);
}

/// Static peers and discovery combine: gate-a discovers gate-b and also lists gate-s,
/// which does not discover anything and lists gate-a.
#[test]
fn static_peers_and_discovered_peers_combine() {
    let dir = tempdir();
    let d = dir.path();
    let Some(peer_port) = port_free_on_three() else {
        eprintln!("127.0.0.2/127.0.0.3 not bindable here; skipping");
        return;
    };
    let Some(dns) = Dns::start(d, &[ip(1), ip(2)]) else {
        eprintln!("cannot bind UDP port 53 on loopback (not root?); skipping");
        return;
    };
    let nodes = Mosquitto::start_nodes(d, 1);
    let secret_file = d.join("peers.secret");
    std::fs::write(&secret_file, SECRET).expect("write secret");
    let secret = format!("secret_file = \"{}\"\n", secret_file.display());
    let s_port = free_port();
    let (a_listen, a_admin) = (free_port(), free_port());
    let a_toml = config_with("gate-a", 1, a_listen, a_admin, peer_port, &nodes, &secret)
        + &format!("peers = [ {{ name = \"gate-s\", address = \"127.0.0.1:{s_port}\" }} ]\n");
    let a = Gate::start_resolving(d, "gate-a", &a_toml, a_admin, &dns.resolv_conf);
    let (b_listen, b_admin) = (free_port(), free_port());
    let b_toml = config_with("gate-b", 2, b_listen, b_admin, peer_port, &nodes, &secret);
    let b = Gate::start_resolving(d, "gate-b", &b_toml, b_admin, &dns.resolv_conf);
    // gate-s: static only, no discovery.
    let (s_listen, s_admin) = (free_port(), free_port());
    let nodes_ref: Vec<&Mosquitto> = nodes.iter().collect();
    let s_toml = basic_config(
        s_listen,
        s_admin,
        "dynsec",
        &nodes_ref,
        "balance = \"round-robin\"\n[clusters.brokers.sticky]\nsessions = \"all\"\n",
    ) + &format!(
        "\n[peers]\nname = \"gate-s\"\nbind = \"127.0.0.1:{s_port}\"\n{secret}\
         peers = [ {{ name = \"gate-a\", address = \"127.0.0.1:{peer_port}\" }} ]\n"
    );
    let s = Gate::start(d, "gate-s", &s_toml, s_admin);
    wait_link(&a, "gate-b", true);
    wait_link(&a, "gate-s", true);
    wait_link(&s, "gate-a", true);
    // Through gate-a, an entry reaches both its static and its discovered peer.
    drop(raw_session(a_listen, "combined-a"));
    let node = sticky_node(a.admin_port, "combined-a").expect("entry on gate-a");
    for g in [&b, &s] {
        wait_until(Duration::from_secs(10), "gate-a's entry everywhere", || {
            sticky_node(g.admin_port, "combined-a").as_deref() == Some(node.as_str())
        });
    }
    // Through gate-s, an entry reaches gate-a (its only peer).
    drop(raw_session(s_listen, "combined-s"));
    let node = sticky_node(s.admin_port, "combined-s").expect("entry on gate-s");
    wait_until(Duration::from_secs(10), "gate-s's entry on gate-a", || {
        sticky_node(a.admin_port, "combined-s").as_deref() == Some(node.as_str())
    });
}
