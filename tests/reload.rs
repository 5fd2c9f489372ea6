//! Hot reload (SPEC section 6): under steady QoS 1 traffic through mqgate, apply a
//! sequence of reloads and check that no unaffected client was disconnected and no
//! acknowledged message was lost; invalid files change nothing; a rotated TLS
//! certificate is what new TLS clients see.

use crate::common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Counters {
    connacks: AtomicU64,
    acked: AtomicU64,
    received: Mutex<HashSet<u64>>,
}

fn counters() -> Arc<Counters> {
    Arc::new(Counters {
        connacks: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        received: Mutex::new(HashSet::new()),
    })
}

/// An MQTT client through the gateway whose event loop records what happens.
fn client(id: &str, port: u16, c: Arc<Counters>) -> AsyncClient {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_clean_session(true);
    let (client, mut el) = AsyncClient::new(o, 1000);
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    c.connacks.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    c.acked.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(s) = std::str::from_utf8(&p.payload) {
                        if let Ok(n) = s.parse::<u64>() {
                            c.received.lock().expect("lock").insert(n);
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    client
}

struct Setup {
    admin: u16,
    plain: u16,
    tls: u16,
    extra: u16,
}

/// Free ports, and a gateway on `config` over `n1` and `n2` (certificate "a" in `d`,
/// health checks every 200 ms, no extra listener), once n1 leads.
fn start_gateway(d: &Path, n1: &Mosquitto, n2: &Mosquitto) -> (Setup, Gate) {
    let s = Setup {
        admin: free_port(),
        plain: free_port(),
        tls: free_port(),
        extra: free_port(),
    };
    let gate = Gate::start(
        d,
        "gw",
        &config(&s, &[n1, n2], d, "a", "200ms", false),
        s.admin,
    );
    wait_until(Duration::from_secs(10), "n1 is leader", || {
        gate.metric("mqgate_node_leader", &[("node", "n1")]) == 1.0
    });
    (s, gate)
}

fn config(
    s: &Setup,
    nodes: &[&Mosquitto],
    tls_dir: &Path,
    cert: &str,
    interval: &str,
    extra_listener: bool,
) -> String {
    let nodes_toml: Vec<String> = nodes
        .iter()
        .map(|n| format!("{{ name = \"{}\", address = \"{}\" }}", n.name, n.address()))
        .collect();
    let extra = if extra_listener {
        format!(
            "[[listeners]]\nname = \"mqtt2\"\nbind = \"127.0.0.1:{}\"\ncluster = \"brokers\"\n",
            s.extra
        )
    } else {
        String::new()
    };
    format!(
        r#"{admin}
[[listeners]]
name = "mqtt"
bind = "127.0.0.1:{plain}"
cluster = "brokers"

[[listeners]]
name = "mqtts"
bind = "127.0.0.1:{tls}"
cluster = "brokers"
[listeners.tls]
cert = "{dir}/{cert}-cert.pem"
key = "{dir}/{cert}-key.pem"

{extra}
[clusters.brokers]
mode = "full-sync"
nodes = [ {nodes} ]

[clusters.brokers.health]
check = "mqtt"
interval = "{interval}"
fast_interval = "50ms"
down_interval = "200ms"
timeout = "500ms"
rise = 1
fall = 2
"#,
        admin = Gate::admin_section(s.admin),
        plain = s.plain,
        tls = s.tls,
        dir = tls_dir.display(),
        nodes = nodes_toml.join(", "),
    )
}

/// Rewrite the config file the way an editor does (write a temp file, rename it over)
/// and wait until the gateway counted one more reload with `result`.
fn edit(gate: &Gate, text: &str, result: &str) {
    let before = gate.metric("mqgate_config_reloads_total", &[("result", result)]);
    gate.save_config(text);
    wait_until(
        Duration::from_secs(10),
        &format!("a reload counted as {result}"),
        || gate.metric("mqgate_config_reloads_total", &[("result", result)]) > before,
    );
}

/// Does a TLS handshake with a client that trusts only `ca_pem` succeed?
async fn tls_handshake_ok(port: u16, ca_pem: &str) -> bool {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("add root");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(t) => t,
        Err(_) => return false,
    };
    let name = ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_traffic_keep_clients_and_messages() {
    let dir = tempdir();
    let n1 = Mosquitto::start("n1", dir.path());
    let n2 = Mosquitto::start("n2", dir.path());
    let n3 = Mosquitto::start("n3", dir.path());
    let pki_a = Pki::new("ca-a");
    let pki_b = Pki::new("ca-b");
    pki_a.write_server(dir.path(), "a");
    pki_b.write_server(dir.path(), "b");
    let d = dir.path();
    let (s, gate) = start_gateway(d, &n1, &n2);

    // Steady traffic: one subscriber, one QoS 1 publisher, through the plain listener.
    let sub_c = counters();
    let sub = client("reload-sub", s.plain, sub_c.clone());
    sub.subscribe("reload/load", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    wait_until_async(Duration::from_secs(10), "subscriber connected", || {
        let c = sub_c.clone();
        async move { c.connacks.load(Ordering::SeqCst) == 1 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await; // let SUBACK land before publishing
    let pub_c = counters();
    let publisher = client("reload-pub", s.plain, pub_c.clone());
    let running = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicU64::new(0));
    let pub_task = {
        let running = running.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while running.load(Ordering::SeqCst) {
                if publisher
                    .publish("reload/load", QoS::AtLeastOnce, false, i.to_string())
                    .await
                    .is_err()
                {
                    break;
                }
                i += 1;
                sent.store(i, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let g = &gate;
    let traffic_flows = |label: &'static str| {
        let pub_c = pub_c.clone();
        async move {
            let before = pub_c.acked.load(Ordering::SeqCst);
            wait_until_async(Duration::from_secs(10), label, || {
                let c = pub_c.clone();
                async move { c.acked.load(Ordering::SeqCst) > before + 20 }
            })
            .await;
        }
    };
    traffic_flows("traffic before reloads").await;

    // 1. Add a node: its checks start.
    let text = config(&s, &[&n1, &n2, &n3], d, "a", "200ms", false);
    tokio::task::block_in_place(|| {
        edit(g, &text, "ok");
        wait_until(Duration::from_secs(10), "n3 checked up", || {
            g.metric("mqgate_node_up", &[("node", "n3")]) == 1.0
        });
    });
    traffic_flows("traffic after adding a node").await;

    // 2. Remove a node that carries no clients (a follower).
    let text = config(&s, &[&n1, &n3], d, "a", "200ms", false);
    tokio::task::block_in_place(|| {
        edit(g, &text, "ok");
        wait_until(Duration::from_secs(10), "n2 gone from metrics", || {
            !g.metrics().contains("node=\"n2\"")
                || g.metric("mqgate_node_up", &[("node", "n2")]) == 0.0
        });
    });
    traffic_flows("traffic after removing a node").await;

    // 3. Rotate the TLS certificate: new handshakes see the new one.
    assert!(
        tls_handshake_ok(s.tls, &pki_a.ca_pem).await,
        "certificate A served before rotation"
    );
    let text = config(&s, &[&n1, &n3], d, "b", "200ms", false);
    tokio::task::block_in_place(|| edit(g, &text, "ok"));
    assert!(
        tls_handshake_ok(s.tls, &pki_b.ca_pem).await,
        "certificate B served after rotation"
    );
    assert!(
        !tls_handshake_ok(s.tls, &pki_a.ca_pem).await,
        "certificate A no longer served"
    );
    traffic_flows("traffic after certificate rotation").await;

    // 4. Change health settings.
    let text = config(&s, &[&n1, &n3], d, "b", "400ms", false);
    tokio::task::block_in_place(|| edit(g, &text, "ok"));
    traffic_flows("traffic after health change").await;

    // 5. Add a listener: it accepts MQTT clients at once.
    let good = config(&s, &[&n1, &n3], d, "b", "400ms", true);
    tokio::task::block_in_place(|| edit(g, &good, "ok"));
    let extra_c = counters();
    let extra = client("reload-extra", s.extra, extra_c.clone());
    extra
        .publish("reload/other", QoS::AtLeastOnce, false, "x")
        .await
        .expect("queue publish");
    wait_until_async(
        Duration::from_secs(10),
        "client through the added listener is acked",
        || {
            let c = extra_c.clone();
            async move { c.acked.load(Ordering::SeqCst) >= 1 }
        },
    )
    .await;

    // 6. Invalid files change nothing: syntax error, unknown key, bad value, unbindable listener.
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind blocker");
    let busy_port = blocker.local_addr().expect("addr").port();
    let invalid = [
        good.replace("[clusters.brokers]", "[clusters.brokers"),
        good.replace(
            "mode = \"full-sync\"",
            "mode = \"full-sync\"\nbalanse = \"hash\"",
        ),
        good.replace("interval = \"400ms\"", "interval = \"soon\""),
        good.replace(
            &format!("127.0.0.1:{}", s.extra),
            &format!("127.0.0.1:{busy_port}"),
        ),
    ];
    for bad in &invalid {
        tokio::task::block_in_place(|| edit(g, bad, "error"));
        traffic_flows("traffic after an invalid file").await;
        assert!(port_open(s.extra), "the old listener keeps serving");
    }
    let log = gate.log_text();
    assert!(
        log.contains("balanse"),
        "the unknown key is named in the log"
    );
    assert!(
        log.contains("clusters.brokers.health.interval"),
        "the bad value's key is named in the log"
    );

    // SIGHUP reloads too (the file is unchanged from the last invalid one: still an error).
    let errors = gate.metric("mqgate_config_reloads_total", &[("result", "error")]);
    gate.signal("HUP");
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(10), "SIGHUP reload counted", || {
            g.metric("mqgate_config_reloads_total", &[("result", "error")]) > errors
        })
    });

    // Stop the publisher; every acknowledged message arrived; nobody reconnected.
    running.store(false, Ordering::SeqCst);
    pub_task.await.expect("publisher task");
    let total = sent.load(Ordering::SeqCst);
    wait_until_async(
        Duration::from_secs(15),
        "all publishes acknowledged",
        || {
            let c = pub_c.clone();
            async move { c.acked.load(Ordering::SeqCst) >= total }
        },
    )
    .await;
    wait_until_async(
        Duration::from_secs(15),
        "subscriber received every message",
        || {
            let c = sub_c.clone();
            async move { c.received.lock().expect("lock").len() as u64 >= total }
        },
    )
    .await;
    let got = sub_c.received.lock().expect("lock").clone();
    let missing: Vec<u64> = (0..total).filter(|i| !got.contains(i)).collect();
    assert!(missing.is_empty(), "lost QoS 1 messages: {missing:?}");
    assert_eq!(
        sub_c.connacks.load(Ordering::SeqCst),
        1,
        "subscriber was never disconnected"
    );
    assert_eq!(
        pub_c.connacks.load(Ordering::SeqCst),
        1,
        "publisher was never disconnected"
    );
    assert!(total > 100, "traffic flowed throughout ({total} messages)");
    drop(blocker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_node_closes_its_sessions_only() {
    let dir = tempdir();
    let n1 = Mosquitto::start("n1", dir.path());
    let n2 = Mosquitto::start("n2", dir.path());
    let d = dir.path();
    Pki::new("ca").write_server(d, "a");
    let (s, gate) = start_gateway(d, &n1, &n2);
    let c = counters();
    let _cl = client("victim", s.plain, c.clone());
    wait_until_async(Duration::from_secs(10), "client connected", || {
        let c = c.clone();
        async move { c.connacks.load(Ordering::SeqCst) == 1 }
    })
    .await;
    // Remove the leader n1: its session closes; the client reconnects and lands on n2.
    let text = config(&s, &[&n2], d, "a", "200ms", false);
    tokio::task::block_in_place(|| edit(&gate, &text, "ok"));
    wait_until_async(
        Duration::from_secs(10),
        "client reconnected after its node was removed",
        || {
            let c = c.clone();
            async move { c.connacks.load(Ordering::SeqCst) >= 2 }
        },
    )
    .await;
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(10), "session now on n2", || {
            gate.metric("mqgate_connections_active", &[("node", "n2")]) == 1.0
        })
    });
}

/// `mqgate run --no-watch`: saving the file changes nothing (while a gateway that
/// watches its file, saved just after, has already reloaded), SIGHUP then applies it.
#[test]
fn no_watch_reloads_on_sighup_only() {
    let dir = tempdir();
    let d = dir.path();
    let n1 = Mosquitto::start("n1", d);
    let start = |name: &str, args: &[&str]| {
        let (listen, admin, extra) = (free_port(), free_port(), free_port());
        let text = basic_config(listen, admin, "dynsec", &[&n1], "");
        let gate = Gate::start_args(d, name, &text, admin, args);
        let more = format!(
            "{text}\n[[listeners]]\nname = \"more\"\nbind = \"127.0.0.1:{extra}\"\ncluster = \"brokers\"\n"
        );
        (gate, more, extra)
    };
    let (quiet, quiet_more, quiet_extra) = start("quiet", &["--no-watch"]);
    let (watching, watching_more, watching_extra) = start("watching", &[]);
    assert!(
        quiet.log_text().contains("not watching the config file"),
        "{}",
        quiet.log_text()
    );
    let reloads = |g: &Gate| g.metric("mqgate_config_reloads_total", &[]);
    assert_eq!(reloads(&quiet), 0.0);

    // Save both files the way an editor does, the --no-watch one first.
    for (g, text) in [(&quiet, &quiet_more), (&watching, &watching_more)] {
        g.save_config(text);
    }
    wait_until(
        Duration::from_secs(10),
        "the watching gateway reloaded",
        || port_open(watching_extra),
    );
    assert_eq!(reloads(&quiet), 0.0, "--no-watch reloaded a saved file");
    assert!(!port_open(quiet_extra), "the new listener is not there yet");

    // SIGHUP applies the saved file.
    quiet.signal("HUP");
    wait_until(Duration::from_secs(10), "reloaded on SIGHUP", || {
        quiet.metric("mqgate_config_reloads_total", &[("result", "ok")]) == 1.0
    });
    assert!(port_open(quiet_extra), "the new listener after SIGHUP");
}
