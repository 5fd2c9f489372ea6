//! The access log (issue 29, item 1): one line per finished session and per refused
//! connection, to a file (reopened on SIGUSR1 after a logrotate-style rename, and on
//! reload, where the format can change to JSON) and to a syslog datagram socket; the
//! close reason of a session the gateway ended (`maint`); never the password.

use crate::common::admin::set_node_state;
use crate::common::*;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

fn config(listen: u16, admin: u16, broker: &Mosquitto, log: &str) -> String {
    basic_config(listen, admin, "dynsec", &[broker], "").replacen(
        "[admin]",
        &format!("[log]\n{log}\n\n[admin]"),
        1,
    )
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Wait for a line of `path` containing every needle; return it.
fn wait_line(path: &Path, needles: &[&str]) -> String {
    let mut found = String::new();
    wait_until(
        Duration::from_secs(10),
        &format!("access-log line with {needles:?}"),
        || match lines(path)
            .into_iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            Some(l) => {
                found = l;
                true
            }
            None => false,
        },
    );
    found
}

fn publish(port: u16, id: &str) {
    let p = port.to_string();
    mosquitto_pub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "-i",
        id,
        "-u",
        "u1",
        "-P",
        "secret-pw",
        "-t",
        "a/b",
        "-m",
        "hello",
        "-q",
        "1",
    ]);
}

#[test]
fn file_lines_for_sessions_refusals_rotation_maint_and_json_after_reload() {
    let dir = tempdir();
    let d = dir.path();
    let broker = Mosquitto::start("b1", d);
    let file = d.join("access.log");
    let text_cfg =
        |l: u16, a: u16| config(l, a, &broker, &format!("access = \"{}\"", file.display()));
    let (gate, port) = Gate::start_with(d, "gate", text_cfg);
    gate.wait_node_up("b1");

    // A finished session.
    publish(port, "pub1");
    let line = wait_line(&file, &["client_id=pub1"]);
    // After the client's DISCONNECT either side's FIN may come first.
    assert!(
        line.ends_with("close=client") || line.ends_with("close=broker"),
        "{line}"
    );
    for want in [
        "listener=mqtt",
        "client=127.0.0.1:",
        "tls_version=- tls_cipher=- tls_cn=-",
        "protocol=3.1.1",
        "username=u1",
        "cluster=brokers",
        "node=b1",
        "connack=0",
    ] {
        assert!(line.contains(want), "{want:?} in {line}");
    }
    let to_broker: u64 = line
        .split(" to_broker=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("to_broker");
    assert!(
        to_broker > 20,
        "CONNECT, PUBLISH and DISCONNECT counted: {line}"
    );

    // A refused connection: not MQTT.
    let mut s = tcp(port);
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    let _ = read_to_close(&mut s, Duration::from_secs(5));
    let line = wait_line(&file, &["reject=invalid"]);
    assert!(
        line.contains("close=rejected") && line.contains("protocol=-"),
        "{line}"
    );

    // logrotate: rename, SIGUSR1, and the next line goes to a new file.
    std::fs::rename(&file, d.join("access.log.1")).expect("rotate");
    gate.signal("USR1");
    publish(port, "pub2");
    wait_line(&file, &["client_id=pub2"]);
    assert!(!lines(&d.join("access.log.1"))
        .iter()
        .any(|l| l.contains("pub2")));

    // A session the gateway closes: maint.
    let mut held = crate::common::mqtt::session(port, &Connect::new("held1")).expect("session");
    set_node_state(gate.admin_port, "b1", "maint");
    assert!(crate::common::mqtt::closed_within(
        &mut held,
        Duration::from_secs(10)
    ));
    wait_line(&file, &["client_id=held1", "close=maint"]);
    set_node_state(gate.admin_port, "b1", "ready");

    // A reload to JSON: the file is reopened, lines are JSON objects.
    let json_cfg = std::fs::read_to_string(&gate.config)
        .expect("config")
        .replace("[log]\n", "[log]\naccess_format = \"json\"\n");
    gate.reload_with(&json_cfg);
    publish(port, "pub3");
    let line = wait_line(&file, &["\"pub3\""]);
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(v["client_id"], "pub3");
    assert_eq!(v["username"], "u1");
    assert_eq!(v["connack"], 0);
    assert!(v["close"] == "client" || v["close"] == "broker", "{v}");
    assert_eq!(v["node"], "b1");
    assert_eq!(v["tls_version"], serde_json::Value::Null);

    // Never the password, in any line of either file.
    for f in ["access.log", "access.log.1"] {
        assert!(
            !std::fs::read_to_string(d.join(f))
                .unwrap_or_default()
                .contains("secret-pw"),
            "{f} holds no password"
        );
    }
    assert_eq!(gate.metric("mqgate_access_log_dropped_total", &[]), 0.0);
}

#[test]
fn syslog_datagrams_on_the_configured_socket() {
    let dir = tempdir();
    let d = dir.path();
    let sock_path = d.join("log.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the syslog socket");
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let broker = Mosquitto::start("b1", d);
    let log = format!(
        "access = \"syslog\"\naccess_syslog_socket = \"{}\"",
        sock_path.display()
    );
    let (gate, port) = Gate::start_with(d, "gate", |l, a| config(l, a, &broker, &log));
    gate.wait_node_up("b1");
    publish(port, "sys1");
    let mut buf = vec![0u8; 8192];
    let got = loop {
        let n = sock.recv(&mut buf).expect("a datagram within 15 s");
        let d = String::from_utf8_lossy(&buf[..n]).into_owned();
        if d.contains("client_id=sys1") {
            break d;
        }
    };
    let pid = gate.pid().expect("pid");
    assert!(got.starts_with("<134>"), "local0.info: {got}");
    assert!(got.contains(&format!(" mqgate[{pid}]: time=")), "{got}");
    assert!(got.contains(" connack=0 ") && !got.contains('\n'), "{got}");
}

/// Stopping the gateway does not lose the last lines: sessions it closes at the end of
/// `shutdown_grace` are in the file once the process has exited (the writer drains its
/// queue before the exit, instead of dying between two of its 50 ms looks).
#[test]
fn the_sessions_closed_at_shutdown_are_in_the_file_when_the_process_exits() {
    let dir = tempdir();
    let d = dir.path();
    let broker = Mosquitto::start("b1", d);
    let file = d.join("access.log");
    let (gate_cfg, port) = {
        let (l, a) = (free_port(), free_port());
        let mut toml = config(l, a, &broker, &format!("access = \"{}\"", file.display()));
        toml.push_str("\n[limits]\nshutdown_grace = \"100ms\"\n");
        ((toml, a), l)
    };
    let mut gate = Gate::start(d, "gate", &gate_cfg.0, gate_cfg.1);
    gate.wait_node_up("b1");
    let ids: Vec<String> = (0..20).map(|i| format!("at-exit-{i}")).collect();
    let mut held: Vec<_> = ids
        .iter()
        .map(|id| crate::common::mqtt::session(port, &Connect::new(id)).expect("session"))
        .collect();
    gate.signal("TERM");
    assert_eq!(gate.wait_exit(Duration::from_secs(20)), Some(0));
    for s in &mut held {
        assert!(crate::common::mqtt::closed_within(
            s,
            Duration::from_secs(5)
        ));
    }
    // The process is gone: what is in the file now is all there will be.
    let all = lines(&file);
    for id in &ids {
        let needle = format!("client_id={id} ");
        let line = all.iter().find(|l| l.contains(&needle));
        assert!(
            line.is_some_and(|l| l.ends_with("close=shutdown")),
            "{id}: {line:?} in {} lines",
            all.len()
        );
    }
}

/// Sessions closed lane by lane say why: a paced evacuation's `maint`, then a
/// rebalance's `rebalance` (before, they read whatever cause the node had recorded
/// last, `node_down` if none: the cause was only set once the last lane had closed).
#[test]
fn evacuated_and_rebalanced_sessions_say_why_they_were_closed() {
    let dir = tempdir();
    let d = dir.path();
    let nodes = Mosquitto::start_nodes(d, 2);
    let file = d.join("access.log");
    let (listen, admin) = (free_port(), free_port());
    let toml = basic_config(
        listen,
        admin,
        "dynsec",
        &[&nodes[0], &nodes[1]],
        "balance = \"least-conn\"",
    )
    .replacen(
        "[admin]",
        &format!("[log]\naccess = \"{}\"\n\n[admin]", file.display()),
        1,
    );
    let gate = Gate::start(d, "gate", &toml, admin);
    gate.wait_node_up("node1");
    gate.wait_node_up("node2");
    let url = format!("http://127.0.0.1:{admin}");
    // Twelve sessions on node1 (node2 in maintenance while they connect).
    let on_node1 = |prefix: &str| {
        set_node_state(admin, "node1", "ready");
        set_node_state(admin, "node2", "maint");
        let ids: Vec<String> = (0..12).map(|i| format!("{prefix}-{i}")).collect();
        let held: Vec<_> = ids
            .iter()
            .map(|id| crate::common::mqtt::session(listen, &Connect::new(id)).expect("session"))
            .collect();
        // Counted once each relay runs (and the closed ones of before are gone).
        let active = |n: &str| gate.metric("mqgate_connections_active", &[("node", n)]);
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while active("node1") != 12.0 {
            assert!(
                std::time::Instant::now() < until,
                "{prefix}: node1 {}, node2 {}",
                active("node1"),
                active("node2")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        set_node_state(admin, "node2", "ready");
        (ids, held)
    };
    let close_of = |id: &str| {
        let line = wait_line(&file, &[&format!("client_id={id} ")]);
        line.rsplit("close=").next().unwrap_or("").to_string()
    };

    // A paced evacuation: every session says `maint`.
    let (ids, mut held) = on_node1("evac");
    let out = mqgate(&[
        "node", "evacuate", "brokers", "node1", "--rate", "100", "--admin", &url,
    ]);
    assert!(out.status.success(), "{out:?}");
    for s in &mut held {
        assert!(crate::common::mqtt::closed_within(
            s,
            Duration::from_secs(10)
        ));
    }
    for id in &ids {
        assert_eq!(close_of(id), "maint", "{id}");
    }

    // A rebalance on the same node afterwards: `rebalance`, not the evacuation's cause.
    let (ids, _held) = on_node1("moved");
    crate::common::admin::cli_rebalance(admin, &["--rate", "100"]);
    wait_line(&file, &["client_id=moved-"]);
    let closed: Vec<String> = lines(&file)
        .into_iter()
        .filter(|l| l.contains("client_id=moved-"))
        .collect();
    assert!(
        closed.iter().all(|l| l.ends_with("close=rebalance")),
        "{closed:#?}"
    );
    assert!(closed.len() <= ids.len());
}
