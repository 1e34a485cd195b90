//! Any sequence of frames through one balancer (`rialto_fixtures::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rialto_fixtures::fuzzing::run(data));
