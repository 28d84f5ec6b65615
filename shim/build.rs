//! Link `nodus-runtime` as a non-PIE executable: it starts for every container
//! operation, and a PIE of this size spends time and ~0.6 MiB of resident memory on
//! load-time relocations (.rela.dyn, .data.rel.ro) that a fixed-address link avoids.
fn main() {
    println!("cargo:rustc-link-arg-bin=nodus-runtime=-no-pie");
}
