//! Health checks of a cluster that sends PROXY headers to its brokers carry one too: a
//! broker listener that expects a header (Mosquitto 2.1's `enable_proxy_protocol`,
//! HAProxy's `accept-proxy`) closes a connection without it, and every node would be
//! down. Mosquitto 2.0 cannot read PROXY headers, so the "broker" here is a real HAProxy
//! 2.6 frontend with `accept-proxy` in front of a real Mosquitto: it refuses a
//! connection without a valid header, as such a broker does.

use crate::common::*;
use std::time::Duration;

/// HAProxy listening with `accept-proxy` on a free port, relaying to `upstream`.
fn accept_proxy_front(dir: &std::path::Path, upstream: u16) -> (KillOnDrop, u16) {
    let port = free_port();
    let cfg = format!(
        "global\n    maxconn 100\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\n\
         frontend f\n    bind 127.0.0.1:{port} accept-proxy\n    default_backend b\n\
         backend b\n    server m 127.0.0.1:{upstream}\n"
    );
    let child = crate::common::tools::start_haproxy(dir, "haproxy-accept", &cfg, &[port]);
    (child, port)
}

fn gate_config(admin: u16, listen: u16, node: u16, out: &str) -> String {
    format!(
        "{}\n[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:{listen}\"\ncluster = \"brokers\"\n\n\
         [clusters.brokers]\nmode = \"dynsec\"\nsend_proxy_protocol = \"{out}\"\n\
         nodes = [ {{ name = \"n1\", address = \"127.0.0.1:{node}\" }} ]\n\
         [clusters.brokers.health]\ninterval = \"200ms\"\nrise = 1\nfall = 1\n",
        Gate::admin_section(admin)
    )
}

#[test]
fn mqtt_checks_send_the_header_a_proxy_protocol_broker_needs() {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let (_haproxy, front) = accept_proxy_front(dir.path(), broker.port);
    // Without a header the front closes the connection: what the checks would meet.
    let mut bare = std::net::TcpStream::connect(("127.0.0.1", front)).expect("connect");
    bare.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut out = mqgate::mqtt::encode_connect_v311("bare", None, None, 30);
    std::io::Write::write_all(&mut bare, &out).expect("write");
    let mut ack = [0u8; 4];
    assert!(
        std::io::Read::read_exact(&mut bare, &mut ack).is_err(),
        "a CONNECT without a PROXY header must not be answered by the accept-proxy front"
    );
    for version in ["v1", "v2"] {
        let (admin, listen) = (free_port(), free_port());
        let gate = Gate::start(
            dir.path(),
            &format!("gate-{version}"),
            &gate_config(admin, listen, front, version),
            admin,
        );
        // The default `check = "mqtt"`: up only if the check's CONNECT got a CONNACK 0.
        gate.wait_node_up("n1");
        let mut c = std::net::TcpStream::connect(("127.0.0.1", listen)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        out = mqgate::mqtt::encode_connect_v311(&format!("dev-{version}"), None, None, 30);
        std::io::Write::write_all(&mut c, &out).expect("write");
        std::io::Read::read_exact(&mut c, &mut ack).expect("CONNACK through mqgate");
        assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "{version}: CONNACK accepted");
    }
}
