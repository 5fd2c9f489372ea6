//! Fuzz target: a WebSocket client's bytes through the upgrade request parser, the
//! frame header parser and the de-framing of the stream adapter.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "ws_checks.rs"]
mod ws_checks;

fuzz_target!(|data: &[u8]| ws_checks::websocket(data));
