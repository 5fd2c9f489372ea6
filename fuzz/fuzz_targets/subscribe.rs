//! Fuzz target: a relayed stream through the packet scanner and the SUBSCRIBE /
//! UNSUBSCRIBE / SUBACK / UNSUBACK views (packet-aware relay).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)] // each target uses one of the checks
#[path = "checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::subscribe(data));
