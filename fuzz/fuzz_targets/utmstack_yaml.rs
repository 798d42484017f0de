//! Fuzz target: [`o365_connector::fuzzing::utmstack_yaml`] on every input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| o365_connector::fuzzing::utmstack_yaml(data));
