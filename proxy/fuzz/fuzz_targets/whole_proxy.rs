//! Raw client bytes through the whole proxy, with recording upstreams.
//! The harness and its invariants: `teeproxy_tests::fuzz::whole_proxy`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| teeproxy_tests::fuzz::whole_proxy(data));
