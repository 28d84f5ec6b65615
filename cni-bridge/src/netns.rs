//! Entering a network namespace on the calling thread, just long enough to open a socket.
//!
//! The plugin is a single-threaded process, so moving its only thread and moving it back
//! cannot surprise anything else. Sockets opened inside stay bound to that namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// An open network namespace.
pub struct NetNs {
    file: File,
}

impl NetNs {
    pub fn open(path: impl AsRef<Path>) -> io::Result<NetNs> {
        let file = File::open(path)?;
        Ok(NetNs { file })
    }

    /// The namespace the calling thread is in now.
    pub fn current() -> io::Result<NetNs> {
        Self::open("/proc/thread-self/ns/net")
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    fn enter(&self) -> io::Result<()> {
        // SAFETY: setns with a namespace fd we own; affects only the calling thread.
        let r = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Runs `f` with the calling thread inside this namespace, then returns to `home`.
    pub fn run<T>(&self, home: &NetNs, f: impl FnOnce() -> T) -> io::Result<T> {
        self.enter()?;
        let out = f();
        if let Err(e) = home.enter() {
            // Continuing in the wrong namespace would change the wrong network: stop here.
            eprintln!("nodus-bridge: cannot return to the host network namespace: {e}");
            std::process::abort();
        }
        Ok(out)
    }
}
