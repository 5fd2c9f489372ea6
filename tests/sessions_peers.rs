//! Stored subscriptions changed through two gateways linked as peers
//! (`[clusters.X.sessions] restore_subscriptions`): the same persistent client id
//! changes its subscriptions through gate-a, then gate-b, then through both at once;
//! every time both gateways end with the same set (`GET
//! /api/v1/clusters/{c}/sticky/{key}`), the last one. A removal made while a gateway
//! was down does not come back when it restarts from its snapshot and resyncs: each
//! set carries a stamp and only a newer one replaces it. Real Mosquitto nodes, raw
//! MQTT clients.

use crate::common::fleet::addresses;
use crate::common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// The topics a gateway stores for `key`, sorted (none without a sticky entry).
fn stored(g: &Gate, key: &str) -> Vec<String> {
    let path = format!("/api/v1/clusters/brokers/sticky/{key}");
    let Ok((200, body)) = http("GET", g.admin_port, &path, None, None) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let mut topics: Vec<String> = v["subscriptions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["topic"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    topics.sort();
    topics
}

/// Wait until both gateways store exactly `want` for `key`.
fn both_store(gates: &[(Gate, u16)], key: &str, want: &[&str]) {
    wait_until(
        T,
        &format!("both gateways store {want:?} for {key}"),
        || gates.iter().all(|(g, _)| stored(g, key) == want),
    );
}

fn client(port: u16, id: &str) -> Client {
    Client::accepted(port, &Connect::new(id).v5(true).persistent())
        .unwrap_or_else(|e| panic!("{id}: {e}"))
        .0
}

#[test]
fn the_last_set_wins_on_both_gateways_and_a_removal_survives_a_resync() {
    let dir = tempdir();
    let nodes = Mosquitto::start_nodes(dir.path(), 2);
    let all = addresses(&nodes);
    // gate-a reaches the first broker only, gate-b the second only, each under the
    // name node1 (so that each takes the other's sticky entries): the same id can be
    // live through both at once.
    let mut gates = pair::start(
        dir.path(),
        [all[0..1].to_vec(), vec![("node1", all[1].1.clone())]],
        "[clusters.brokers.sessions]\nrestore_subscriptions = true\n",
        true,
    );
    let (a, b) = (gates[0].1, gates[1].1);

    // Through gate-a, then gate-b (which replays a's set on node2 first).
    let mut c = client(a, "roamer");
    for t in ["t/a", "t/b", "t/c"] {
        c.subscribe(t).expect("subscribe");
    }
    c.disconnect();
    let mut g = client(a, "gone");
    g.subscribe("g/1").expect("subscribe");
    g.disconnect();
    both_store(&gates, "roamer", &["t/a", "t/b", "t/c"]);
    both_store(&gates, "gone", &["g/1"]);
    let mut c = client(b, "roamer");
    c.unsubscribe("t/a").expect("unsubscribe");
    c.disconnect();
    both_store(&gates, "roamer", &["t/b", "t/c"]);

    // Through both at once: two SUBSCRIBEs sent before either SUBACK is read, so that
    // the two gateways' sets cross on the peer link. Whichever is last, both agree.
    let mut x = client(a, "roamer");
    let mut y = client(b, "roamer");
    for (c, t) in [(&mut x, "t/d"), (&mut y, "t/e")] {
        let mut body = vec![0, 1, 0];
        body.extend(mqtt_field(t.as_bytes()));
        body.push(1);
        std::io::Write::write_all(&mut c.s, &mqtt_packet(0x82, &body)).expect("SUBSCRIBE");
    }
    for c in [&mut x, &mut y] {
        loop {
            let (t, _) = c.read_packet(T).expect("SUBACK");
            if t >> 4 == 9 {
                break;
            }
        }
    }
    let mut same = Vec::new();
    wait_until(T, "both gateways store the same set", || {
        same = stored(&gates[0].0, "roamer");
        same == stored(&gates[1].0, "roamer") && same.len() >= 3
    });
    assert!(
        same.starts_with(&["t/b".to_string(), "t/c".to_string()]),
        "{same:?}"
    );
    x.disconnect();
    y.disconnect();

    // gate-b stops (its snapshot keeps these sets); meanwhile, through gate-a, roamer
    // drops t/b and gone drops its only subscription.
    assert_eq!(gates[1].0.stop(), Some(0));
    let mut c = client(a, "roamer");
    c.unsubscribe("t/b").expect("unsubscribe");
    c.disconnect();
    let mut g = client(a, "gone");
    g.unsubscribe("g/1").expect("unsubscribe");
    g.disconnect();
    let now: Vec<String> = same.iter().filter(|t| *t != "t/b").cloned().collect();
    assert_eq!(stored(&gates[0].0, "roamer"), now);
    assert!(stored(&gates[0].0, "gone").is_empty());

    // gate-b comes back from its older snapshot; both full syncs cross. The newer sets
    // (gate-a's) win on both sides: nothing removed comes back.
    let synced = |g: &Gate| {
        g.log_text()
            // Version 3 peers ask each other for tables: "sticky table received from
            // peer" with its scope (version 2: "full sticky table received ...").
            .matches("sticky table received from peer")
            .count()
    };
    let before = synced(&gates[0].0);
    gates[1].0.resume();
    wait_until(T, "gate-a received gate-b's table again", || {
        synced(&gates[0].0) > before
    });
    let now: Vec<&str> = now.iter().map(String::as_str).collect();
    both_store(&gates, "roamer", &now);
    both_store(&gates, "gone", &[]);
}
