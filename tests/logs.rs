//! What an operator reads in mqgate's log (stderr), with real Mosquitto brokers and
//! clients: a TLS client connecting by IP address (an IP as SNI) writes no warning;
//! health changes that lose capacity are warnings and a full-sync cluster without a
//! leader is an error, while a full-sync follower (down by design) and a node coming
//! up are info; refused clients are summed up in an info line.

use crate::common::*;
use std::io::Write;
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

/// The log lines containing every one of `needles`.
fn lines_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

/// The one log line containing every one of `needles` (waits for it).
fn line(gate: &Gate, needles: &[&str]) -> String {
    wait_until(T, &format!("a log line with {needles:?}"), || {
        !lines_with(&gate.log_text(), needles).is_empty()
    });
    let log = gate.log_text();
    let found = lines_with(&log, needles);
    assert_eq!(found.len(), 1, "one line with {needles:?}:\n{log}");
    found[0].to_string()
}

/// The level column of a text log line (`INFO`, `WARN`, ...).
fn level(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or("")
}

#[test]
fn a_tls_client_connecting_by_ip_address_writes_no_warning() {
    let dir = tempdir();
    let d = dir.path();
    let broker = Mosquitto::start("b1", d);
    let (ca, cert, key) = Pki::new("log test CA").write_server(d, "server");
    let (tls, admin) = (free_port(), free_port());
    let toml = format!(
        "{}\n[[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:{tls}\"\ncluster = \"brokers\"\n\
         [listeners.tls]\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [clusters.brokers]\nmode = \"dynsec\"\nnodes = [ {{ name = \"b1\", address = \"{}\" }} ]\n\
         [clusters.brokers.health]\ninterval = \"200ms\"\nrise = 1\nfall = 1\n",
        Gate::admin_section(admin),
        cert.display(),
        key.display(),
        broker.address(),
    );
    let gate = Gate::start(d, "gate", &toml, admin);
    gate.wait_node_up("b1");
    let before = gate.log_text().len();

    // mosquitto_pub/sub -h 127.0.0.1 put the IP address in the SNI extension, which
    // rustls ignores with a warning of its own.
    let ca = ca.to_str().expect("path");
    let got = cli_round_trip(tls, &["--cafile", ca], "mqttv311", "log/sni", "by IP");
    assert_eq!(got.trim_end(), "by IP");

    let log = gate.log_text();
    let new = &log[before..];
    // (Start-up warnings, such as one about the open-file limit, are not the clients'.)
    let warnings: Vec<&str> = new
        .lines()
        .filter(|l| matches!(level(l), "WARN" | "ERROR"))
        .filter(|l| l.contains("conn{") || l.contains("rustls") || l.contains("SNI"))
        .collect();
    assert!(
        warnings.is_empty(),
        "a TLS client by IP address wrote warnings:\n{}",
        warnings.join("\n")
    );
    // The test runs mqgate with RUST_LOG=debug: the library's remark is still there,
    // as a debug line.
    let sni = lines_with(new, &["Illegal SNI"]);
    assert!(!sni.is_empty(), "the SNI remark is kept at debug:\n{new}");
    assert!(sni.iter().all(|l| level(l) == "DEBUG"), "{sni:?}");
}

#[test]
fn losing_the_full_sync_leader_is_a_warning_and_no_leader_an_error() {
    let dir = tempdir();
    let mut m1 = Mosquitto::start("node1", dir.path());
    let mut m2 = Mosquitto::start("node2", dir.path());
    m2.stop(); // a follower: its client listener is closed
    let (gate, _listen) = Gate::basic(dir.path(), "full-sync", &[&m1, &m2]);
    wait_until(T, "node1 leads", || {
        gate.metric("mqgate_node_leader", &[("node", "node1")]) == 1.0
    });

    // The follower, down by design, is not a warning.
    let l = line(&gate, &["node is down", "node=node2"]);
    assert_eq!(level(&l), "INFO", "{l}");
    let l = line(&gate, &["leader changed", "to=\"node1\""]);
    assert_eq!(level(&l), "INFO", "{l}");

    // The leader dies: a warning, and no leader at all is an error.
    m1.stop();
    let l = line(&gate, &["node is down", "node=node1"]);
    assert_eq!(level(&l), "WARN", "{l}");
    assert!(l.contains("reason="), "{l}");
    let l = line(&gate, &["leader changed", "from=\"node1\"", "to=\"-\""]);
    assert_eq!(level(&l), "ERROR", "{l}");

    // The next leader opens its listener: info again.
    m2.resume();
    let l = line(&gate, &["leader changed", "to=\"node2\""]);
    assert_eq!(level(&l), "INFO", "{l}");
    let l = line(&gate, &["node is up", "node=node2"]);
    assert_eq!(level(&l), "INFO", "{l}");
}

#[test]
fn a_dynsec_node_going_down_is_a_warning() {
    let dir = tempdir();
    let m1 = Mosquitto::start("node1", dir.path());
    let mut m2 = Mosquitto::start("node2", dir.path());
    let (gate, _listen) = Gate::basic(dir.path(), "dynsec", &[&m1, &m2]);
    wait_until(T, "both nodes up", || {
        gate.metric("mqgate_node_up", &[]) == 2.0
    });
    let l = line(&gate, &["node is up", "node=node2"]);
    assert_eq!(level(&l), "INFO", "{l}");
    m2.stop();
    let l = line(&gate, &["node is down", "node=node2"]);
    assert_eq!(level(&l), "WARN", "{l}");
}

#[test]
fn refused_clients_are_summed_up_at_info() {
    let dir = tempdir();
    let m1 = Mosquitto::start("node1", dir.path());
    let (gate, listen) = Gate::basic(dir.path(), "dynsec", &[&m1]);
    wait_until(T, "node up", || gate.metric("mqgate_node_up", &[]) == 1.0);
    assert!(
        lines_with(&gate.log_text(), &["clients refused"]).is_empty(),
        "nothing refused, nothing said"
    );

    // Not MQTT: refused (each one at debug), and summed up at info within a second or so.
    let mut c = tcp(listen);
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let (_, ended) = read_to_close(&mut c, Duration::from_secs(5));
    assert_ne!(ended, Ended::Open, "refused");
    assert_eq!(
        gate.metric(
            "mqgate_connections_rejected_total",
            &[("listener", "mqtt"), ("reason", "invalid")]
        ),
        1.0
    );
    let l = line(&gate, &["clients refused since the last summary"]);
    assert_eq!(level(&l), "INFO", "{l}");
    assert!(
        l.contains("total=1") && l.contains("refused=\"mqtt: 1 invalid\""),
        "{l}"
    );
}
