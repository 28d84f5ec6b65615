#![no_main]
//! A container log in the CRI format, parsed and rendered.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nodus_kubelet::fuzzing::cri_log(data));
