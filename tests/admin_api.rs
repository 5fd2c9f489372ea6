//! The admin HTTP API (SPEC section 7) and the CLI commands that use it (SPEC section 1),
//! against a real mqgate process in front of real Mosquitto brokers.

use crate::common::admin::{node_field, request, status_json};
use crate::common::fleet::{mqgate_command, mqgate_in};
use crate::common::mqtt::connect_and_ack;
use crate::common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Output;
use std::time::{Duration, Instant};

const TOKEN: &str = "t0ken-for-tests";

/// Send an MQTT 3.1.1 CONNECT through the gateway; returns the open stream and the
/// CONNACK return code.
fn mqtt_connect(port: u16, client_id: &str, clean: bool) -> (TcpStream, u8) {
    connect_and_ack(port, &Connect::new(client_id).clean(clean))
        .unwrap_or_else(|e| panic!("{client_id} through the gateway: {e}"))
}

fn json_error(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("error is not JSON ({e}): {body}"));
    v["error"].as_str().expect("error field").to_string()
}

/// Run the mqgate CLI against an admin port.
fn cli(admin_port: u16, token: Option<&str>, args: &[&str]) -> Output {
    let url = format!("http://127.0.0.1:{admin_port}");
    let mut c = mqgate_command(args);
    c.args(["--admin", &url]);
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

/// A dynsec gateway (round-robin) with a token, in front of two brokers, node1 and
/// node2; returned once both are up.
struct WithToken {
    // Drop order: the gateway (it prints its log on failure), the brokers, the files.
    gate: Gate,
    nodes: Vec<Mosquitto>,
    dir: tempfile::TempDir,
    /// The MQTT listener.
    listen: u16,
}

impl WithToken {
    fn start() -> WithToken {
        let dir = tempdir();
        let nodes = Mosquitto::start_nodes(dir.path(), 2);
        let (listen, admin) = (free_port(), free_port());
        let refs: Vec<&Mosquitto> = nodes.iter().collect();
        let toml = basic_config(
            listen,
            admin,
            "dynsec",
            &refs,
            "balance = \"round-robin\"\n",
        )
        .replacen(
            &Gate::admin_section(admin),
            &token_section(dir.path(), admin),
            1,
        );
        let gate = Gate::start(dir.path(), "gate", &toml, admin);
        wait_until(Duration::from_secs(10), "both nodes up", || {
            let s = status_json(admin);
            nodes
                .iter()
                .all(|n| node_field(&s, &n.name, "health") == "up")
        });
        WithToken {
            gate,
            nodes,
            dir,
            listen,
        }
    }
}

#[test]
fn mutations_need_the_token_and_bad_requests_get_json_errors() {
    let f = WithToken::start();
    let gate = &f.gate;
    let listen = f.listen;
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
    assert_eq!(
        node_field(&s, "node1", "address"),
        f.nodes[0].address().as_str()
    );

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
    let (code, _) = http(
        "GET",
        port,
        "/api/v1/clusters/nope/sticky/k",
        None,
        Some(TOKEN),
    )
    .expect("GET");
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
        Some(TOKEN),
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
        Some(TOKEN),
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
        Some(TOKEN),
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
    let (gate, _listen) = Gate::basic(dir.path(), "full-sync", &[&a]);
    let admin = gate.admin_port;
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

/// `PUT` state `drain` for node1, without a token: (status, body).
fn drain_node1(admin: u16) -> (u16, String) {
    http(
        "PUT",
        admin,
        "/api/v1/clusters/brokers/nodes/node1/state",
        Some(r#"{"state":"drain"}"#),
        None,
    )
    .expect("PUT")
}

/// `toml` with its admin API bound to 0.0.0.0 instead of 127.0.0.1.
fn on_every_interface(toml: &str, admin: u16) -> String {
    toml.replace(&format!("127.0.0.1:{admin}"), &format!("0.0.0.0:{admin}"))
}

#[test]
fn without_a_token_changes_need_a_loopback_bind() {
    let dir = tempdir();
    let a = Mosquitto::start("node1", dir.path());
    let config = |listen, admin| basic_config(listen, admin, "dynsec", &[&a], "");
    // Loopback bind, no token: allowed.
    let (gate, _) = Gate::start_with(dir.path(), "loop", config);
    let (code, body) = drain_node1(gate.admin_port);
    assert_eq!(code, 200, "{body}");
    // Wildcard bind, no token: refused, even from loopback.
    let (open, _) = Gate::start_with(dir.path(), "open", |listen, admin| {
        on_every_interface(&config(listen, admin), admin)
    });
    let admin2 = open.admin_port;
    let (code, body) = drain_node1(admin2);
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
    let (gate, _listen) = Gate::basic(dir.path(), "dynsec", &[&a]);
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
    let f = WithToken::start();
    let gate = &f.gate;
    let listen = f.listen;
    let port = gate.admin_port;
    let total = |node: &str| gate.metric("mqgate_connections_total", &[("node", node)]);

    // A persistent client gets a sticky entry; `mqgate sticky get` shows where.
    let (sticky_conn, rc) = mqtt_connect(listen, "sticky-1", false);
    assert_eq!(rc, 0);
    let out = cli(port, Some(TOKEN), &["sticky", "get", "brokers", "sticky-1"]);
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
    let out = cli(port, Some(TOKEN), &["sticky", "get", "brokers", "sticky-1"]);
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
    let out = cli(port, Some(TOKEN), &["sticky", "get", "brokers", "sticky-1"]);
    assert!(!out.status.success());
}

#[test]
fn cli_errors_are_one_clear_line() {
    let f = WithToken::start();
    let gate = &f.gate;
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
            Some(TOKEN),
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

#[test]
fn cli_reads_the_admin_address_and_token_from_the_config() {
    let f = WithToken::start();
    let gate = &f.gate;
    let config = gate.config.to_str().expect("path");
    let elsewhere = f.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");

    // -c FILE: the gateway of that file, and its token for changes; nothing on stderr.
    let out = mqgate_in(&elsewhere, &["status", "-c", config]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("cluster brokers"), "{}", stdout(&out));
    assert_eq!(stderr(&out), "");
    let out = mqgate_in(
        &elsewhere,
        &["node", "drain", "brokers", "node1", "-c", config],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("ready -> drain"), "{}", stdout(&out));
    // A token_file relative to the config file's directory.
    let sub = f.dir.path().join("etc");
    std::fs::create_dir_all(&sub).expect("mkdir");
    std::fs::write(sub.join("admin.token"), format!("{TOKEN}\n")).expect("token");
    let relative = sub.join("gw.toml");
    std::fs::write(
        &relative,
        format!(
            "[admin]\nbind = \"0.0.0.0:{}\"\ntoken_file = \"admin.token\"\n",
            gate.admin_port
        ),
    )
    .expect("write config");
    let relative = relative.to_str().expect("path");
    let out = mqgate_in(
        &elsewhere,
        &["node", "ready", "brokers", "node1", "--config", relative],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("drain -> ready"), "{}", stdout(&out));
    let out = mqgate_in(
        &elsewhere,
        &["sticky", "get", "brokers", "nobody", "-c", relative],
    );
    assert!(
        stderr(&out).contains("no sticky entry"),
        "reached the gateway: {}",
        stderr(&out)
    );
    // A -c FILE that does not exist is an error, not a fallback.
    let out = mqgate_in(&elsewhere, &["status", "-c", "missing.toml"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));

    // ./mqgate.toml, when there: used, and said.
    std::fs::copy(&gate.config, elsewhere.join("mqgate.toml")).expect("copy config");
    let out = mqgate_in(&elsewhere, &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let url = format!("http://127.0.0.1:{}", gate.admin_port);
    assert!(
        stderr(&out).contains(&url) && stderr(&out).contains("./mqgate.toml"),
        "{}",
        stderr(&out)
    );
    // Neither: the default address, said on stderr.
    std::fs::remove_file(elsewhere.join("mqgate.toml")).expect("rm");
    let out = mqgate_in(&elsewhere, &["status"]);
    assert!(
        stderr(&out).contains("using the admin API at http://127.0.0.1:9100"),
        "{}",
        stderr(&out)
    );
    // --admin: no note.
    let out = mqgate_in(&elsewhere, &["status", "--admin", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

// ---- Security round 2 (issue 23, items 5–7) ----

/// Send one raw HTTP request: `head` is the request line and headers (no final blank
/// line); `Connection: close` and `Content-Length` are added. Returns status and body.
fn raw_request(port: u16, head: &str, body: &str) -> (u16, String) {
    request(port, head, body).expect("an answer from the admin API")
}

/// The mqgate CLI against the admin API at `url`, no token.
fn cli_at(url: &str, args: &[&str]) -> Output {
    let mut args = args.to_vec();
    args.extend(["--admin", url]);
    mqgate(&args)
}

#[test]
fn cross_site_and_rebinding_requests_are_refused_and_the_cli_still_works() {
    let dir = tempdir();
    let a = Mosquitto::start("node1", dir.path());
    // The default setup: loopback bind, no token.
    let (gate, _) = Gate::basic(dir.path(), "dynsec", &[&a]);
    let admin = gate.admin_port;
    let reloads = || gate.metric("mqgate_config_reloads_total", &[("result", "ok")]);
    let state = || node_field(&status_json(admin), "node1", "admin_state");
    let drain = r#"{"state":"drain"}"#;
    let node1 = "/api/v1/clusters/brokers/nodes/node1/state";
    let before = reloads();

    // Any web page can send this "simple" request (no preflight) to the loopback API.
    let (code, body) = raw_request(
        admin,
        &format!(
            "POST /api/v1/reload HTTP/1.1\r\nHost: 127.0.0.1:{admin}\r\nOrigin: http://evil.example\r\nContent-Type: text/plain"
        ),
        "reload",
    );
    assert_eq!(code, 403, "{body}");
    assert!(json_error(&body).contains("Origin"), "{body}");
    // DNS rebinding: attacker.example now resolves to 127.0.0.1; the browser sends
    // the attacker's name as Host (and, same-origin, no Origin at all).
    let (code, body) = raw_request(
        admin,
        &format!("PUT {node1} HTTP/1.1\r\nHost: attacker.example:{admin}\r\nContent-Type: application/json"),
        drain,
    );
    assert_eq!(code, 403, "{body}");
    assert!(json_error(&body).contains("attacker.example"), "{body}");
    // Other ways in: another web server on this host, an opaque origin, an absolute
    // request target naming another host, a request without any Host.
    let other = free_port();
    for head in [
        format!(
            "PUT {node1} HTTP/1.1\r\nHost: localhost:{admin}\r\nOrigin: http://localhost:{other}"
        ),
        format!("PUT {node1} HTTP/1.1\r\nHost: 127.0.0.1:{admin}\r\nOrigin: null"),
        format!("PUT http://attacker.example:{admin}{node1} HTTP/1.1\r\nHost: 127.0.0.1:{admin}"),
        format!("PUT {node1} HTTP/1.0"),
        format!(
            "DELETE /api/v1/clusters/brokers/sticky/x HTTP/1.1\r\nHost: attacker.example:{admin}"
        ),
    ] {
        let (code, body) = raw_request(admin, &head, drain);
        assert_eq!(code, 403, "{head}: {body}");
        json_error(&body);
    }
    assert_eq!(state(), "ready", "a refused request drained the node");
    assert_eq!(reloads(), before, "a refused reload ran");

    // The admin address itself, by IP or as localhost, with or without its own Origin.
    for (i, head) in [
        format!("PUT {node1} HTTP/1.1\r\nHost: 127.0.0.1:{admin}"),
        format!(
            "PUT {node1} HTTP/1.1\r\nHost: 127.0.0.1:{admin}\r\nOrigin: http://127.0.0.1:{admin}"
        ),
        format!(
            "PUT {node1} HTTP/1.1\r\nHost: localhost:{admin}\r\nOrigin: http://localhost:{admin}"
        ),
        format!("PUT {node1} HTTP/1.1\r\nHost: LOCALHOST"),
    ]
    .iter()
    .enumerate()
    {
        let want = if i % 2 == 0 { "drain" } else { "ready" };
        let (code, body) = raw_request(admin, head, &format!(r#"{{"state":"{want}"}}"#));
        assert_eq!(code, 200, "{head}: {body}");
        assert_eq!(state(), want);
    }
    let (code, body) = raw_request(
        admin,
        &format!("POST /api/v1/reload HTTP/1.1\r\nHost: 127.0.0.1:{admin}"),
        "",
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(reloads(), before + 1.0);

    // The CLI keeps working, by IP and by name.
    let out = cli(admin, None, &["node", "drain", "brokers", "node1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("ready -> drain"), "{}", stdout(&out));
    let out = cli_at(
        &format!("http://localhost:{admin}"),
        &["node", "ready", "brokers", "node1"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("drain -> ready"), "{}", stdout(&out));

    // A name the operator reaches the API by is allowed once configured (reloadable).
    let text = std::fs::read_to_string(&gate.config).expect("read config");
    std::fs::write(
        &gate.config,
        text.replacen(
            &Gate::admin_section(admin),
            &format!(
                "{}allowed_hosts = [\"gw1.example\"]\n",
                Gate::admin_section(admin)
            ),
            1,
        ),
    )
    .expect("write config");
    let (code, body) = http("POST", admin, "/api/v1/reload", None, None).expect("reload");
    assert_eq!(code, 200, "{body}");
    let (code, body) = raw_request(
        admin,
        &format!("PUT {node1} HTTP/1.1\r\nHost: gw1.example:{admin}\r\nOrigin: http://gw1.example:{admin}"),
        drain,
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = raw_request(
        admin,
        &format!("PUT {node1} HTTP/1.1\r\nHost: gw2.example:{admin}"),
        r#"{"state":"ready"}"#,
    );
    assert_eq!(code, 403, "{body}");
    assert!(json_error(&body).contains("allowed_hosts"), "{body}");
    assert_eq!(state(), "drain");
    // Reading stays open whatever the Host (Prometheus may scrape by any name).
    let (code, _) = raw_request(
        admin,
        "GET /healthz HTTP/1.1\r\nHost: scrape-target.example",
        "",
    );
    assert_eq!(code, 200);
}

/// `GET path` that must be answered completely within `limit` (connect included), as
/// an orchestrator's probe with that timeout would; the status code.
fn get_within(port: u16, path: &str, limit: Duration) -> std::io::Result<u16> {
    let deadline = Instant::now() + limit;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, limit)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "deadline"))?;
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf)? {
            0 => break,
            n => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status"))
}

#[test]
fn idle_connections_do_not_starve_probes_and_scrapes() {
    let dir = tempdir();
    let a = Mosquitto::start("node1", dir.path());
    let (gate, _listen) = Gate::basic(dir.path(), "dynsec", &[&a]);
    let admin = gate.admin_port;
    // 300 connections held open that never complete a request: most send nothing,
    // every third sends half a request header.
    let idle: Vec<TcpStream> = (0..300)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", admin)).expect("connect");
            if i % 3 == 0 {
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                    .expect("half a request");
            }
            s
        })
        .collect();
    // A liveness probe with a 1 s timeout (and a scrape, and a readiness probe) is
    // answered every time.
    for path in [
        "/healthz", "/metrics", "/healthz", "/readyz", "/healthz", "/metrics",
    ] {
        let started = Instant::now();
        let got = get_within(admin, path, Duration::from_secs(1));
        assert!(
            matches!(got, Ok(200)),
            "{path} with 300 idle admin connections: {got:?} after {:?}",
            started.elapsed()
        );
    }
    drop(idle);
}

#[test]
fn token_free_changes_follow_the_bound_socket_not_a_reloaded_bind() {
    let dir = tempdir();
    let a = Mosquitto::start("node1", dir.path());
    let (listen, admin) = (free_port(), free_port());
    let loopback = basic_config(listen, admin, "dynsec", &[&a], "");
    // Started network-facing without a token: changes are refused.
    let gate = Gate::start(
        dir.path(),
        "open",
        &on_every_interface(&loopback, admin),
        admin,
    );
    let put = || drain_node1(admin);
    let (code, body) = put();
    assert_eq!(code, 403, "{body}");
    // The file now says loopback; a reload does not move the admin socket (that takes
    // a restart), so it still listens on 0.0.0.0 and changes stay refused.
    gate.reload_with(&loopback);
    let (code, body) = put();
    assert_eq!(code, 403, "{body}");
    let msg = json_error(&body);
    assert!(
        msg.contains(&format!("0.0.0.0:{admin}")) && msg.contains("token_file"),
        "{body}"
    );
    assert_eq!(
        node_field(&status_json(admin), "node1", "admin_state"),
        "ready"
    );
}

#[test]
fn sticky_lookups_need_the_token_when_one_is_set() {
    let f = WithToken::start();
    let gate = &f.gate;
    let listen = f.listen;
    let port = gate.admin_port;
    let (_conn, rc) = mqtt_connect(listen, "secret-id", false);
    assert_eq!(rc, 0);
    let get = |key: &str, token: Option<&str>| {
        http(
            "GET",
            port,
            &format!("/api/v1/clusters/brokers/sticky/{key}"),
            None,
            token,
        )
        .expect("GET sticky")
    };
    // Without the token, an existing and a missing client id get the same answer.
    for key in ["secret-id", "nobody"] {
        let (code, body) = get(key, None);
        assert_eq!(code, 401, "{key}: {body}");
        assert!(json_error(&body).contains("Bearer"), "{body}");
        assert!(!body.contains("node"), "{body}");
    }
    assert_eq!(get("secret-id", Some("wrong")).0, 401);
    let (code, body) = get("secret-id", Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    assert_eq!(get("nobody", Some(TOKEN)).0, 404);
    // The CLI sends the token it is given.
    let out = cli(port, None, &["sticky", "get", "brokers", "secret-id"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("MQGATE_ADMIN_TOKEN"),
        "{}",
        stderr(&out)
    );
    let out = cli(
        port,
        Some(TOKEN),
        &["sticky", "get", "brokers", "secret-id"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("secret-id"), "{}", stdout(&out));
}

/// The status API counts per node from the nodes' own state: connections relayed and
/// broker answers that were not "accepted" (here: CONNACK 0x02 for an empty client id
/// that wants a persistent session), the same numbers the metrics show.
#[test]
fn status_counts_relayed_connections_and_refused_answers_per_node() {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let (listen, admin) = (free_port(), free_port());
    let toml = basic_config(listen, admin, "dynsec", &[&broker], "");
    let gate = Gate::start(dir.path(), "gate", &toml, admin);
    wait_until(Duration::from_secs(10), "node up", || {
        node_field(&status_json(admin), "b1", "health") == "up"
    });
    let mut open = Vec::new();
    for i in 0..3 {
        let (s, code) = mqtt_connect(listen, &format!("counted-{i}"), true);
        assert_eq!(code, 0);
        open.push(s);
    }
    let (_refused, code) = mqtt_connect(listen, "", false);
    assert_eq!(code, 0x02, "identifier rejected by the broker");
    wait_until(Duration::from_secs(10), "counted", || {
        let s = status_json(admin);
        node_field(&s, "b1", "connections_total") == 4
            && node_field(&s, "b1", "connack_failures") == 1
    });
    assert_eq!(
        gate.metric("mqgate_connections_total", &[("node", "b1")]),
        4.0
    );
    assert_eq!(
        gate.metric("mqgate_connack_total", &[("node", "b1"), ("code", "2")]),
        1.0
    );
}
