//! What the fuzz targets assert, shared with `tests/fuzz_corpus.rs` so that plain
//! `cargo test` replays the corpus through exactly the same checks.
//!
//! Beyond "no panic", each check asserts the parsers agree with themselves: the
//! framing decision is the same for every prefix once made, `parse_connect` sees
//! what `frame_len` framed, and an accepted CONNECT re-encodes to the same view.

use mqgate::mqtt::{
    encode_connect_v311, frame_len, observe_connack, parse_connect, ConnectError, Parse,
    ProtocolVersion,
};

/// The client's first bytes, as the connection task sees them.
pub fn connect(data: &[u8]) {
    let limits = [usize::MAX, 65_536, data.len(), 0];
    for max in limits {
        let framed = frame_len(data, max);
        match framed {
            Err(ConnectError::TooLarge(len)) => assert!(len > max),
            Ok(Parse::Complete(len)) => assert!(len <= max),
            Ok(Parse::Incomplete) => assert!(data.len() < 5),
            Err(ConnectError::UnsupportedProtocol(_)) => panic!("frame_len read past the header"),
            Err(ConnectError::NotConnect | ConnectError::Malformed(_)) => {}
        }
    }

    // Framing is decided once, from the header, and never changes as bytes arrive.
    let framed = frame_len(data, usize::MAX);
    let mut decided = None;
    for n in 0..=data.len() {
        let now = frame_len(&data[..n], usize::MAX);
        match (&decided, &now) {
            (None, Ok(Parse::Incomplete)) => {}
            (None, _) => decided = Some(now),
            (Some(before), _) => assert_eq!(before, &now, "framing changed at {n} bytes"),
        }
        if n >= 5 {
            break;
        }
    }
    if let Some(decided) = decided {
        assert_eq!(decided, framed);
    }

    let parsed = parse_connect(data);
    match framed {
        Err(ConnectError::NotConnect) => assert_eq!(parsed, Err(ConnectError::NotConnect)),
        Err(ConnectError::Malformed(_)) => {
            assert!(matches!(parsed, Err(ConnectError::Malformed(_))))
        }
        Err(e) => panic!("frame_len(usize::MAX) = {e:?}"),
        Ok(Parse::Incomplete) => {
            assert_eq!(parsed, Err(ConnectError::Malformed("length past end")))
        }
        Ok(Parse::Complete(len)) if len > data.len() => {
            assert_eq!(parsed, Err(ConnectError::Malformed("length past end")))
        }
        Ok(Parse::Complete(len)) => {
            // Bytes after the framed packet are not looked at.
            assert_eq!(parse_connect(&data[..len]), parsed);
            if len > 0 {
                assert_eq!(
                    parse_connect(&data[..len - 1]),
                    Err(ConnectError::Malformed("length past end"))
                );
            }
        }
    }

    let Ok(c) = parsed else { return };
    let _ = (c.keeps_session(), c.version.as_str(), format!("{c:?}"));
    if let Some(w) = &c.will {
        assert!(w.qos <= 2);
    }
    assert!(c.session_expiry.is_none() || c.version.is_v5());
    if !c.version.is_v5() {
        assert!(c.password.is_none() || c.username.is_some());
    }
    // What mqgate understood survives its own encoder (where that encoder applies).
    if c.version == ProtocolVersion::V3_1_1 && c.clean_session && c.will.is_none() {
        let again = encode_connect_v311(c.client_id, c.username, c.password, c.keep_alive);
        assert_eq!(parse_connect(&again), Ok(c));
    }
}

/// The broker's first bytes, as the relay sees them.
pub fn connack(data: &[u8]) {
    let observed = observe_connack(data);
    if let Ok(Parse::Complete(info)) = observed {
        assert_eq!(data.first(), Some(&0x20));
        assert!(info.len >= 4 && info.len <= 5 + 268_435_455);
    }
    // The answer is decided once, and never changes as more bytes arrive.
    let mut decided = None;
    for n in 0..=data.len() {
        let now = observe_connack(&data[..n]);
        match (&decided, &now) {
            (None, Ok(Parse::Incomplete)) => {}
            (None, _) => decided = Some(now),
            (Some(before), _) => assert_eq!(before, &now, "answer changed at {n} bytes"),
        }
        if n >= 7 {
            break;
        }
    }
    match decided {
        Some(decided) => assert_eq!(decided, observed),
        None => assert_eq!(observed, Ok(Parse::Incomplete)),
    }
}

/// A relayed stream through the packet-aware relay's scanner and the SUBSCRIBE,
/// UNSUBSCRIBE, SUBACK and UNSUBACK views. Byte 0: bit 0 = MQTT 5, the other bits
/// where the stream is split in two reads; the stream is the rest.
pub fn subscribe(data: &[u8]) {
    use mqgate::mqtt::scanner::{Scanned, Scanner};
    use mqgate::mqtt::subscribe::{
        encode_subscribe, parse_suback, parse_subscribe, parse_unsuback, parse_unsubscribe, SUBACK,
        SUBSCRIBE, UNSUBACK, UNSUBSCRIBE,
    };
    let Some((&b0, stream)) = data.split_first() else {
        return;
    };
    let v5 = b0 & 1 == 1;
    let split = usize::from(b0 >> 1).min(stream.len());
    let types = [SUBSCRIBE, UNSUBSCRIBE, SUBACK, UNSUBACK];
    let cap = 256;
    // Reported bytes, in order, and the packets reported whole.
    let run = |parts: &[&[u8]]| {
        let mut s = Scanner::new(&types, cap);
        let mut seen = Vec::new();
        let mut whole = Vec::new();
        for p in parts {
            s.feed(p, |ev| match ev {
                Scanned::Pass(b) => seen.extend_from_slice(b),
                Scanned::Whole(b) => {
                    assert!(b.len() <= cap);
                    assert!(types.contains(&(b[0] >> 4)));
                    seen.extend_from_slice(b);
                    whole.push(b.to_vec());
                }
                Scanned::Oversized { len, .. } => assert!(len > cap),
                Scanned::Lost => {}
            });
        }
        // Nothing is lost or invented: reported + held = the stream.
        seen.extend_from_slice(s.held());
        assert_eq!(seen, stream);
        assert!(s.held().len() <= cap.max(5));
        whole
    };
    let one = run(&[stream]);
    let two = run(&[&stream[..split], &stream[split..]]);
    assert_eq!(one, two, "the split changed what was reported");
    for p in one.iter().map(Vec::as_slice).chain(std::iter::once(stream)) {
        if let Ok(s) = parse_subscribe(p, v5) {
            let filters: Vec<_> = s.filters().collect();
            assert!(!filters.is_empty());
            for f in filters {
                // The replay encoder's packet parses back to the same subscription.
                let again = encode_subscribe(0xFFFF, v5, s.properties, f.topic, f.options);
                let r = parse_subscribe(&again, v5).expect("replayed SUBSCRIBE parses");
                assert_eq!(r.filters().collect::<Vec<_>>(), vec![f]);
                assert_eq!(r.properties, s.properties);
            }
        }
        if let Ok(u) = parse_unsubscribe(p, v5) {
            assert!(u.filters().count() > 0);
        }
        let _ = parse_suback(p, v5);
        let _ = parse_unsuback(p, v5);
    }
}
