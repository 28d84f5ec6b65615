//! netns, crate: netns-rs doing what ns-ours does. Argument `<mode> <path>`:
//! - `enter`: `get_from_path`, `run` (which opens the thread's current namespace, compares
//!   it with the target, setns there and back) around the same socket open;
//! - `life`: `NetNs::new_with_env` with the directory as its persist dir (netns-rs first
//!   makes that directory a shared bind mount of itself, then unshares on a new thread and
//!   bind-mounts that thread's namespace), the same enter, `remove` (unmount and unlink).
//!   The directory's own bind mount stays: the script unmounts it.

use std::error::Error;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use netns_rs::{Env, NetNs};
use nodus_crate_compare as cc;

struct Dir(PathBuf);

impl Env for Dir {
    fn persist_dir(&self) -> PathBuf {
        self.0.clone()
    }
}

fn check(path: &Path, home_ino: u64, inside: u64) -> Result<(), Box<dyn Error>> {
    if inside != fs::metadata(path)?.ino() || inside == home_ino || cc::thread_ns_ino()? != home_ino
    {
        return Err("enter/leave did not land in the expected namespaces".into());
    }
    Ok(())
}

fn enter(path: &Path) -> Result<(), Box<dyn Error>> {
    let home_ino = cc::thread_ns_ino()?;
    let ns = netns_rs::get_from_path(path)?;
    let (_sock, inside) = ns.run(|_| cc::open_route_socket())??;
    check(path, home_ino, inside)
}

fn life(dir: &str, keep: bool) -> Result<(), Box<dyn Error>> {
    let home_ino = cc::thread_ns_ino()?;
    let ns = NetNs::new_with_env("crate", Dir(PathBuf::from(dir)))?;
    let (_sock, inside) = ns.run(|_| cc::open_route_socket())??;
    check(ns.path(), home_ino, inside)?;
    if !keep {
        ns.remove()?;
    }
    Ok(())
}

fn run(mode: &str, path: &str, keep: bool) -> Result<(), Box<dyn Error>> {
    match mode {
        "enter" => enter(Path::new(path)),
        "life" => life(path, keep),
        m => Err(format!("unknown mode {m}").into()),
    }
}

fn main() {
    let (a, keep) = cc::args(2, "ns-crate enter|life <path>");
    match cc::repeat_count() {
        Some(n) if !keep => cc::repeat("ns-crate", n, || run(&a[0], &a[1], false)),
        _ => cc::exit_on_error("ns-crate", run(&a[0], &a[1], keep)),
    }
}
