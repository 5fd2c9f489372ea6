//! Unit tests of the sticky table: local use, expiry, capacity and replication merges.
use super::*;

#[test]
fn record_lookup_remove() {
    let t = StickyTable::new(100, Duration::from_secs(60), "gate-a");
    assert_eq!(t.lookup("c1"), Lookup::Miss);
    t.record("c1", "node2");
    assert_eq!(t.lookup("c1"), Lookup::Hit(Arc::from("node2")));
    assert_eq!(t.get("c1").map(|e| e.node), Some("node2".to_string()));
    assert!(t.remove("c1"));
    assert_eq!(t.lookup("c1"), Lookup::Miss);
}

#[test]
fn expired_entries_are_stale_then_gone() {
    let t = StickyTable::new(100, Duration::from_millis(1), "gate-a");
    t.record("c1", "node1");
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(t.lookup("c1"), Lookup::Stale);
    assert_eq!(t.lookup("c1"), Lookup::Miss);
    t.record("c2", "node1");
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(t.sweep(), 1);
    assert!(t.is_empty());
}

#[test]
fn capacity_drops_least_recently_used() {
    let t = StickyTable::new(SHARDS, Duration::from_secs(60), "gate-a");
    for i in 0..SHARDS * 20 {
        t.record(&format!("k{i}"), "n");
    }
    assert!(t.len() <= SHARDS, "len {}", t.len());
}

#[test]
fn merge_is_last_writer_wins_with_name_tiebreak() {
    let t = StickyTable::new(100, Duration::from_secs(60), "gate-a");
    let u = |node: &str, stamp, origin: &str| Update {
        key: Arc::from("k"),
        node: Some(Arc::from(node)),
        stamp,
        origin: Arc::from(origin),
        idle_ms: 0,
    };
    assert!(t.merge(&u("n1", 10, "gate-b")));
    assert!(!t.merge(&u("n2", 9, "gate-c")));
    assert!(t.merge(&u("n3", 10, "gate-c")));
    assert!(!t.merge(&u("n4", 10, "gate-a")));
    assert_eq!(t.lookup("k"), Lookup::Hit(Arc::from("n3")));
}

#[test]
fn changes_are_published() {
    let t = StickyTable::new(100, Duration::from_secs(60), "gate-a");
    let mut rx = t.subscribe();
    t.record("k", "n1");
    let (_, u) = rx.try_recv().expect("update published");
    assert_eq!(&*u.key, "k");
    assert_eq!(u.node.as_deref(), Some("n1"));
    assert_eq!(&*u.origin, "gate-a");
}

fn upd(key: &str, node: Option<&str>, stamp: u64, origin: &str, idle_ms: u64) -> Update {
    Update {
        key: Arc::from(key),
        node: node.map(Arc::from),
        stamp,
        origin: Arc::from(origin),
        idle_ms,
    }
}

#[test]
fn deletion_leaves_a_tombstone_that_beats_older_writes() {
    let t = StickyTable::new(100, Duration::from_secs(60), "gate-a");
    let now = now_ms();
    assert!(t.merge(&upd("k", Some("n1"), now - 100, "gate-b", 0)));
    assert!(t.merge(&upd("k", None, now - 50, "gate-c", 0)));
    assert_eq!(t.lookup("k"), Lookup::Miss);
    // an older write from a peer that was cut off does not bring it back
    assert!(!t.merge(&upd("k", Some("n2"), now - 70, "gate-b", 0)));
    assert_eq!(t.lookup("k"), Lookup::Miss);
    // a newer one does
    assert!(t.merge(&upd("k", Some("n3"), now - 10, "gate-b", 0)));
    assert_eq!(t.lookup("k"), Lookup::Hit(Arc::from("n3")));
    // the tombstone travels in exports
    t.remove("k");
    let ex = t.export();
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].node, None);
    assert!(ex[0].stamp > now - 10);
}

#[test]
fn local_write_supersedes_what_was_seen_even_with_a_skewed_clock() {
    let t = StickyTable::new(100, Duration::from_secs(60), "gate-a");
    let ahead = now_ms() + 5_000;
    assert!(t.merge(&upd("k", Some("n1"), ahead, "gate-z", 0)));
    let mut rx = t.subscribe();
    t.record("k", "n2");
    let (_, u) = rx.try_recv().expect("published");
    assert!(u.stamp > ahead, "stamp {} must beat {ahead}", u.stamp);
    // a peer holding the gate-z entry accepts it
    let peer = StickyTable::new(100, Duration::from_secs(60), "gate-z");
    assert!(peer.merge(&upd("k", Some("n1"), ahead, "gate-z", 0)));
    assert!(peer.merge(&u));
    assert_eq!(peer.lookup("k"), Lookup::Hit(Arc::from("n2")));
}

#[test]
fn idle_time_travels_and_expired_updates_are_dropped() {
    let t = StickyTable::new(100, Duration::from_secs(60), "gate-a");
    let now = now_ms();
    assert!(t.merge(&upd("old", Some("n1"), now, "gate-b", 50_000)));
    let left = t.get("old").expect("entry").expires_in;
    assert!(left <= Duration::from_secs(10), "{left:?}");
    assert!(!t.merge(&upd("gone", Some("n1"), now, "gate-b", 61_000)));
    assert_eq!(t.get("gone"), None);
}

#[test]
fn a_touch_refreshes_expiry_without_changing_the_entry() {
    let t = StickyTable::new(100, Duration::from_secs(60), "gate-a");
    let now = now_ms();
    assert!(t.merge(&upd("k", Some("n1"), now, "gate-b", 50_000)));
    assert!(!t.merge(&upd("k", Some("n1"), now, "gate-b", 0)));
    let left = t.get("k").expect("entry").expires_in;
    assert!(left > Duration::from_secs(50), "{left:?}");
}

#[test]
fn lookups_are_announced_at_most_once_per_interval() {
    let t = StickyTable::new(100, Duration::from_secs(60), "gate-a");
    t.merge(&upd("k", Some("n1"), now_ms(), "gate-b", 0));
    let mut rx = t.subscribe();
    // merged just now: announced counts from the merge, nothing to say yet
    assert_eq!(t.lookup("k"), Lookup::Hit(Arc::from("n1")));
    assert!(rx.try_recv().is_err());
    let t = StickyTable::new(100, Duration::from_millis(1), "gate-a");
    let mut rx = t.subscribe();
    t.merge(&upd("k", Some("n1"), now_ms(), "gate-b", 0));
    // expire 1 ms: the touch interval is clamped to 1 s, and the entry is stale anyway
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(t.lookup("k"), Lookup::Stale);
    assert!(rx.try_recv().is_err());
}

#[test]
fn far_future_stamps_are_refused() {
    let t = StickyTable::new(100, Duration::from_secs(60), "gate-a");
    assert!(!t.merge(&upd("k", Some("n1"), u64::MAX, "gate-b", 0)));
    assert_eq!(t.lookup("k"), Lookup::Miss);
}

#[test]
fn long_keys_are_stored_as_a_digest_and_found_by_the_full_key() {
    let t = StickyTable::new(100, Duration::from_secs(60), "gate-a");
    let long = "k".repeat(60_000);
    t.record(&long, "node1");
    assert_eq!(t.lookup(&long), Lookup::Hit(Arc::from("node1")));
    let view = t.get(&long).expect("found by the full key");
    assert_eq!(view.key.len(), 71);
    assert!(view.key.starts_with("sha256:"));
    assert_eq!(stored_key(&view.key), view.key, "idempotent");
    let short = "k".repeat(MAX_STORED_KEY);
    assert_eq!(stored_key(&short), short, "short keys are kept as they are");
    // A peer (or an old snapshot) that sends the long key lands on the same entry.
    let u = Update {
        key: Arc::from(long.as_str()),
        node: Some(Arc::from("node2")),
        stamp: now_ms() + 10,
        origin: Arc::from("gate-b"),
        idle_ms: 0,
    };
    assert!(t.merge(&u));
    assert_eq!(t.len(), 1);
    assert_eq!(t.lookup(&long), Lookup::Hit(Arc::from("node2")));
    assert!(t.remove(&long));
    assert!(t.is_empty());
}

#[test]
fn merge_many_is_merge_one_by_one_and_an_export_copies_the_table() {
    let now = now_ms();
    let ups: Vec<Update> = (0..500)
        .map(|i| {
            upd(
                &format!("c{i}"),
                Some(["n1", "n2"][i % 2]),
                now - 1000 + i as u64,
                "gate-b",
                7,
            )
        })
        .chain([
            upd("c3", None, now, "gate-c", 0),
            upd("c4", Some("n9"), now - 5000, "gate-c", 0),
        ])
        .collect();
    let one = StickyTable::new(10_000, Duration::from_secs(60), "gate-a");
    let changed_one = ups.iter().filter(|u| one.merge(u)).count();
    let many = StickyTable::new(10_000, Duration::from_secs(60), "gate-a");
    let changed_many = many.merge_many(ups.iter().map(Update::view));
    assert_eq!(changed_one, changed_many);
    assert_eq!(
        changed_many, 501,
        "500 entries and one deletion; the stale write loses"
    );
    assert_eq!(many.len(), 499);
    for i in [0usize, 1, 4, 499] {
        let v = |t: &StickyTable| t.get(&format!("c{i}")).map(|e| (e.node, e.stamp, e.origin));
        assert_eq!(v(&many), v(&one), "c{i}");
    }
    assert_eq!(many.lookup("c3"), Lookup::Miss);
    assert_eq!(many.lookup("c4"), Lookup::Hit(Arc::from("n1")));
    // A table filled from an export holds the same entries.
    let copy = StickyTable::new(10_000, Duration::from_secs(60), "gate-z");
    for s in 0..SHARDS {
        copy.merge_many(many.export_shard(s).iter().map(Update::view));
    }
    // Shards differ between tables (hash keys are random), so compare per key.
    let mut a: Vec<Update> = many.export();
    let mut b: Vec<Update> = copy.export();
    a.sort_by(|x, y| x.key.cmp(&y.key));
    b.sort_by(|x, y| x.key.cmp(&y.key));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (&x.key, &x.node, x.stamp, &x.origin),
            (&y.key, &y.node, y.stamp, &y.origin)
        );
    }
}

#[test]
fn a_shard_full_of_names_drops_unused_ones_and_refuses_beyond() {
    let t = StickyTable::new(1_000_000, Duration::from_secs(60), "gate-a");
    let now = now_ms();
    // Thousands of distinct origins for one key: each write replaces the last, so
    // only one origin is in use at a time and old names are reclaimed.
    for i in 0..(store::MAX_NAMES * 3) {
        assert!(t.merge(&upd("k", Some("n1"), now + i as u64, &format!("o{i}"), 0)));
    }
    let last = format!("o{}", store::MAX_NAMES * 3 - 1);
    assert_eq!(t.get("k").map(|e| e.origin), Some(last));
    assert_eq!(t.lookup("k"), Lookup::Hit(Arc::from("n1")));
    // Names held by live entries are kept: once a shard's names are all in use, an
    // update with yet another name is not stored (and nothing else changes).
    let key_in_shard0 = |n: usize| {
        (0..)
            .map(|i| format!("x{n}-{i}"))
            .find(|k| StickyTable::shard_of(t.hash(k)) == 0)
            .unwrap_or_default()
    };
    let mut kept = 0;
    for i in 0..store::MAX_NAMES {
        kept += usize::from(t.merge(&upd(
            &key_in_shard0(i),
            Some("n1"),
            now,
            &format!("p{i}"),
            0,
        )));
    }
    assert!(kept >= store::MAX_NAMES - 3, "kept {kept}");
    let extra = key_in_shard0(store::MAX_NAMES + 1);
    assert!(!t.merge(&upd(&extra, Some("n1"), now, "one-too-many", 0)));
    assert_eq!(t.get(&extra), None);
    assert!(t.get(&key_in_shard0(0)).is_some());
}
