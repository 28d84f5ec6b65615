//! `containerd-shim-nodus-v2`: see the library (`src/lib.rs`) for what it does.

fn main() -> std::process::ExitCode {
    nodus_shim::main()
}
