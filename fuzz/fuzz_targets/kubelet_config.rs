#![no_main]
//! A KubeletConfiguration file with kubelet flags on its first line.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nodus_kubelet::fuzzing::kubelet_config(data));
