//! The admin HTTP API (SPEC section 7) and the CLI commands that use it (SPEC section 1),
//! against a real mqgate process in front of real Mosquitto brokers.

mod common;

use common::{basic_config, free_port, http, tempdir, wait_until, Gate, Mosquitto};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const TOKEN: &str = "t0ken-for-tests";

/// Send an MQTT 3.1.1 CONNECT through the gateway; returns the open stream and the
/// CONNACK return code.
fn mqtt_connect(port: u16, client_id: &str, clean: bool) -> (TcpStream, u8) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let id = client_id.as_bytes();
    let flags = if clean { 0x02 } else { 0x00 };
    let mut pkt = vec![0x10, (10 + 2 + id.len()) as u8];
    pkt.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60]);
    pkt.extend_from_slice(&(id.len() as u16).to_be_bytes());
    pkt.extend_from_slice(id);
    s.write_all(&pkt).expect("send CONNECT");
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).expect("read CONNACK");
    assert_eq!(ack[0], 0x20, "CONNACK expected, got {ack:?}");
    (s, ack[3])
}

fn status_json(port: u16) -> serde_json::Value {
    let (code, body) = http("GET", port, "/api/v1/status", None, None).expect("GET status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status is JSON")
}

fn node_field(status: &serde_json::Value, node: &str, field: &str) -> serde_json::Value {
    status["clusters"][0]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == node)
        .unwrap_or_else(|| panic!("node {node} in {status}"))[field]
        .clone()
}

fn json_error(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("error is not JSON ({e}): {body}"));
    v["error"].as_str().expect("error field").to_string()
}

/// Run the mqgate CLI against an admin port.
fn cli(admin_port: u16, token: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mqgate"));
    c.args(args)
        .arg("--admin")
        .arg(format!("http://127.0.0.1:{admin_port}"))
        .env_remove("MQGATE_ADMIN_TOKEN");
    if let Some(t) = token {
        c.env("MQGATE_ADMIN_TOKEN", t);
    }
    c.output().expect("run the mqgate CLI")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn token_section(dir: &std::path::Path, admin_port: u16) -> String {
    let tf = dir.join("admin.token");
    std::fs::write(&tf, format!("{TOKEN}\n")).expect("write token");
    format!(
        "[admin]\nbind = \"127.0.0.1:{admin_port}\"\ntoken_file = \"{}\"\n",
        tf.display()
    )
}

/// A dynsec gateway with a token in front of two brokers.
fn dynsec_with_token(dir: &std::path::Path, a: &Mosquitto, b: &Mosquitto) -> (Gate, u16) {
    let (listen, admin) = (free_port(), free_port());
    let toml = basic_config(
        listen,
        admin,
        "dynsec",
        &[a, b],
        "balance = \"round-robin\"\n",
    )
    .replacen(&Gate::admin_section(admin), &token_section(dir, admin), 1);
    let gate = Gate::start(dir, "gate", &toml, admin);
    wait_until(Duration::from_secs(10), "both nodes up", || {
        let s = status_json(admin);
        node_field(&s, &a.name, "health") == "up" && node_field(&s, &b.name, "health") == "up"
    });
    (gate, listen)
}

#[test]
fn mutations_need_the_token_and_bad_requests_get_json_errors() {
    let dir = tempdir();
    let a = Mosquitto::start("node1", dir.path());
    let b = Mosquitto::start("node2", dir.path());
    let (gate, listen) = dynsec_with_token(dir.path(), &a, &b);
    let port = gate.admin_port;
    let put = |body: &str, token: Option<&str>| {
        http(
            "PUT",
            port,
            "/api/v1/clusters/brokers/nodes/node1/state",
            Some(body),
            token,
        )
        .expect("PUT")
    };

    // Reading is open.
    assert_eq!(
        http("GET", port, "/healthz", None, None)
            .expect("healthz")
            .0,
        200
    );
    assert_eq!(
        http("GET", port, "/readyz", None, None).expect("readyz").0,
        200
    );
    let s = status_json(port);
    assert_eq!(s["clusters"][0]["name"], "brokers");
    assert_eq!(s["clusters"][0]["mode"], "dynsec");
    assert_eq!(s["ready"], true);
    assert_eq!(node_field(&s, "node1", "address"), a.address().as_str());

    // Changes without the token, or with a wrong one, are refused and change nothing.
    let (code, body) = put(r#"{"state":"drain"}"#, None);
    assert_eq!(code, 401, "{body}");
    assert!(json_error(&body).contains("Bearer"), "{body}");
    assert_eq!(put(r#"{"state":"drain"}"#, Some("wrong")).0, 401);
    assert_eq!(
        node_field(&status_json(port), "node1", "admin_state"),
        "ready"
    );
    for (m, p) in [
        ("DELETE", "/api/v1/clusters/brokers/sticky/anything"),
        ("POST", "/api/v1/reload"),
    ] {
        assert_eq!(http(m, port, p, None, None).expect(m).0, 401, "{m} {p}");
    }

    // With the token it works, and the metric follows.
    let (code, body) = put(r#"{"state":"drain"}"#, Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        node_field(&status_json(port), "node1", "admin_state"),
        "drain"
    );
    assert_eq!(
        gate.metric(
            "mqgate_node_admin_state",
            &[("node", "node1"), ("state", "drain")]
        ),
        1.0
    );

    // Bad requests: 400/404/405/413 with a JSON error.
    for (body, want) in [
        ("not json", "body must be"),
        (r#"{"state":"paused"}"#, "unknown state"),
        (r#"{"state":"ready","extra":1}"#, "body must be"),
    ] {
        let (code, resp) = put(body, Some(TOKEN));
        assert_eq!(code, 400, "{body} -> {resp}");
        assert!(json_error(&resp).contains(want), "{resp}");
    }
    let (code, resp) = http(
        "PUT",
        port,
        "/api/v1/clusters/brokers/nodes/nope/state",
        Some(r#"{"state":"drain"}"#),
        Some(TOKEN),
    )
    .expect("PUT");
    assert_eq!(code, 404);
    assert!(json_error(&resp).contains("no node named `nope`"), "{resp}");
    let (code, _) = http("GET", port, "/api/v1/clusters/nope/sticky/k", None, None).expect("GET");
    assert_eq!(code, 404);
    let (code, resp) = http("GET", port, "/api/v1/nothing", None, None).expect("GET");
    assert_eq!(code, 404);
    json_error(&resp);
    assert_eq!(
        http("POST", port, "/metrics", None, None).expect("POST").0,
        405
    );
    let big = format!(r#"{{"state":"{}"}}"#, "x".repeat(100_000));
    assert_eq!(put(&big, Some(TOKEN)).0, 413);

    // Sticky entries: a persistent client creates one; GET shows it, DELETE removes it.
    let (code, _) = http(
        "GET",
        port,
        "/api/v1/clusters/brokers/sticky/dev%2F1",
        None,
        None,
    )
    .expect("GET sticky");
    assert_eq!(code, 404);
    let (_conn, rc) = mqtt_connect(listen, "dev/1", false);
    assert_eq!(rc, 0);
    let (code, body) = http(
        "GET",
        port,
        "/api/v1/clusters/brokers/sticky/dev%2F1",
        None,
        None,
    )
    .expect("GET sticky");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["key"], "dev/1");
    assert_eq!(
        v["node"], "node2",
        "node1 drains, so the new client went to node2"
    );
    assert!(v["expires_in_secs"].as_u64().expect("expiry") > 80_000);
    assert_eq!(
        gate.metric("mqgate_sticky_entries", &[("cluster", "brokers")]),
        1.0
    );
    let (code, _) = http(
        "DELETE",
        port,
        "/api/v1/clusters/brokers/sticky/dev%2F1",
        None,
        Some(TOKEN),
    )
    .expect("DELETE");
    assert_eq!(code, 200);
    let (code, _) = http(
        "GET",
        port,
        "/api/v1/clusters/brokers/sticky/dev%2F1",
        None,
        None,
    )
    .expect("GET sticky");
    assert_eq!(code, 404);
    assert_eq!(
        gate.metric("mqgate_sticky_entries", &[("cluster", "brokers")]),
        0.0
    );

    // Reload: 200 for a valid file, 400 with located errors for a broken one.
    let (code, body) = http("POST", port, "/api/v1/reload", None, Some(TOKEN)).expect("reload");
    assert_eq!(code, 200, "{body}");
    let good = std::fs::read_to_string(&gate.config).expect("config");
    std::fs::write(
        &gate.config,
        good.replace("mode = \"dynsec\"", "mode = \"dynsec\"\nbogus_key = 1"),
    )
    .expect("write config");
    let (code, body) = http("POST", port, "/api/v1/reload", None, Some(TOKEN)).expect("reload");
    assert_eq!(code, 400, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let first = &v["errors"][0];
    assert!(
        first["message"]
            .as_str()
            .unwrap_or("")
            .contains("bogus_key"),
        "{body}"
    );
    assert!(first["line"].as_u64().is_some(), "{body}");
    assert!(gate.metric("mqgate_config_reloads_total", &[("result", "error")]) >= 1.0);
    assert_eq!(
        http("GET", port, "/readyz", None, None).expect("readyz").0,
        200
    );
}

#[test]
fn readyz_follows_the_leader() {
    let dir = tempdir();
    let mut a = Mosquitto::start("node1", dir.path());
    let (listen, admin) = (free_port(), free_port());
    let gate = Gate::start(
        dir.path(),
        "gate",
        &basic_config(listen, admin, "full-sync", &[&a], ""),
        admin,
    );
    let ready = || {
        http("GET", gate.admin_port, "/readyz", None, None)
            .expect("readyz")
            .0
    };
    wait_until(Duration::from_secs(10), "ready", || ready() == 200);
    assert_eq!(status_json(admin)["clusters"][0]["leader"], "node1");
    a.stop();
    wait_until(
        Duration::from_secs(10),
        "not ready once the only node is down",
        || ready() == 503,
    );
    let s = status_json(admin);
    assert_eq!(s["ready"], false);
    assert!(s["clusters"][0]["leader"].is_null());
    a.resume();
    wait_until(Duration::from_secs(10), "ready again", || ready() == 200);
}

#[test]
fn without_a_token_changes_need_a_loopback_bind() {
    let dir = tempdir();
    let a = Mosquitto::start("node1", dir.path());
    // Loopback bind, no token: allowed.
    let (listen, admin) = (free_port(), free_port());
    let gate = Gate::start(
        dir.path(),
        "loop",
        &basic_config(listen, admin, "dynsec", &[&a], ""),
        admin,
    );
    let (code, body) = http(
        "PUT",
        gate.admin_port,
        "/api/v1/clusters/brokers/nodes/node1/state",
        Some(r#"{"state":"drain"}"#),
        None,
    )
    .expect("PUT");
    assert_eq!(code, 200, "{body}");
    // Wildcard bind, no token: refused, even from loopback.
    let (listen2, admin2) = (free_port(), free_port());
    let toml = basic_config(listen2, admin2, "dynsec", &[&a], "")
        .replace(&format!("127.0.0.1:{admin2}"), &format!("0.0.0.0:{admin2}"));
    let open = Gate::start(dir.path(), "open", &toml, admin2);
    let (code, body) = http(
        "PUT",
        open.admin_port,
        "/api/v1/clusters/brokers/nodes/node1/state",
        Some(r#"{"state":"drain"}"#),
        None,
    )
    .expect("PUT");
    assert_eq!(code, 403, "{body}");
    assert!(json_error(&body).contains("token_file"), "{body}");
    assert_eq!(
        node_field(&status_json(admin2), "node1", "admin_state"),
        "ready"
    );
}

#[test]
fn slow_clients_do_not_hold_up_the_admin_api() {
    let dir = tempdir();
    let a = Mosquitto::start("node1", dir.path());
    let (listen, admin) = (free_port(), free_port());
    let gate = Gate::start(
        dir.path(),
        "gate",
        &basic_config(listen, admin, "dynsec", &[&a], ""),
        admin,
    );
    // Clients that start a request and never finish it, and one that sends nothing.
    let mut slow: Vec<TcpStream> = (0..8)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", gate.admin_port)).expect("connect");
            if i > 0 {
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    .expect("partial request");
            }
            s
        })
        .collect();
    for _ in 0..5 {
        let (code, _) = http("GET", gate.admin_port, "/api/v1/status", None, None).expect("status");
        assert_eq!(code, 200);
    }
    // The server gives up on them (header timeout) instead of holding them forever.
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let started = Instant::now();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue, // a 408 answer may come before the close
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(29),
            "slow client was never closed"
        );
    }
}

#[test]
fn cli_drain_and_maint_change_routing() {
    let dir = tempdir();
    let a = Mosquitto::start("node1", dir.path());
    let b = Mosquitto::start("node2", dir.path());
    let (gate, listen) = dynsec_with_token(dir.path(), &a, &b);
    let port = gate.admin_port;
    let total = |node: &str| gate.metric("mqgate_connections_total", &[("node", node)]);

    // A persistent client gets a sticky entry; `mqgate sticky get` shows where.
    let (sticky_conn, rc) = mqtt_connect(listen, "sticky-1", false);
    assert_eq!(rc, 0);
    let out = cli(port, None, &["sticky", "get", "brokers", "sticky-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let home = if stdout(&out).contains("node1") {
        "node1"
    } else {
        "node2"
    };
    let other = if home == "node1" { "node2" } else { "node1" };
    assert!(stdout(&out).contains("sticky-1"), "{}", stdout(&out));

    // Drain its node: new clients avoid it, the sticky client still lands there.
    let out = cli(port, Some(TOKEN), &["node", "drain", "brokers", home]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("ready -> drain"), "{}", stdout(&out));
    let status = cli(port, None, &["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let table = stdout(&status);
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with(home))
        .expect("node row");
    assert!(row.contains("drain") && row.contains("up"), "{table}");
    let before = total(home);
    let clients: Vec<TcpStream> = (0..10)
        .map(|i| {
            let (s, rc) = mqtt_connect(listen, &format!("fresh-{i}"), true);
            assert_eq!(rc, 0);
            s
        })
        .collect();
    assert_eq!(total(home), before, "a drained node took new clients");
    drop(clients);
    drop(sticky_conn);
    let (sticky_conn, rc) = mqtt_connect(listen, "sticky-1", false);
    assert_eq!(rc, 0);
    assert_eq!(
        total(home),
        before + 1.0,
        "the sticky client went back to its drained node"
    );

    // Maintenance closes its sessions; the client reconnects elsewhere.
    wait_until(
        Duration::from_secs(10),
        "only the sticky session on its node",
        || gate.metric("mqgate_connections_active", &[("node", home)]) == 1.0,
    );
    let out = cli(port, Some(TOKEN), &["node", "maint", "brokers", home]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("closed 1 session"),
        "{}",
        stdout(&out)
    );
    let mut s = sticky_conn;
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("session on a node in maintenance stayed open ({n} bytes)"),
    }
    let before_other = total(other);
    let (_again, rc) = mqtt_connect(listen, "sticky-1", false);
    assert_eq!(rc, 0);
    assert_eq!(total(other), before_other + 1.0);
    let out = cli(port, None, &["sticky", "get", "brokers", "sticky-1"]);
    assert!(stdout(&out).contains(other), "{}", stdout(&out));

    // Ready again: round-robin sends new clients there too.
    let out = cli(port, Some(TOKEN), &["node", "ready", "brokers", home]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = total(home);
    let _c: Vec<TcpStream> = (0..4)
        .map(|i| mqtt_connect(listen, &format!("late-{i}"), true).0)
        .collect();
    assert!(total(home) > before, "a ready node took no new clients");

    // `sticky del` removes the entry.
    let out = cli(port, Some(TOKEN), &["sticky", "del", "brokers", "sticky-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(port, None, &["sticky", "get", "brokers", "sticky-1"]);
    assert!(!out.status.success());
}

#[test]
fn cli_errors_are_one_clear_line() {
    let dir = tempdir();
    let a = Mosquitto::start("node1", dir.path());
    let b = Mosquitto::start("node2", dir.path());
    let (gate, _listen) = dynsec_with_token(dir.path(), &a, &b);
    let port = gate.admin_port;
    let cases: [(Option<&str>, Vec<&str>, u16, &str); 5] = [
        (None, vec!["status"], free_port(), "is mqgate running?"),
        (
            None,
            vec!["node", "drain", "brokers", "node1"],
            port,
            "MQGATE_ADMIN_TOKEN",
        ),
        (
            Some("wrong"),
            vec!["node", "drain", "brokers", "node1"],
            port,
            "refused the token",
        ),
        (
            Some(TOKEN),
            vec!["node", "drain", "brokers", "nope"],
            port,
            "no node named `nope`",
        ),
        (
            None,
            vec!["sticky", "get", "brokers", "nobody"],
            port,
            "no sticky entry",
        ),
    ];
    for (token, args, p, want) in cases {
        let out = cli(p, token, &args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("mqgate: ") && err.contains(want),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        node_field(&status_json(port), "node1", "admin_state"),
        "ready"
    );
}
