//! The gateway never refuses a CONNECT that the broker behind it accepts for that
//! protocol level: edge-case CONNECTs sent straight to a real Mosquitto and through
//! mqgate must get the same outcome (accepted, refused with a code, or closed).

use crate::common::mqtt::connect_raw;
use crate::common::*;
use std::io::{Read, Write};
use std::time::Duration;

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// CONNACK with this return / reason code.
    Connack(u8),
    /// Closed (or reset) without a CONNACK.
    Closed,
}

fn outcome(port: u16, packet: &[u8]) -> Outcome {
    let mut s = tcp(port);
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    if s.write_all(packet).is_err() {
        return Outcome::Closed;
    }
    let mut head = [0u8; 4];
    match s.read_exact(&mut head) {
        Ok(()) if head[0] == 0x20 => {
            // v3.x: [20 02 flags code]; v5: [20 len flags code ...].
            Outcome::Connack(head[3])
        }
        Ok(()) => panic!("unexpected reply {head:02x?}"),
        Err(_) => Outcome::Closed,
    }
}

/// A CONNECT: first byte, protocol name and level, connect flags, keep alive 10,
/// [v5: empty properties], then the payload fields.
fn connect(first: u8, name: &[u8], level: u8, flags: u8, payload: &[&[u8]]) -> Vec<u8> {
    let mut rest = Vec::new();
    if level == 5 {
        rest.push(0);
    }
    for p in payload {
        rest.extend(mqtt_field(p));
    }
    connect_raw(first, name, level, flags, 10, &[&rest])
}

#[test]
fn edge_case_connects_get_what_mosquitto_gives_them() {
    let dir = tempdir();
    let broker = Mosquitto::start("b1", dir.path());
    let (gate, port) = Gate::basic(dir.path(), "dynsec", &[&broker]);
    gate.wait_node_up("b1");
    let v31 = b"MQIsdp";
    let v311 = b"MQTT";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Mosquitto's own test data, CONNECT.json "v3.1 CONNECT" cases "10 ok", "14 ok".
        (
            "3.1, reserved connect flag",
            hex("10 0F 0006 4D5149736470 03 01 000A 0001 70"),
        ),
        (
            "3.1, fixed-header flags 0100",
            hex("14 0F 0006 4D5149736470 03 01 000A 0001 70"),
        ),
        (
            "3.1, fixed-header flags 1111",
            connect(0x1F, v31, 3, 0x02, &[b"f31"]),
        ),
        (
            "3.1, username and password flags without the fields",
            connect(0x10, v31, 3, 0xC2, &[b"nouser31"]),
        ),
        (
            "3.1.1, will QoS 1 without will flag",
            connect(0x10, v311, 4, 0x0A, &[b"wq311"]),
        ),
        (
            "3.1.1, will retain without will flag",
            connect(0x10, v311, 4, 0x22, &[b"wr311"]),
        ),
        (
            "5.0, will QoS 2 and retain without will flag",
            connect(0x10, v311, 5, 0x32, &[b"wq5"]),
        ),
        (
            "3.1, will QoS 1 without will flag",
            connect(0x10, v31, 3, 0x0A, &[b"wq31"]),
        ),
        // Refused by Mosquitto 2.0, and so by the gateway.
        (
            "3.1.1, reserved connect flag",
            connect(0x10, v311, 4, 0x03, &[b"r311"]),
        ),
        (
            "3.1.1, fixed-header flags 0010",
            connect(0x12, v311, 4, 0x02, &[b"h311"]),
        ),
        (
            "5.0, reserved connect flag",
            connect(0x10, v311, 5, 0x03, &[b"r5"]),
        ),
        (
            "3.1, password without username",
            connect(0x10, v31, 3, 0x42, &[b"pw31", b"secret"]),
        ),
    ];
    let mut accepted = 0;
    for (what, packet) in &cases {
        let direct = outcome(broker.port, packet);
        let through = outcome(port, packet);
        assert_eq!(
            through, direct,
            "{what}: through mqgate vs straight to Mosquitto"
        );
        if direct == Outcome::Connack(0) {
            accepted += 1;
        }
    }
    assert_eq!(
        accepted, 5,
        "Mosquitto 2.0 accepts the five 3.1 cases (not 3.1.1/5 will flags)"
    );
}

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|p| {
            let t = std::str::from_utf8(p).expect("ascii");
            u8::from_str_radix(t, 16).expect("hex digit pair")
        })
        .collect()
}
