//! Who can reach the admin API and whether it stays available: token-free changes only
//! on a loopback bind (the bound socket, not a reloaded one), cross-site and DNS
//! rebinding requests refused, slow or idle clients do not hold up probes and scrapes.

use super::*;

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
