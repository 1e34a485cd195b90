//! Any sequence of frames through one balancer (`rialto::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rialto::fuzzing::run(data));
