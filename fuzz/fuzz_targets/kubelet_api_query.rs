#![no_main]
//! Query strings of the kubelet API's logs, exec, attach and port-forward.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nodus_kubelet::fuzzing::kubelet_api_query(data));
