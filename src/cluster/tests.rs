//! Unit tests of node selection: leader election, the order `pick` returns for each
//! `balance`, sticky entries (`sessions`, key fallback), and admin states.

use super::*;
use crate::config::{self, ClusterConfig};
use crate::mqtt::{parse_connect, Connect};
use crate::sessions::SessionScope;
use std::path::Path;

fn cluster_cfg(mode: &str, extra: &str, sticky: &str) -> ClusterConfig {
    let text = format!(
        r#"
[[listeners]]
name = "mqtt"
bind = "127.0.0.1:1883"
cluster = "c"

[clusters.c]
mode = "{mode}"
nodes = [
  {{ name = "node1", address = "127.0.0.1:1" }},
  {{ name = "node2", address = "127.0.0.1:2" }},
  {{ name = "node3", address = "127.0.0.1:3" }},
]
{extra}
{sticky}
"#
    );
    match config::parse(Path::new("/tmp/cluster-test.toml"), &text) {
        Ok(c) => c.clusters[0].clone(),
        Err(e) => panic!("test config: {e}"),
    }
}

fn cluster(mode: &str, extra: &str, sticky: &str) -> Cluster {
    Cluster::new(
        &cluster_cfg(mode, extra, sticky),
        Arc::new(Metrics::new()),
        "gate-test",
    )
}

fn up_all(c: &Cluster) {
    for n in c.nodes().iter() {
        c.set_health(n, Health::Up);
    }
}

fn node(c: &Cluster, name: &str) -> Arc<Node> {
    c.node(name).unwrap_or_else(|| panic!("no node {name}"))
}

/// A CONNECT: v3.1.1 (`v5 = false`) or v5, with a client id, optional username, and
/// whether the client keeps its session (clean session 0 / session expiry 300 s).
fn connect_bytes(v5: bool, client_id: &str, username: Option<&str>, keep: bool) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', if v5 { 5 } else { 4 }];
    let mut flags = if keep { 0 } else { 0x02 };
    if username.is_some() {
        flags |= 0x80;
    }
    body.push(flags);
    body.extend_from_slice(&[0, 60]);
    if v5 {
        if keep {
            body.extend_from_slice(&[5, 0x11, 0, 0, 1, 44]);
        } else {
            body.push(0);
        }
    }
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    if let Some(u) = username {
        body.extend_from_slice(&(u.len() as u16).to_be_bytes());
        body.extend_from_slice(u.as_bytes());
    }
    let mut out = vec![0x10, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

fn with_connect<R>(bytes: &[u8], f: impl FnOnce(&Connect<'_>) -> R) -> R {
    match parse_connect(bytes) {
        Ok(c) => f(&c),
        Err(e) => panic!("test CONNECT does not parse: {e:?}"),
    }
}

fn pick_names(c: &Cluster, bytes: &[u8]) -> Vec<String> {
    with_connect(bytes, |k| {
        c.pick(k).nodes.iter().map(|n| n.name.clone()).collect()
    })
}

/// Pick, then land on the first node (as a connection does); returns that node.
fn route(c: &Cluster, bytes: &[u8]) -> Option<String> {
    let pick = with_connect(bytes, |k| c.pick(k));
    let first = pick.nodes.first()?.clone();
    c.landed(pick.sticky, &first);
    Some(first.name.clone())
}

fn leader_name(c: &Cluster) -> Option<String> {
    c.leader().map(|n| n.name.clone())
}

#[test]
fn full_sync_elects_first_up_node_and_keeps_it() {
    let c = cluster("full-sync", "", "");
    assert_eq!(leader_name(&c), None);
    // node2 answers before node1 had its first check: no election yet, but clients
    // may try the nodes not known to be down, in order.
    c.set_health(&node(&c, "node2"), Health::Up);
    assert_eq!(leader_name(&c), None);
    let any = connect_bytes(false, "a", None, false);
    assert_eq!(pick_names(&c, &any), ["node1", "node2", "node3"]);
    c.set_health(&node(&c, "node1"), Health::Down);
    assert_eq!(leader_name(&c).as_deref(), Some("node2"));
    assert_eq!(pick_names(&c, &any), ["node2"]);
    // node1 comes up too: the current leader stays.
    c.set_health(&node(&c, "node1"), Health::Up);
    assert_eq!(leader_name(&c).as_deref(), Some("node2"));
    // The leader goes down: the first up node in config order takes over.
    c.set_health(&node(&c, "node2"), Health::Down);
    assert_eq!(leader_name(&c).as_deref(), Some("node1"));
    c.set_health(&node(&c, "node1"), Health::Down);
    assert_eq!(leader_name(&c), None);
    assert!(pick_names(&c, &any).contains(&"node3".to_string()));
    assert!(!c.ready());
}

#[test]
fn full_sync_leader_change_closes_old_sessions() {
    let c = cluster("full-sync", "", "");
    up_all(&c);
    let n1 = node(&c, "node1");
    assert_eq!(leader_name(&c).as_deref(), Some("node1"));
    let session = n1.session_token("l", &SessionScope::root());
    c.set_admin_state(&n1, AdminState::Maint);
    assert!(session.is_closed(), "sessions through the old leader close");
    assert_eq!(leader_name(&c).as_deref(), Some("node2"));
}

#[test]
fn full_sync_keep_leaves_sessions_open() {
    let c = cluster("full-sync", "on_node_down = \"keep\"", "");
    up_all(&c);
    let n1 = node(&c, "node1");
    let session = n1.session_token("l", &SessionScope::root());
    c.set_health(&n1, Health::Down);
    assert_eq!(leader_name(&c).as_deref(), Some("node2"));
    assert!(!session.is_closed());
}

#[test]
fn full_sync_drained_leader_takes_no_new_clients() {
    let c = cluster("full-sync", "", "");
    up_all(&c);
    let n1 = node(&c, "node1");
    let session = n1.session_token("l", &SessionScope::root());
    c.set_admin_state(&n1, AdminState::Drain);
    assert_eq!(leader_name(&c).as_deref(), Some("node1"));
    assert!(!session.is_closed(), "drain keeps existing sessions");
    assert!(pick_names(&c, &connect_bytes(false, "a", None, false)).is_empty());
    assert!(!c.ready());
    c.set_admin_state(&n1, AdminState::Ready);
    assert!(c.ready());
}

#[test]
fn hash_order_is_rendezvous_on_the_sticky_key() {
    let c = cluster("dynsec", "retries = 2", "");
    up_all(&c);
    for i in 0..50 {
        let id = format!("client-{i}");
        let mut want = ["node1", "node2", "node3"];
        want.sort_by_key(|n| std::cmp::Reverse(balance::score(balance::slot(&id), n)));
        let bytes = connect_bytes(false, &id, None, false);
        assert_eq!(pick_names(&c, &bytes), want, "{id}");
        // Same answer every time (no state involved).
        assert_eq!(pick_names(&c, &bytes), want, "{id}");
    }
}

#[test]
fn hash_skips_down_and_non_ready_nodes() {
    let c = cluster("dynsec", "", "");
    up_all(&c);
    let bytes = connect_bytes(false, "x", None, false);
    let first = pick_names(&c, &bytes)[0].clone();
    c.set_health(&node(&c, &first), Health::Down);
    let next = pick_names(&c, &bytes);
    assert_eq!(next.len(), 2);
    assert!(!next.contains(&first));
    c.set_health(&node(&c, &first), Health::Up);
    c.set_admin_state(&node(&c, &first), AdminState::Drain);
    assert!(!pick_names(&c, &bytes).contains(&first));
}

#[test]
fn round_robin_rotates() {
    let c = cluster("dynsec", "balance = \"round-robin\"\nretries = 0", "");
    up_all(&c);
    let firsts: Vec<String> = (0..6)
        .map(|i| pick_names(&c, &connect_bytes(false, &format!("c{i}"), None, false))[0].clone())
        .collect();
    assert_eq!(
        firsts,
        ["node1", "node2", "node3", "node1", "node2", "node3"]
    );
}

#[test]
fn least_conn_prefers_fewest_active() {
    let c = cluster("dynsec", "balance = \"least-conn\"", "");
    up_all(&c);
    let (n1, n2, n3) = (node(&c, "node1"), node(&c, "node2"), node(&c, "node3"));
    let _a = [n1.connection_guard(None), n1.connection_guard(None)];
    let _b = n3.connection_guard(None);
    let bytes = connect_bytes(false, "z", None, false);
    assert_eq!(pick_names(&c, &bytes), ["node2", "node3", "node1"]);
    let _c = [
        n2.connection_guard(None),
        n2.connection_guard(None),
        n2.connection_guard(None),
    ];
    assert_eq!(pick_names(&c, &bytes), ["node3", "node1", "node2"]);
}

#[test]
fn least_conn_spreads_ties() {
    let c = cluster("dynsec", "balance = \"least-conn\"", "");
    up_all(&c);
    let mut seen = std::collections::HashSet::new();
    for i in 0..3 {
        seen.insert(
            pick_names(&c, &connect_bytes(false, &format!("c{i}"), None, false))[0].clone(),
        );
    }
    assert_eq!(seen.len(), 3, "three idle nodes, three clients: {seen:?}");
}

#[test]
fn persistent_sessions_are_sticky_clean_ones_are_not() {
    let c = cluster("dynsec", "balance = \"round-robin\"", "");
    up_all(&c);
    // v3 clean session 0 and v5 session expiry > 0 are written.
    let v3 = route(&c, &connect_bytes(false, "p3", None, true));
    let v5 = route(&c, &connect_bytes(true, "p5", None, true));
    assert_eq!(c.sticky.get("p3").map(|e| e.node), v3);
    assert_eq!(c.sticky.get("p5").map(|e| e.node), v5);
    // Clean sessions are not.
    route(&c, &connect_bytes(false, "c3", None, false));
    route(&c, &connect_bytes(true, "c5", None, false));
    assert!(c.sticky.get("c3").is_none());
    assert!(c.sticky.get("c5").is_none());
    // A persistent client comes back to its node whatever round robin says.
    for _ in 0..5 {
        assert_eq!(route(&c, &connect_bytes(false, "p3", None, true)), v3);
    }
}

#[test]
fn sessions_all_writes_every_client() {
    let c = cluster("dynsec", "", "[clusters.c.sticky]\nsessions = \"all\"");
    up_all(&c);
    let n = route(&c, &connect_bytes(false, "c3", None, false));
    assert_eq!(c.sticky.get("c3").map(|e| e.node), n);
}

#[test]
fn username_key_and_fallbacks() {
    let c = cluster("dynsec", "", "[clusters.c.sticky]\nkey = \"username\"");
    up_all(&c);
    let a = route(&c, &connect_bytes(false, "id-1", Some("alice"), true));
    assert_eq!(c.sticky.get("alice").map(|e| e.node), a);
    assert!(c.sticky.get("id-1").is_none());
    // Another client id with the same username lands on the same node.
    assert_eq!(
        route(&c, &connect_bytes(false, "id-2", Some("alice"), true)),
        a
    );
    // No username: no stickiness.
    let before = c.sticky.len();
    route(&c, &connect_bytes(false, "id-3", None, true));
    assert_eq!(c.sticky.len(), before);

    // client_id key: an empty client id falls back to the username.
    let c = cluster("dynsec", "", "");
    up_all(&c);
    let b = route(&c, &connect_bytes(false, "", Some("bob"), true));
    assert_eq!(c.sticky.get("bob").map(|e| e.node), b);
}

#[test]
fn keyless_hash_clients_are_spread() {
    let c = cluster("dynsec", "", "");
    up_all(&c);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        seen.insert(pick_names(&c, &connect_bytes(false, "", None, false))[0].clone());
    }
    assert_eq!(seen.len(), 3);
}

#[test]
fn sticky_entry_is_rewritten_when_its_node_is_down() {
    let c = cluster("dynsec", "", "");
    up_all(&c);
    let first = route(&c, &connect_bytes(false, "k", None, true)).unwrap_or_default();
    c.set_health(&node(&c, &first), Health::Down);
    let second = route(&c, &connect_bytes(false, "k", None, true)).unwrap_or_default();
    assert_ne!(first, second);
    assert_eq!(c.sticky.get("k").map(|e| e.node), Some(second.clone()));
    // The old node comes back: the client stays where its session now is.
    c.set_health(&node(&c, &first), Health::Up);
    assert_eq!(
        route(&c, &connect_bytes(false, "k", None, true)),
        Some(second)
    );
}

#[test]
fn drain_keeps_sticky_clients_maint_takes_none() {
    let c = cluster("dynsec", "", "");
    up_all(&c);
    let home = route(&c, &connect_bytes(false, "s", None, true)).unwrap_or_default();
    let n = node(&c, &home);
    let session = n.session_token("l", &SessionScope::root());
    c.set_admin_state(&n, AdminState::Drain);
    assert!(!session.is_closed(), "drain keeps sessions");
    // A client whose entry points to the drained node still goes there.
    assert_eq!(
        route(&c, &connect_bytes(false, "s", None, true)),
        Some(home.clone())
    );
    // New clients never do.
    for i in 0..30 {
        let b = connect_bytes(false, &format!("new-{i}"), None, true);
        assert!(!pick_names(&c, &b).contains(&home));
    }
    c.set_admin_state(&n, AdminState::Maint);
    assert!(session.is_closed(), "maint closes sessions");
    let moved = route(&c, &connect_bytes(false, "s", None, true));
    assert!(moved.is_some() && moved.as_deref() != Some(home.as_str()));
    for i in 0..30 {
        let b = connect_bytes(false, &format!("other-{i}"), None, false);
        assert!(!pick_names(&c, &b).contains(&home));
    }
}

#[test]
fn sticky_expire_and_capacity_apply() {
    let c = cluster(
        "dynsec",
        "",
        "[clusters.c.sticky]\nexpire = \"30ms\"\ncapacity = 16",
    );
    up_all(&c);
    for i in 0..200 {
        route(&c, &connect_bytes(false, &format!("k{i}"), None, true));
    }
    assert!(c.sticky.len() <= 16, "capacity: {}", c.sticky.len());
    route(&c, &connect_bytes(false, "late", None, true));
    assert!(c.sticky.get("late").is_some());
    std::thread::sleep(std::time::Duration::from_millis(60));
    assert!(c.sticky.get("late").is_none(), "expired after 30 ms unused");
}

#[test]
fn queue_holds_at_most_queue_max_and_frees_places_on_drop() {
    let c = cluster("full-sync", "queue_max = 2", "");
    let a = c.enter_queue().expect("first place");
    let b = c.enter_queue().expect("second place");
    assert!(
        c.enter_queue().is_none(),
        "a third client is over queue_max"
    );
    let gauge = || c.metrics.queued.with_label_values(&["c"]).get();
    assert_eq!(gauge(), 2);
    drop(a);
    assert_eq!(gauge(), 1);
    let _c = c.enter_queue().expect("a place is free again");
    drop(b);
    assert_eq!(gauge(), 1);
    let none = cluster("full-sync", "queue_max = 0", "");
    assert!(none.enter_queue().is_none(), "queue_max = 0 holds nobody");
}

#[test]
fn held_clients_are_woken_by_health_and_admin_changes() {
    use std::future::Future;
    use std::task::{Context, Waker};
    let c = cluster("full-sync", "", "");
    let n1 = node(&c, "node1");
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    // Waiting before the change: woken by it.
    let mut w = std::pin::pin!(c.changed());
    assert!(w.as_mut().poll(&mut cx).is_pending());
    c.set_health(&n1, Health::Up);
    assert!(w.as_mut().poll(&mut cx).is_ready(), "health change wakes");
    let mut w = std::pin::pin!(c.changed());
    c.set_health(&n1, Health::Up); // no change: nobody woken
    assert!(w.as_mut().poll(&mut cx).is_pending());
    c.set_admin_state(&n1, AdminState::Drain);
    assert!(w.as_mut().poll(&mut cx).is_ready(), "admin change wakes");
    // Created, not yet polled (a client between its pick and its wait): still woken.
    let mut w = std::pin::pin!(c.changed());
    c.set_admin_state(&n1, AdminState::Ready);
    assert!(
        w.as_mut().poll(&mut cx).is_ready(),
        "a change before the first poll"
    );
}
