//! Unit tests of the peer frame codec.
use super::*;

fn upd(key: &str, node: Option<&str>, stamp: u64) -> Update {
    Update {
        key: Arc::from(key),
        node: node.map(Arc::from),
        stamp,
        origin: Arc::from("gate-a"),
        idle_ms: 42,
    }
}

fn all_frames() -> Vec<Frame> {
    vec![
        Frame::Hello {
            version: VERSION,
            name: "gate-a".into(),
            nonce: [7; 32],
        },
        Frame::Auth { mac: [9; 32] },
        Frame::Updates {
            cluster: "brokers".into(),
            updates: vec![upd("c1", Some("node1"), 10), upd("c2", None, 11)],
        },
        Frame::Updates {
            cluster: "".into(),
            updates: vec![],
        },
        Frame::SyncBegin,
        Frame::SyncEnd { entries: 123 },
        Frame::SyncRequest { scope: 0 },
        Frame::SyncRequest { scope: 1 },
        Frame::SyncDone {
            scope: 1,
            entries: 7,
        },
        Frame::Heartbeat,
        Frame::Error {
            reason: "nope ✓".into(),
        },
        Frame::Subs {
            cluster: "brokers".into(),
            clients: vec![
                (
                    "dev-1".into(),
                    1_733_000_000_000_000,
                    vec![crate::sticky::subs::Sub {
                        topic: "cmd/dev-1".into(),
                        options: 0x25,
                        properties: vec![0x0B, 7].into(),
                    }],
                ),
                ("gone".into(), 5, vec![]),
            ],
        },
        Frame::Live {
            cluster: "brokers".into(),
            ids: vec![
                ("dev-1".into(), 1_765_000_000_000_000, "127.0.0.2".into()),
                ("".into(), 0, "".into()),
            ],
        },
    ]
}

fn enc(f: &Frame) -> Vec<u8> {
    let mut v = Vec::new();
    encode(f, &mut v);
    v
}

#[test]
fn every_frame_round_trips() {
    let mut i = Interner::default();
    for f in all_frames() {
        let bytes = enc(&f);
        let (back, used) = decode(&bytes, &mut i).expect("valid").expect("complete");
        assert_eq!(back, f);
        assert_eq!(used, bytes.len());
        assert_eq!(frame_len(&bytes), Some(bytes.len()));
    }
}

#[test]
fn every_prefix_needs_more_bytes() {
    let mut i = Interner::default();
    for f in all_frames() {
        let bytes = enc(&f);
        for n in 0..bytes.len() {
            assert_eq!(decode(&bytes[..n], &mut i), Ok(None), "{f:?} cut at {n}");
        }
    }
}

#[test]
fn two_frames_back_to_back() {
    let mut i = Interner::default();
    let mut bytes = enc(&Frame::Heartbeat);
    bytes.extend(enc(&Frame::SyncBegin));
    let (a, n) = decode(&bytes, &mut i).unwrap().unwrap();
    let (b, _) = decode(&bytes[n..], &mut i).unwrap().unwrap();
    assert_eq!((a, b), (Frame::Heartbeat, Frame::SyncBegin));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let mut i = Interner::default();
    let big = ((MAX_FRAME + 1) as u32).to_be_bytes();
    assert_eq!(
        decode(&big, &mut i),
        Err(FrameError::TooLarge(MAX_FRAME + 1))
    );
    assert_eq!(decode(&[0, 0, 0, 0], &mut i), Err(FrameError::Empty));
    assert_eq!(
        decode(&[0, 0, 0, 1, 99], &mut i),
        Err(FrameError::UnknownType(99))
    );
    assert_eq!(
        decode(&[0, 0, 0, 2, 6, 0], &mut i),
        Err(FrameError::Trailing(1))
    );
    // HTTP instead of a frame: "GET " is a length of ~1.2 GB
    assert!(matches!(
        decode(b"GET / HTTP/1.1\r\n", &mut i),
        Err(FrameError::TooLarge(_))
    ));
    // an update count larger than the frame holds
    let mut f = enc(&Frame::Updates {
        cluster: "c".into(),
        updates: vec![upd("k", Some("n"), 1)],
    });
    f[4 + 1 + 3..4 + 1 + 3 + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(decode(&f, &mut i), Err(FrameError::Truncated(_))));
    // bad UTF-8 in a key
    let mut f = enc(&Frame::Updates {
        cluster: "c".into(),
        updates: vec![upd("k", None, 1)],
    });
    let key_at = 4 + 1 + 3 + 4 + 1 + 2;
    f[key_at] = 0xFF;
    assert_eq!(decode(&f, &mut i), Err(FrameError::Utf8("key")));
    // unknown update flags
    f[key_at - 3] = 0x80;
    assert_eq!(decode(&f, &mut i), Err(FrameError::Flags(0x80)));
}

#[test]
fn hello_of_another_version_or_program_is_refused_clearly() {
    let mut i = Interner::default();
    let mut f = enc(&Frame::Hello {
        version: VERSION,
        name: "gate-b".into(),
        nonce: [0; 32],
    });
    f[9..11].copy_from_slice(&7u16.to_be_bytes());
    let e = decode(&f, &mut i).unwrap_err();
    assert_eq!(e, FrameError::Version(7));
    assert!(e.to_string().contains("version 7"), "{e}");
    f[5] = b'X';
    assert_eq!(decode(&f, &mut i), Err(FrameError::BadMagic));
}

#[test]
fn large_batches_are_split_into_frames_below_the_limit() {
    let mut i = Interner::default();
    let long = "k".repeat(60_000);
    let ups: Vec<Update> = (0..40)
        .map(|n| upd(&format!("{long}{n}"), Some("node1"), n))
        .chain((0..2500).map(|n| upd(&format!("c{n}"), Some("node2"), n)))
        .collect();
    let mut out = Vec::new();
    encode_updates("brokers", &ups, &mut out);
    let mut got = Vec::new();
    let mut at = 0;
    let mut frames = 0;
    while at < out.len() {
        let (f, n) = decode(&out[at..], &mut i)
            .expect("valid")
            .expect("complete");
        assert!(n - 4 <= MAX_FRAME);
        let Frame::Updates { cluster, updates } = f else {
            panic!("not updates")
        };
        assert_eq!(cluster, "brokers");
        assert!(updates.len() <= BATCH);
        got.extend(updates);
        at += n;
        frames += 1;
    }
    assert!(frames >= 4, "{frames} frames");
    assert_eq!(got, ups);
}

#[test]
fn names_share_one_allocation() {
    let mut i = Interner::default();
    let f = enc(&Frame::Updates {
        cluster: "c".into(),
        updates: vec![upd("a", Some("node1"), 1), upd("b", Some("node1"), 2)],
    });
    let Some((Frame::Updates { updates, .. }, _)) = decode(&f, &mut i).unwrap() else {
        panic!("not updates")
    };
    let (a, b) = (
        updates[0].node.clone().unwrap(),
        updates[1].node.clone().unwrap(),
    );
    assert!(Arc::ptr_eq(&a, &b));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_valid_frames_round_trip(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut i = Interner::default();
            if let Ok(Some((f, n))) = decode(&data, &mut i) {
                let again = enc(&f);
                prop_assert_eq!(&again[..], &data[..n]);
            }
        }

        #[test]
        fn updates_round_trip(keys in proptest::collection::vec(("\\PC{0,20}", proptest::option::of("[a-z0-9]{1,8}"), any::<u64>(), any::<u64>()), 0..50)) {
            let ups: Vec<Update> = keys.iter().map(|(k, n, s, idle)| Update {
                key: Arc::from(k.as_str()),
                node: n.as_deref().map(Arc::from),
                stamp: *s,
                origin: Arc::from("o"),
                idle_ms: *idle,
            }).collect();
            let f = Frame::Updates { cluster: "c".into(), updates: ups };
            let bytes = enc(&f);
            let mut i = Interner::default();
            prop_assert_eq!(decode(&bytes, &mut i).unwrap().unwrap().0, f);
        }
    }
}

#[test]
fn unstamped_subs_frames_of_earlier_builds_read_as_stamp_zero() {
    // type 8: cluster "b", one client "k" with one subscription "t" (options 1).
    let body = [
        8, 0, 1, b'b', 0, 0, 0, 1, 0, 1, b'k', 0, 1, 0, 1, b't', 1, 0, 0,
    ];
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    let (f, _) = decode(&bytes, &mut Interner::default())
        .expect("valid")
        .expect("complete");
    let Frame::Subs { cluster, clients } = f else {
        panic!("SUBS expected, got {f:?}");
    };
    assert_eq!(cluster, "b");
    assert_eq!(clients.len(), 1);
    assert_eq!((&*clients[0].0, clients[0].1), ("k", 0));
    assert_eq!(&*clients[0].2[0].topic, "t");
}

#[test]
fn lazy_decode_reads_the_same_updates_in_place_and_checks_them_first() {
    let ups: Vec<Update> = (0..3000)
        .map(|n| {
            upd(
                &format!("c{n}"),
                if n % 7 == 0 { None } else { Some("node1") },
                n,
            )
        })
        .collect();
    let mut out = Vec::new();
    let mut w = UpdatesWriter::new("brokers", SYNC_BATCH);
    for u in &ups {
        w.push(&mut out, &u.view());
    }
    w.finish(&mut out);
    let mut i = Interner::default();
    let (f, n) = decode_lazy(&out, &mut i).expect("valid").expect("complete");
    assert_eq!(n, out.len(), "3000 small updates fit one full-sync frame");
    let Frame::Batch(b) = &f else {
        panic!("not a batch: {f:?}")
    };
    assert_eq!((b.cluster.as_str(), b.len()), ("brokers", 3000));
    assert_eq!(b.to_updates(), ups);
    // The eager decoder reads the same frame; re-encoding a batch gives the same bytes.
    let Some((Frame::Updates { updates, .. }, _)) = decode(&out, &mut i).expect("valid") else {
        panic!("not updates")
    };
    assert_eq!(updates, ups);
    assert_eq!(enc(&f), out);
    // A damaged update anywhere in the frame fails the whole frame before any is read.
    let mut bad = out.clone();
    let last_flags = bad.len() - (1 + 2 + 5 + 2 + 5 + 8 + 2 + 6 + 8);
    bad[last_flags] = 0x80;
    assert_eq!(decode_lazy(&bad, &mut i), Err(FrameError::Flags(0x80)));
    // Trailing bytes after the counted updates are refused.
    let mut short = Vec::new();
    encode_updates("c", &ups[..2], &mut short);
    short[8..12].copy_from_slice(&1u32.to_be_bytes());
    assert!(matches!(
        decode_lazy(&short, &mut i),
        Err(FrameError::Trailing(_))
    ));
}

#[test]
fn version_2_hellos_are_read_and_unknown_sync_scopes_refused() {
    let mut i = Interner::default();
    let old = Frame::Hello {
        version: MIN_VERSION,
        name: "gate-old".into(),
        nonce: [1; 32],
    };
    assert_eq!(
        decode(&enc(&old), &mut i).expect("version 2 is read"),
        Some((old.clone(), enc(&old).len()))
    );
    let mut bad = enc(&Frame::SyncRequest { scope: 1 });
    bad[5] = 2;
    assert_eq!(decode(&bad, &mut i), Err(FrameError::Scope(2)));
}
