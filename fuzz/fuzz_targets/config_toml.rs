//! Fuzz target: [`o365_connector::fuzzing::config_toml`] on every input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| o365_connector::fuzzing::config_toml(data));
