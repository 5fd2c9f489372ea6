//! The mqgate CLI over the admin API: `drain`/`maint` change routing, errors are one
//! clear line, and the admin address and token are read from the config.

use super::*;

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
