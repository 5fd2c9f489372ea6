//! The admin HTTP API (SPEC section 7) and the CLI commands that use it (SPEC section 1),
//! against a real mqgate process in front of real Mosquitto brokers.
//!
//! `api`: answers, tokens and errors; `cli`: the CLI commands; `exposure`: who can reach
//! the API and whether it stays available. The helpers here are shared by them.

mod api;
mod cli;
mod exposure;

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
