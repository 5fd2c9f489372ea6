//! Issue 29, item 5: `mqgate check` says what it would listen on and which nodes it
//! would use (`--json` for pipelines), a listener's own `max_connections` refuses like
//! the global one, and `mqgate status --watch` redraws in place.

use crate::common::mqtt::connect_and_ack;
use crate::common::*;
use std::io::Read;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

/// Two listeners, the first limited to `small` connections.
fn two_listeners(small_port: u16, big_port: u16, admin: u16, broker: &str, small: u32) -> String {
    format!(
        "{}\n[[listeners]]\nname = \"small\"\nbind = \"127.0.0.1:{small_port}\"\ncluster = \"brokers\"\nmax_connections = {small}\n\n\
         [[listeners]]\nname = \"big\"\nbind = \"127.0.0.1:{big_port}\"\ncluster = \"brokers\"\n\n\
         [clusters.brokers]\nnodes = [ {{ name = \"b1\", address = \"{broker}\" }} ]\n\
         [clusters.brokers.health]\ninterval = \"200ms\"\nrise = 1\nfall = 1\n",
        Gate::admin_section(admin)
    )
}

#[test]
fn check_json_lists_listeners_and_nodes_and_refuses_bad_new_keys() {
    let dir = tempdir();
    let file = dir.path().join("m.toml");
    let text = two_listeners(18831, 18832, 19100, "broker-1.internal:1883", 10)
        .replace("[admin]", "[log]\naccess = \"stderr\"\n\n[admin]");
    std::fs::write(&file, &text).expect("write");
    let out = mqgate(&["check", "--json", "-c", file.to_str().expect("utf-8")]);
    assert_success(&out, "check --json");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["valid"], true);
    assert_eq!(v["listeners"][0]["name"], "small");
    assert_eq!(v["listeners"][0]["bind"], "127.0.0.1:18831");
    assert_eq!(v["listeners"][0]["max_connections"], 10);
    assert_eq!(
        v["listeners"][1]["max_connections"],
        serde_json::Value::Null
    );
    assert_eq!(
        v["clusters"][0]["nodes"][0]["address"],
        "broker-1.internal:1883"
    );
    assert_eq!(v["access_log"]["target"], "stderr");
    // The text summary says the same.
    let (code, stdout, _) = mqgate_check(&file);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("at most 10 connections on this listener"),
        "{stdout}"
    );
    assert!(stdout.contains("node b1") && stdout.contains("broker-1.internal:1883"));
    assert!(stdout.contains("access   log to stderr (text)"), "{stdout}");

    // A listener's limit beyond the global one: a warning.
    let over = text.replace("max_connections = 10\n", "max_connections = 60000\n");
    std::fs::write(&file, &over).expect("write");
    let (code, _, stderr) = mqgate_check(&file);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: key `listeners[0].max_connections`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("more than [limits] max_connections (50000)"),
        "{stderr}"
    );

    // Identity without client_ca, and rewrite and check of the same field: errors.
    let bad = text.replace(
        "max_connections = 10\n",
        "max_connections = 10\n[listeners.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nusername_from = \"cn\"\nrequire_username_match = \"san_dns\"\n",
    );
    std::fs::write(&file, bad).expect("write");
    let (code, _, stderr) = mqgate_check(&file);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("listeners[0].tls.username_from"),
        "{stderr}"
    );
    assert!(stderr.contains("set client_ca"), "{stderr}");
    assert!(
        stderr.contains("both username_from and require_username_match"),
        "{stderr}"
    );
}

#[test]
fn a_listeners_own_max_connections_refuses_like_the_global_one() {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let (small, big, admin) = (free_port(), free_port(), free_port());
    let gate = Gate::start(
        dir.path(),
        "gate",
        &two_listeners(small, big, admin, &broker.address(), 1),
        admin,
    );
    gate.wait_node_up("b1");
    let first = crate::common::mqtt::session(small, &Connect::new("first")).expect("first in");
    let busy = |c: Connect| connect_and_ack(small, &c).map(|(_, code)| code);
    assert_eq!(
        busy(Connect::new("second")),
        Ok(0x03),
        "3.1.1: server unavailable"
    );
    assert_eq!(
        busy(Connect::new("second-v5").v5(true)),
        Ok(0x89),
        "5.0: server busy"
    );
    // The other listener is not limited by it.
    let other = crate::common::mqtt::session(big, &Connect::new("other")).expect("big in");
    assert_eq!(
        gate.metric(
            "mqgate_connections_rejected_total",
            &[("listener", "small"), ("reason", "busy")]
        ),
        2.0
    );
    // A reload raises the limit; the connection already open still counts.
    let text = std::fs::read_to_string(&gate.config).expect("config");
    gate.reload_with(&text.replace("max_connections = 1\n", "max_connections = 2\n"));
    let second = crate::common::mqtt::session(small, &Connect::new("second")).expect("now in");
    assert_eq!(busy(Connect::new("third")), Ok(0x03));
    drop((first, second, other));
}

#[test]
fn status_watch_redraws_the_table_in_place() {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let (gate, _) = Gate::basic(dir.path(), "dynsec", &[&broker]);
    gate.wait_node_up("b1");
    let url = format!("http://127.0.0.1:{}", gate.admin_port);
    let mut child = KillOnDrop(
        crate::common::fleet::mqgate_command(&[
            "status",
            "--watch",
            "--interval",
            "200ms",
            "--admin",
            &url,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mqgate status --watch"),
    );
    let mut stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    wait_until(Duration::from_secs(15), "three frames of the table", || {
        while let Ok(chunk) = rx.try_recv() {
            seen.extend(chunk);
        }
        String::from_utf8_lossy(&seen)
            .matches("\x1b[H\x1b[2J")
            .count()
            >= 3
    });
    let text = String::from_utf8_lossy(&seen);
    let frame = text.split("\x1b[H\x1b[2J").nth(2).expect("a full frame");
    assert!(
        frame.starts_with("every 200ms: http://127.0.0.1:"),
        "{frame}"
    );
    assert!(
        frame.contains("cluster brokers") && frame.contains("b1"),
        "{frame}"
    );
    assert_eq!(child.0.try_wait().ok().flatten(), None, "still running");
}
