#![no_main]
//! An OCI bundle's `config.json`, parsed and validated as nodus-runtime does before it
//! creates anything.

use libfuzzer_sys::fuzz_target;
use nodus_runtime::spec;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = spec::parse_json::<oci_spec::runtime::Spec>(data, "config.json") {
        let _ = spec::validate(&s);
    }
    let _ = spec::validate_id(&String::from_utf8_lossy(data));
});
