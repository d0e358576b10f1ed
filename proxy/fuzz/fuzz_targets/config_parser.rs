//! The config parser: malformed YAML must be an error, never a panic.
//! The harness and its invariants: `teeproxy_tests::fuzz::config_parser`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| teeproxy_tests::fuzz::config_parser(data));
