//! Graceful shutdown (SPEC section 6) of the real binary: on SIGTERM/SIGINT mqgate stops
//! accepting, keeps relaying open sessions for up to `shutdown_grace`, then closes what
//! is left and exits 0; if the sessions end sooner, it exits sooner.

use crate::common::*;
use std::time::{Duration, Instant};

fn start(grace: &str) -> (tempfile::TempDir, Mosquitto, Gate, u16) {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let (port, admin) = (free_port(), free_port());
    let mut toml = basic_config(port, admin, "dynsec", &[&broker], "");
    toml.push_str(&format!("\n[limits]\nshutdown_grace = \"{grace}\"\n"));
    let gate = Gate::start(dir.path(), "gate", &toml, admin);
    gate.wait_node_up("b1");
    (dir, broker, gate, port)
}

#[test]
fn sigterm_stops_accepting_relays_until_grace_then_exits_0() {
    let (_dir, _broker, mut gate, port) = start("2s");
    let mut session = raw_session(port, "lingering");
    assert!(ping(&mut session));
    let term = Instant::now();
    gate.signal("TERM");
    gate.wait_log("shutting down");
    // New connections are refused at once...
    wait_until(Duration::from_secs(5), "listener closed", || {
        !port_open(port)
    });
    // ...while the open session keeps working during the grace period.
    assert!(
        ping(&mut session),
        "session relayed during the grace period"
    );
    // At the end of the grace the gateway closes it and exits cleanly.
    let (_, ended) = read_to_close(&mut session, Duration::from_secs(10));
    assert_ne!(ended, Ended::Open, "session closed at the end of the grace");
    assert!(
        term.elapsed() >= Duration::from_millis(1900),
        "not before the grace ended"
    );
    assert_eq!(gate.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(gate.log_text().contains("shutdown grace over"));
}

#[test]
fn sigterm_exits_as_soon_as_the_last_session_closes() {
    let (_dir, _broker, mut gate, port) = start("60s");
    let mut session = raw_session(port, "leaving");
    assert!(ping(&mut session));
    gate.signal("TERM");
    gate.wait_log("shutting down");
    assert!(ping(&mut session));
    let closed = Instant::now();
    drop(session);
    assert_eq!(
        gate.wait_exit(Duration::from_secs(20)),
        Some(0),
        "exit 0 well before the 60 s grace"
    );
    assert!(closed.elapsed() < Duration::from_secs(20));
    assert!(!gate.log_text().contains("shutdown grace over"));
}

#[test]
fn sigint_without_sessions_exits_0_at_once() {
    let (_dir, _broker, mut gate, _port) = start("30s");
    gate.signal("INT");
    assert_eq!(gate.wait_exit(Duration::from_secs(10)), Some(0));
}
