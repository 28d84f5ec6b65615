#![no_main]
//! The shim's task API: a request as containerd sends it (first byte: the method; the rest:
//! its protobuf payload), decoded and checked as the ttrpc handlers do before acting.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nodus_shim::fuzzing::task_request(data));
