#![no_main]
//! A static pod manifest (file or http source) and what a sync derives from it.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nodus_kubelet::fuzzing::manifest(data));
