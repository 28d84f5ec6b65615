//! `pause`: the first process of every pod sandbox.
//!
//! It holds the pod's namespaces open, reaps children that get re-parented to it (when the
//! pod shares one PID namespace), and exits cleanly on SIGINT or SIGTERM. It links against
//! nothing but libc and is built as a static binary by `nodus-images` (see testkit/src/images.rs).

use std::os::raw::c_int;

const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;
const SIGCHLD: c_int = 17;
const WNOHANG: c_int = 1;

extern "C" {
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
    fn pause() -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn getpid() -> c_int;
    fn _exit(status: c_int) -> !;
}

extern "C" fn on_terminate(signum: c_int) {
    // Upstream's pause exits 0 on SIGINT/SIGTERM; the signal number is not reported.
    let _ = signum;
    unsafe { _exit(0) }
}

extern "C" fn on_child(_signum: c_int) {
    let mut status: c_int = 0;
    // Reap every child that has exited; WNOHANG keeps the handler from blocking.
    while unsafe { waitpid(-1, &mut status, WNOHANG) } > 0 {}
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-v" || a == "--version") {
        println!(
            "pause (nodus) {}",
            option_env!("CARGO_PKG_VERSION").unwrap_or("1.0")
        );
        return;
    }
    if unsafe { getpid() } != 1 {
        eprintln!("pause: warning: not running as PID 1, orphans of this namespace will not be reaped here");
    }
    unsafe {
        signal(SIGINT, on_terminate);
        signal(SIGTERM, on_terminate);
        signal(SIGCHLD, on_child);
    }
    loop {
        unsafe {
            pause();
        }
    }
}
