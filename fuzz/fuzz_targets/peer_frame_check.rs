//! The check of the `peer_frame` fuzz target, shared with `tests/peers/corpus.rs` (which
//! replays the corpus under plain `cargo test`): decoding arbitrary bytes never panics, and
//! every frame that decodes re-encodes to exactly the bytes it came from.

use mqgate::peers::frame::{decode, encode, Interner};

pub fn peer_frame_check(data: &[u8]) {
    let mut interner = Interner::default();
    let mut rest = data;
    while let Ok(Some((frame, used))) = decode(rest, &mut interner) {
        let mut again = Vec::new();
        encode(&frame, &mut again);
        assert_eq!(
            &again[..],
            &rest[..used],
            "re-encoding differs for {frame:?}"
        );
        rest = &rest[used..];
    }
}
