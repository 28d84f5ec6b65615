//! netns, crate: the same named namespace through netns-rs (NetNs::new_with_env with the
//! directory as its persist dir, `run` to enter and leave, `remove`). Argument: the
//! directory.

use std::error::Error;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use netns_rs::{Env, NetNs};
use nodus_crate_compare as cc;

struct Dir(PathBuf);

impl Env for Dir {
    fn persist_dir(&self) -> PathBuf {
        self.0.clone()
    }
}

fn thread_ns_ino() -> std::io::Result<u64> {
    Ok(fs::metadata("/proc/thread-self/ns/net")?.ino())
}

fn run(dir: &str, keep: bool) -> Result<(), Box<dyn Error>> {
    let home_ino = thread_ns_ino()?;
    let ns = NetNs::new_with_env("crate", Dir(PathBuf::from(dir)))?;
    let ns_ino = fs::metadata(ns.path())?.ino();
    let inside = ns.run(|_| thread_ns_ino())??;
    if inside != ns_ino || inside == home_ino || thread_ns_ino()? != home_ino {
        return Err("enter/leave did not land in the expected namespaces".into());
    }
    if !keep {
        ns.remove()?;
    }
    Ok(())
}

fn main() {
    let (a, keep) = cc::args(1, "ns-crate <dir>");
    cc::exit_on_error("ns-crate", run(&a[0], keep));
}
