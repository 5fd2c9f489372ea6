//! Fuzz target: the broker's first bytes through `observe_connack`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)] // each target uses one of the checks
#[path = "checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::connack(data));
