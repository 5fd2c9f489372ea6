//! The admin API's answers: changes need the token and bad requests get JSON errors,
//! `/readyz` follows the leader, sticky lookups need the token when one is set, and the
//! status counts relayed connections and refused answers per node.

use super::*;

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
    let sticky = |method: &str| {
        http(
            method,
            port,
            "/api/v1/clusters/brokers/sticky/dev%2F1",
            None,
            Some(TOKEN),
        )
        .expect(method)
    };
    let (code, _) = sticky("GET");
    assert_eq!(code, 404);
    let (_conn, rc) = mqtt_connect(listen, "dev/1", false);
    assert_eq!(rc, 0);
    let (code, body) = sticky("GET");
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
    let (code, _) = sticky("DELETE");
    assert_eq!(code, 200);
    let (code, _) = sticky("GET");
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
