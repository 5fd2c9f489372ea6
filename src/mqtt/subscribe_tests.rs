use super::*;

fn packet(b0: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![b0];
    put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

#[test]
fn subscribe_v311_filters_and_options() {
    let p = packet(0x82, &[0, 7, 0, 3, b'a', b'/', b'b', 1, 0, 1, b'#', 2]);
    let s = parse_subscribe(&p, false).unwrap();
    assert_eq!(s.id, 7);
    assert!(s.properties.is_empty());
    let f: Vec<_> = s.filters().collect();
    assert_eq!(
        f,
        vec![
            Filter {
                topic: "a/b",
                options: 1
            },
            Filter {
                topic: "#",
                options: 2
            }
        ]
    );
}

#[test]
fn subscribe_v5_keeps_properties_and_options() {
    // Subscription Identifier 5, User Property ("k", "v"); no local + retain handling 2.
    let props = [0x0B, 5, 0x26, 0, 1, b'k', 0, 1, b'v'];
    let mut body = vec![0, 9, props.len() as u8];
    body.extend_from_slice(&props);
    body.extend_from_slice(&[0, 1, b'x', 0b0010_0101]);
    let p = packet(0x82, &body);
    let s = parse_subscribe(&p, true).unwrap();
    assert_eq!(s.properties, &props);
    assert_eq!(s.subscription_id, Some(5));
    assert_eq!(
        s.filters().collect::<Vec<_>>(),
        vec![Filter {
            topic: "x",
            options: 0b0010_0101
        }]
    );
    // The replay encoder writes back the same packet.
    assert_eq!(encode_subscribe(9, true, &props, "x", 0b0010_0101), p);
}

#[test]
fn bad_subscribes_are_refused() {
    let cases: &[(&[u8], bool)] = &[
        (&[0x80, 0x06, 0, 1, 0, 1, b'a', 1], false), // flags not 0b0010
        (&[0x82, 0x06, 0, 0, 0, 1, b'a', 1], false), // packet id 0
        (&[0x82, 0x02, 0, 1], false),                // no filter
        (&[0x82, 0x06, 0, 1, 0, 1, b'a', 3], false), // QoS 3
        (&[0x82, 0x06, 0, 1, 0, 1, b'a', 4], false), // v3 reserved bit
        (&[0x82, 0x05, 0, 1, 0, 0, 1], false),       // empty filter
        (&[0x82, 0x06, 0, 1, 0, 5, b'a', 1], false), // length past end
        (&[0x82, 0x07, 0, 1, 0, 1, 0, 0, 1], false), // NUL in filter
        (&[0x82, 0x02, 0, 1], true),                 // v5: missing property length
        (&[0x82, 0x06, 0, 1, 9, 0, 1, b'a'], true),  // v5: property length past end
        (&[0x82, 0x09, 0, 1, 2, 0x0B, 0, 0, 1, b'a', 1], true), // sub id 0
        (&[0x82, 0x09, 0, 1, 2, 0x11, 1, 0, 1, b'a', 1], true), // property not allowed
        (&[0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0x30], true), // retain handling 3
        (&[0x82, 0x09, 0, 1], false),                // remaining length mismatch
    ];
    for (p, v5) in cases {
        assert!(parse_subscribe(p, *v5).is_err(), "{p:02x?} accepted");
    }
}

#[test]
fn unsubscribe_and_acks() {
    let p = packet(0xA2, &[0, 3, 0, 1, b'a', 0, 1, b'b']);
    let u = parse_unsubscribe(&p, false).unwrap();
    assert_eq!(u.id, 3);
    assert_eq!(u.filters().collect::<Vec<_>>(), vec!["a", "b"]);
    assert!(parse_unsubscribe(&packet(0xA2, &[0, 3]), false).is_err());
    let sa = packet(0x90, &[0, 3, 0, 1, 0x80]);
    let a = parse_suback(&sa, false).unwrap();
    assert_eq!(
        a,
        Ack {
            id: 3,
            codes: &[0, 1, 0x80]
        }
    );
    assert!(parse_suback(&packet(0x90, &[0, 3, 0x87]), false).is_err());
    assert!(parse_suback(&packet(0x90, &[0, 3, 0, 0x87]), true).is_ok());
    assert!(parse_suback(&packet(0x90, &[0, 3]), false).is_err());
    assert_eq!(
        parse_unsuback(&packet(0xB0, &[0, 4]), false).unwrap(),
        Ack { id: 4, codes: &[] }
    );
    assert!(parse_unsuback(&packet(0xB0, &[0, 4, 0]), false).is_err());
    assert_eq!(
        parse_unsuback(&packet(0xB0, &[0, 4, 0, 0x11]), true).unwrap(),
        Ack {
            id: 4,
            codes: &[0x11]
        }
    );
    assert!(parse_suback(&packet(0xB0, &[0, 4, 0]), false).is_err());
}

#[test]
fn no_input_panics() {
    // Every prefix and every one-byte change of valid packets.
    let valid = [
        packet(0x82, &[0, 7, 0, 3, b'a', b'/', b'b', 1]),
        packet(0x82, &[0, 9, 2, 0x0B, 5, 0, 1, b'x', 0x25]),
        packet(0xA2, &[0, 3, 0, 1, b'a']),
        packet(0x90, &[0, 3, 0, 1]),
    ];
    for p in &valid {
        for cut in 0..=p.len() {
            for v5 in [false, true] {
                let q = &p[..cut];
                let _ = parse_subscribe(q, v5).map(|s| s.filters().count());
                let _ = parse_unsubscribe(q, v5).map(|s| s.filters().count());
                let _ = parse_suback(q, v5);
                let _ = parse_unsuback(q, v5);
            }
        }
        for i in 0..p.len() {
            for b in [0u8, 1, 0x7F, 0x80, 0xFF] {
                let mut q = p.clone();
                q[i] = b;
                for v5 in [false, true] {
                    let _ = parse_subscribe(&q, v5).map(|s| s.filters().count());
                    let _ = parse_unsubscribe(&q, v5).map(|s| s.filters().count());
                }
            }
        }
    }
}
