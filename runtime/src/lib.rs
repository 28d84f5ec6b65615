//! nodus-runtime: an OCI runtime (runtime-spec 1.0.2+) with runc's command line.
//!
//! The library is synchronous and forks/clones: it must run in a single-threaded
//! process (the `nodus-runtime` binary). Layout:
//! - [`container`]: the operations (create, start, kill, delete, exec, ...) over a
//!   state directory;
//! - [`init`]: the container's init, from clone to exec;
//! - [`spec`]: loading and validating config.json;
//! - [`namespaces`], [`rootfs`], [`process`], [`hooks`], [`seccomp`]: the pieces of a
//!   container;
//! - [`cgroups`]: v1 and v2 cgroup managers;
//! - [`logging`]: runc-style log lines for containerd's runc shim.

pub mod cgroups;
pub mod cli;
pub mod container;
pub mod error;
pub mod hooks;
pub mod init;
pub mod logging;
mod mountapi;
pub mod namespaces;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod sync;
pub mod userns;
pub mod util;

pub use container::{CreateOpts, ExecOpts, OciState, Runtime, Status};
pub use error::{Error, Result};
