//! Fuzz target: a client's first bytes through the PROXY v1/v2 header parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "proxy_checks.rs"]
mod proxy_checks;

fuzz_target!(|data: &[u8]| proxy_checks::proxy_header(data));
