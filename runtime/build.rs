//! Link `nodus-runtime` as a non-PIE executable: it starts for every container
//! operation, and a PIE of this size spends time and ~0.6 MiB of resident memory on
//! load-time relocations (.rela.dyn, .data.rel.ro) that a fixed-address link avoids.
//! (Not with `+crt-static`, where rustc links a static PIE that must stay one.)
fn main() {
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if !features.split(',').any(|f| f == "crt-static") {
        println!("cargo:rustc-link-arg-bin=nodus-runtime=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
