#![no_main]
//! Quantities, durations, staticPodURL and resolv.conf text.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nodus_kubelet::fuzzing::values(data));
