//! Fuzz target: arbitrary bytes from a peer through the peer frame decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "peer_frame_check.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::peer_frame_check(data));
