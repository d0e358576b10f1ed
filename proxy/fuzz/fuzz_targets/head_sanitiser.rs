//! The HTTP/1 request-head sanitiser (framing tracker), request validation and header rewriting.
//! The harness and its invariants: `teeproxy_tests::fuzz::head_sanitiser`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| teeproxy_tests::fuzz::head_sanitiser(data));
