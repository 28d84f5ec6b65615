//! netns, ours: a named network namespace in a private directory, entered and left with
//! nodus_cni_bridge::netns (open, `run` = setns there and back), then deleted.
//!
//! Nodus itself never creates a named namespace (containerd makes the pod's, the runtime
//! unshares the container's), so creation and deletion here are the few direct system calls
//! a hand-written version makes (unshare on this single thread, bind-mount its ns file,
//! setns home; umount, unlink). Argument: the directory.

use std::error::Error;
use std::ffi::CString;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nodus_cni_bridge::netns::NetNs;
use nodus_crate_compare as cc;

fn check(r: libc::c_int, what: &str) -> Result<(), Box<dyn Error>> {
    if r == 0 {
        Ok(())
    } else {
        Err(format!("{what}: {}", std::io::Error::last_os_error()).into())
    }
}

fn thread_ns_ino() -> std::io::Result<u64> {
    Ok(fs::metadata("/proc/thread-self/ns/net")?.ino())
}

fn create(path: &Path, home: &NetNs) -> Result<(), Box<dyn Error>> {
    File::create(path)?;
    let target = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: plain system calls on this (the only) thread, with valid C strings.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNET), "unshare")?;
        let bound = check(
            libc::mount(
                c"/proc/thread-self/ns/net".as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ),
            "bind-mount the namespace",
        );
        if libc::setns(home.fd(), libc::CLONE_NEWNET) != 0 {
            eprintln!("ns-ours: cannot return to the original namespace");
            std::process::abort();
        }
        bound
    }
}

fn run(dir: &str, keep: bool) -> Result<(), Box<dyn Error>> {
    let path = Path::new(dir).join("ours");
    let home = NetNs::current()?;
    let home_ino = thread_ns_ino()?;
    create(&path, &home)?;

    let ns = NetNs::open(&path)?;
    let ns_ino = ns_file_ino(&path)?;
    let inside = ns.run(&home, thread_ns_ino)??;
    if inside != ns_ino || inside == home_ino || thread_ns_ino()? != home_ino {
        return Err("enter/leave did not land in the expected namespaces".into());
    }
    drop(ns);
    if !keep {
        let target = CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: a valid C string.
        check(
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) },
            "umount",
        )?;
        fs::remove_file(&path)?;
    }
    Ok(())
}

fn ns_file_ino(p: &Path) -> std::io::Result<u64> {
    Ok(fs::metadata(p)?.ino())
}

fn main() {
    let (a, keep) = cc::args(1, "ns-ours <dir>");
    cc::exit_on_error("ns-ours", run(&a[0], keep));
}
