//! Fuzz target: [`o365_connector::fuzzing::webhook_body`] on every input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| o365_connector::fuzzing::webhook_body(data));
