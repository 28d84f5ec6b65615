//! Compiles `proto/api.proto` (CRI runtime.v1) into Rust with tonic/prost,
//! generating both clients and servers.

use std::env;
use std::path::{Path, PathBuf};

const PROTO: &str = "proto/api.proto";

fn main() {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-env-changed=PROTOC");

    if env::var_os("PROTOC").is_none() && find_in_path("protoc").is_none() {
        panic!(
            "protoc (the Protocol Buffers compiler) was not found: PROTOC is unset and no \
             `protoc` is on PATH. Install it with `hack/install-deps.sh` (Debian package \
             protobuf-compiler, /usr/bin/protoc) or set PROTOC to its path."
        );
    }

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Server traits get default methods answering UNIMPLEMENTED, so a
        // partial CRI server (e.g. a test fake) implements only what it needs.
        .generate_default_stubs(true)
        // Registry secrets must not end up in logs: lib.rs has a redacting Debug.
        .skip_debug([".runtime.v1.AuthConfig"])
        .compile_protos(&[PROTO], &["proto"])
        .unwrap_or_else(|e| panic!("compiling {PROTO} failed: {e}"));
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
