//! dynsec mode with three real Mosquitto nodes and a real mqgate binary: 100 clients
//! with persistent sessions (v3.1.1 clean session 0 and v5 session expiry > 0) are
//! spread over the nodes, go offline, get a message queued, come back through mqgate
//! to the node that holds their session and receive it; a node dies, its clients move
//! and their sticky entries are rewritten; the node returns and takes new clients.
//! The same scenario runs again with Mosquitto's dynamic-security plugin on every node,
//! `key = "username"` and an authenticated `mqtt` health check. `round-robin` and
//! `least-conn` are checked against real nodes too.

use crate::common::fleet::addresses;
use crate::common::tools::MOSQUITTO_CTRL;
use crate::common::*;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);
const N: usize = 100;
const DYNSEC_PLUGIN: &str = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so";
const ADMIN_PASS: &str = "admin-secret";
const HEALTH_PASS: &str = "health-secret";

struct Fleet {
    nodes: Vec<Mosquitto>,
    gate: Gate,
    listen: u16,
    admin: u16,
    /// How client `i` connects (through mqgate or directly).
    opts: fn(usize) -> Connect,
    /// The sticky key of client `i`.
    key: fn(usize) -> String,
    /// Credentials for a direct publisher (plugin runs need one).
    publisher: Option<(&'static str, &'static str)>,
}

/// Connect clients `ids` through mqgate in parallel (4 threads); each subscribes to its
/// own topic when `subscribe`. Returns them with their CONNACK's session-present flag.
fn connect_many(f: &Fleet, ids: &[usize], subscribe: bool) -> Vec<(usize, Client, bool)> {
    let chunks: Vec<Vec<usize>> = ids
        .chunks(ids.len().div_ceil(4).max(1))
        .map(|c| c.to_vec())
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let (listen, opts) = (f.listen, f.opts);
                s.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|i| {
                            let (mut c, ack) = Client::accepted(listen, &opts(i))
                                .unwrap_or_else(|e| panic!("client {i}: {e}"));
                            if subscribe {
                                c.subscribe(&format!("dq/{i}"))
                                    .unwrap_or_else(|e| panic!("client {i}: {e}"));
                            }
                            (i, c, ack.session_present)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client thread"))
            .collect()
    })
}

/// Publish `m-{i}` to `dq/{i}` for every `i`, directly on every running node: only the
/// node holding the client's session queues it.
fn publish_offline(f: &Fleet, ids: &[usize]) {
    for m in f.nodes.iter().filter(|m| m.is_running()) {
        let mut o = Connect::new(&format!("direct-pub-{}", m.name));
        if let Some((u, p)) = f.publisher {
            o = o.login(u, p);
        }
        let (mut c, _) = Client::accepted(m.port, &o).expect("direct publisher");
        for &i in ids {
            c.publish(&format!("dq/{i}"), format!("m-{i}").as_bytes())
                .expect("direct publish");
        }
        c.disconnect();
    }
}

fn scenario(f: &mut Fleet) {
    let all: Vec<usize> = (0..N).collect();

    // 1. 100 persistent clients at once, spread by rendezvous hashing.
    let clients = connect_many(f, &all, true);
    assert_eq!(clients.len(), N);
    for n in ["node1", "node2", "node3"] {
        let active = f.gate.metric("mqgate_connections_active", &[("node", n)]);
        assert!(
            active > 0.0,
            "hash spreads clients over all nodes: {n} has {active}"
        );
    }
    assert_eq!(f.gate.metric("mqgate_connections_active", &[]), N as f64);
    let mut home: HashMap<usize, String> = HashMap::new();
    for &i in &all {
        let node = sticky_node(f.admin, &(f.key)(i))
            .unwrap_or_else(|| panic!("sticky entry for client {i}"));
        home.insert(i, node);
    }
    for (_, c, _) in clients {
        c.disconnect();
    }
    wait_until(T, "all clients offline", || {
        f.gate.metric("mqgate_connections_active", &[]) == 0.0
    });

    // 2. A message for each while offline; 3. they come back and receive it.
    publish_offline(f, &all);
    let mut clients = connect_many(f, &all, false);
    for (i, c, present) in clients.iter_mut() {
        assert!(*present, "client {i} found its session (node {})", home[i]);
        let (topic, payload) = c
            .next_publish(T)
            .unwrap_or_else(|e| panic!("client {i} queued message: {e}"));
        assert_eq!(topic, format!("dq/{i}"));
        assert_eq!(payload, format!("m-{i}").into_bytes());
    }

    // 4. Kill the node with the most clients: its clients are cut off and move.
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for n in home.values() {
        *counts.entry(n.as_str()).or_default() += 1;
    }
    let victim = counts
        .iter()
        .max_by_key(|(_, c)| **c)
        .map(|(n, _)| n.to_string())
        .unwrap_or_default();
    let moved: Vec<usize> = all.iter().copied().filter(|i| home[i] == victim).collect();
    let vi = f.nodes.iter().position(|m| m.name == victim).unwrap_or(0);
    f.nodes[vi].stop();
    for (i, c, _) in clients.iter_mut() {
        if home[i] == victim {
            assert!(c.closed_within(T), "client {i} on {victim} is cut off");
        }
    }
    wait_until(T, "victim marked down", || {
        f.gate.metric("mqgate_node_up", &[("node", &victim)]) == 0.0
    });
    let again = connect_many(f, &moved, true);
    for (i, c, _) in again {
        let now = sticky_node(f.admin, &(f.key)(i)).unwrap_or_default();
        assert!(
            !now.is_empty() && now != victim,
            "client {i}'s entry was rewritten away from {victim} (now {now:?})"
        );
        home.insert(i, now);
        c.disconnect();
    }
    // The survivors' clients were never disturbed.
    for (i, c, _) in clients.iter_mut() {
        if home[i] != victim && moved.binary_search(i).is_err() {
            assert!(c.ping(), "client {i} on a surviving node still connected");
        }
    }
    drop(clients);

    // 5. The node comes back and takes new clients; moved clients stay where their
    // session now is.
    f.nodes[vi].resume();
    wait_until(T, "victim up again", || {
        f.gate.metric("mqgate_node_up", &[("node", &victim)]) == 1.0
    });
    let before = f
        .gate
        .metric("mqgate_connections_total", &[("node", &victim)]);
    let fresh: Vec<usize> = (N..N + 30).collect();
    for (_, c, _) in connect_many(f, &fresh, false) {
        c.disconnect();
    }
    let after = f
        .gate
        .metric("mqgate_connections_total", &[("node", &victim)]);
    assert!(after > before, "{victim} takes new clients again");
    for (i, c, present) in connect_many(f, &moved, false) {
        assert!(present, "moved client {i} stays with its new session");
        c.disconnect();
        assert_eq!(
            sticky_node(f.admin, &(f.key)(i)).as_deref(),
            Some(home[&i].as_str()),
            "client {i} is not sent back to {victim}"
        );
    }
}

fn plain_fleet(dir: &Path) -> Fleet {
    let nodes = Mosquitto::start_nodes(dir, 3);
    let (gate, listen) = Gate::start_with(dir, "gate", |listen, admin| {
        gate_config(
            listen,
            admin,
            "dynsec",
            &addresses(&nodes),
            "balance = \"hash\"",
            "check = \"mqtt\"",
            "",
        )
    });
    let admin = gate.admin_port;
    Fleet {
        nodes,
        gate,
        listen,
        admin,
        opts: |i| {
            let o = Connect::new(&format!("dc-{i}")).persistent();
            o.v5(i % 2 == 1)
        },
        key: |i| format!("dc-{i}"),
        publisher: None,
    }
}

#[test]
fn persistent_sessions_follow_their_node() {
    let dir = tempdir();
    let mut f = plain_fleet(dir.path());
    wait_until(T, "all nodes up", || {
        f.gate.metric("mqgate_node_up", &[]) == 3.0
    });
    scenario(&mut f);
}

/// A node with the dynamic-security plugin: `mosquitto_ctrl dynsec init` writes its
/// config with an admin user, then the admin creates the same users on every node
/// through the plugin's control topic.
fn start_dynsec_node(dir: &Path, name: &str) -> Mosquitto {
    let ndir = dir.join(name);
    std::fs::create_dir_all(&ndir).expect("node dir");
    let json = ndir.join("dynamic-security.json");
    let st = MOSQUITTO_CTRL
        .command()
        .args(["dynsec", "init"])
        .arg(&json)
        .args(["admin", ADMIN_PASS])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run mosquitto_ctrl");
    assert!(st.success(), "mosquitto_ctrl dynsec init");
    // Started as root, Mosquitto drops to the `mosquitto` user: the plugin must still be
    // able to save the users it is given (they have to survive a broker restart).
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&ndir, std::fs::Permissions::from_mode(0o777));
        let _ = std::fs::set_permissions(&json, std::fs::Permissions::from_mode(0o666));
    }
    let m = Mosquitto::start_with(
        name,
        dir,
        MosquittoOpts {
            extra: format!(
                "plugin {DYNSEC_PLUGIN}\nplugin_opt_config_file {}\n",
                json.display()
            ),
            deny_anonymous: true,
        },
    );
    provision(&m);
    m
}

fn provision(m: &Mosquitto) {
    let port = m.port;
    let mut cmds = vec![serde_json::json!({
        "command": "setDefaultACLAccess",
        "acls": [
            { "acltype": "publishClientSend", "allow": true },
            { "acltype": "subscribe", "allow": true }
        ]
    })];
    let mut users: Vec<(String, String)> = (0..N + 30)
        .map(|i| (format!("user-{i}"), format!("pw-{i}")))
        .collect();
    users.push(("publisher".into(), "pub-secret".into()));
    users.push(("mqgate-health".into(), HEALTH_PASS.into()));
    for (u, p) in users {
        cmds.push(serde_json::json!({ "command": "createClient", "username": u, "password": p }));
    }
    let body = serde_json::json!({ "commands": cmds }).to_string();
    let (mut admin, _) = Client::accepted(
        port,
        &Connect::new(&format!("provision-{port}")).login("admin", ADMIN_PASS),
    )
    .expect("dynsec admin login");
    admin
        .subscribe("$CONTROL/dynamic-security/v1/response")
        .expect("subscribe to responses");
    admin
        .publish("$CONTROL/dynamic-security/v1", body.as_bytes())
        .expect("send dynsec commands");
    let (_, reply) = admin
        .next_publish(T)
        .unwrap_or_else(|e| panic!("dynsec response: {e}; broker log:\n{}", m.log()));
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        !reply.contains("\"error\""),
        "dynsec commands failed: {reply}"
    );
    admin.disconnect();
}

fn dynsec_gate_config(
    dir: &Path,
    nodes: &[Mosquitto],
    listen: u16,
    admin: u16,
    password: &str,
    check: &str,
) -> String {
    let pw = dir.join(format!("health-{listen}.password"));
    std::fs::write(&pw, format!("{password}\n")).expect("write password file");
    gate_config(
        listen,
        admin,
        "dynsec",
        &addresses(nodes),
        "balance = \"hash\"",
        &format!(
            "check = \"{check}\"\nusername = \"mqgate-health\"\npassword_file = \"{}\"",
            pw.display()
        ),
        "[clusters.brokers.sticky]\nkey = \"username\"\n",
    )
}

#[test]
fn dynamic_security_plugin_with_username_key() {
    let dir = tempdir();
    let nodes: Vec<Mosquitto> = (1..=3)
        .map(|i| start_dynsec_node(dir.path(), &format!("node{i}")))
        .collect();
    // Anonymous clients are refused by the brokers themselves.
    let (_, ack) = Client::connect(nodes[0].port, &Connect::new("anon")).expect("CONNACK");
    assert_ne!(ack.code, 0, "anonymous refused");
    let (listen, admin) = (free_port(), free_port());
    let cfg = dynsec_gate_config(dir.path(), &nodes, listen, admin, HEALTH_PASS, "mqtt");
    let gate = Gate::start(dir.path(), "gate", &cfg, admin);
    let mut f = Fleet {
        nodes,
        gate,
        listen,
        admin,
        // The sticky key is the username (the dynsec HAProxy example sticks on it).
        opts: |i| {
            Connect::new(&format!("uc-{i}"))
                .persistent()
                .v5(i % 2 == 0)
                .login(&format!("user-{i}"), &format!("pw-{i}"))
        },
        key: |i| format!("user-{i}"),
        publisher: Some(("publisher", "pub-secret")),
    };
    wait_until(T, "all nodes pass the authenticated mqtt check", || {
        f.gate.metric("mqgate_node_up", &[]) == 3.0
    });
    scenario(&mut f);
}

#[test]
fn mqtt_health_check_sends_credentials() {
    let dir = tempdir();
    let node = start_dynsec_node(dir.path(), "node1");
    let nodes = vec![node];
    // Wrong password: CONNACK "not authorized", the node is down, logged once.
    let (listen, admin) = (free_port(), free_port());
    let cfg = dynsec_gate_config(dir.path(), &nodes, listen, admin, "wrong", "mqtt");
    let bad = Gate::start(dir.path(), "bad", &cfg, admin);
    wait_until(T, "several failed probes", || {
        bad.metric("mqgate_health_checks_total", &[("result", "fail")]) >= 5.0
    });
    assert_eq!(bad.metric("mqgate_node_up", &[]), 0.0);
    assert_eq!(
        bad.metric("mqgate_node_state_changes_total", &[("state", "down")]),
        1.0,
        "one state change counted, not one per probe"
    );
    assert_eq!(
        bad.metric("mqgate_health_checks_total", &[("result", "ok")]),
        0.0
    );
    let log = bad.log_text();
    let down_lines: Vec<&str> = log.lines().filter(|l| l.contains("node is down")).collect();
    assert_eq!(
        down_lines.len(),
        1,
        "one line per state change, not per probe:\n{log}"
    );
    assert!(
        down_lines[0].contains("CONNACK code 0x05"),
        "{}",
        down_lines[0]
    );
    assert!(
        !log.contains(HEALTH_PASS) && !log.contains("wrong\""),
        "no password in logs"
    );
    // No node is up: a client is held for queue_timeout (5 s), then closed without a
    // CONNACK (no_node_reply = "close").
    let got = Client::connect(listen, &Connect::new("c").login("user-1", "pw-1"));
    assert!(got.is_err(), "no CONNACK: {:?}", got.map(|(_, a)| a));
    assert_eq!(
        bad.metric(
            "mqgate_connections_rejected_total",
            &[("reason", "no_node")]
        ),
        1.0
    );

    // Right password: up. A tcp check needs no credentials at all.
    for (name, password, check) in [("good", HEALTH_PASS, "mqtt"), ("tcp", "unused", "tcp")] {
        let (listen, admin) = (free_port(), free_port());
        let cfg = dynsec_gate_config(dir.path(), &nodes, listen, admin, password, check);
        let g = Gate::start(dir.path(), name, &cfg, admin);
        wait_until(T, "node up", || g.metric("mqgate_node_up", &[]) == 1.0);
        assert_eq!(
            g.metric("mqgate_node_state_changes_total", &[("state", "up")]),
            1.0
        );
        let log = g.log_text();
        assert_eq!(log.matches("node is up").count(), 1, "{log}");
        let (_, ack) =
            Client::connect(listen, &Connect::new("c").login("user-1", "pw-1")).expect("CONNACK");
        assert_eq!(ack.code, 0, "client accepted through the {name} gateway");
    }
}

/// `round-robin` and `least-conn` with real nodes: clients without a session are spread
/// evenly, and least-conn fills the node with the fewest open connections.
#[test]
fn round_robin_and_least_conn_spread_clients() {
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 3);
    let addrs = addresses(&nodes);
    for balance in ["round-robin", "least-conn"] {
        let (gate, listen) = Gate::start_with(dir.path(), balance, |listen, admin| {
            gate_config(
                listen,
                admin,
                "dynsec",
                &addrs,
                &format!("balance = \"{balance}\""),
                "",
                "",
            )
        });
        let admin = gate.admin_port;
        wait_until(T, "all nodes up", || {
            gate.metric("mqgate_node_up", &[]) == 3.0
        });
        // Six clients held open at once: two on each node. They keep a session, so
        // the sticky API tells which node each is on.
        let mut held: Vec<(String, Client)> = (0..6)
            .map(|i| {
                let id = format!("{balance}-{i}");
                let c = Client::accepted(listen, &Connect::new(&id).persistent())
                    .expect("client")
                    .0;
                (id, c)
            })
            .collect();
        for n in ["node1", "node2", "node3"] {
            assert_eq!(
                gate.metric("mqgate_connections_active", &[("node", n)]),
                2.0,
                "{balance}: {n}"
            );
        }
        if balance == "least-conn" {
            // Both clients of node1 leave: the next two new clients go to node1.
            let (gone, kept): (Vec<_>, Vec<_>) = held
                .drain(..)
                .partition(|(id, _)| sticky_node(admin, id).as_deref() == Some("node1"));
            assert_eq!(gone.len(), 2);
            for (_, c) in gone {
                c.disconnect();
            }
            wait_until(T, "node1 idle", || {
                gate.metric("mqgate_connections_active", &[("node", "node1")]) == 0.0
            });
            let _more: Vec<Client> = (0..2)
                .map(|i| {
                    Client::accepted(listen, &Connect::new(&format!("lc-new-{i}")))
                        .expect("client")
                        .0
                })
                .collect();
            assert_eq!(
                gate.metric("mqgate_connections_active", &[("node", "node1")]),
                2.0,
                "least-conn filled the emptiest node"
            );
            drop(kept);
        }
    }
}

/// `check = "mqtt5"` logs in with an MQTT 5 CONNECT, and `client_id_prefix` makes the
/// check's client id one that a broker restricted with `clientid_prefixes` accepts; the
/// refusal without it says what to set.
#[test]
fn mqtt5_health_check_with_a_client_id_prefix() {
    let dir = tempdir();
    let node = Mosquitto::start_with(
        "node1",
        dir.path(),
        MosquittoOpts {
            extra: "clientid_prefixes hc-\n".into(),
            ..MosquittoOpts::default()
        },
    );
    let addr = [("node1", node.address())];
    let start = |name: &str, health: &str| {
        Gate::start_with(dir.path(), name, |listen, admin| {
            gate_config(listen, admin, "dynsec", &addr, "", health, "")
        })
        .0
    };
    let bad = start("bad", "check = \"mqtt5\"\n");
    wait_until(T, "node down", || {
        bad.metric("mqgate_health_checks_total", &[("result", "fail")]) >= 1.0
    });
    assert_eq!(bad.metric("mqgate_node_up", &[]), 0.0);
    wait_until(T, "the refusal says what to set", || {
        bad.log_text().lines().any(|l| {
            l.contains("node is down")
                && l.contains("CONNACK code 0x87")
                && l.contains("client_id_prefix")
        })
    });

    let good = start("good", "check = \"mqtt5\"\nclient_id_prefix = \"hc-\"\n");
    wait_until(T, "node up", || good.metric("mqgate_node_up", &[]) == 1.0);
    // The broker saw an MQTT 5 session ("p5") from a client id with the prefix.
    wait_until(T, "broker log", || {
        node.log().lines().any(|l| {
            l.contains("New client connected") && l.contains(" as hc-") && l.contains("(p5")
        })
    });
}
