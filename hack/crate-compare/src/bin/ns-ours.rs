//! netns, ours: nodus_cni_bridge::netns. Two modes, argument `<mode> <path>`:
//! - `enter` (what Nodus does on every CNI call): open an existing namespace by path, enter
//!   it, open a route netlink socket there, come back; `<path>` is the namespace file.
//! - `life`: a named namespace in the directory `<path>`, entered and left the same way,
//!   then deleted. Nodus itself never creates a named namespace (containerd makes the
//!   pod's, the runtime unshares the container's), so creation and deletion here are the
//!   few direct system calls a hand-written version makes (unshare on this single thread,
//!   bind-mount its ns file, setns home; umount, unlink).

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

/// Opens `path`, enters it, opens a socket there, comes back; checks the inodes.
fn enter(path: &Path) -> Result<(), Box<dyn Error>> {
    let home_ino = cc::thread_ns_ino()?;
    let home = NetNs::current()?;
    let ns = NetNs::open(path)?;
    let (_sock, inside) = ns.run(&home, cc::open_route_socket)??;
    if inside != fs::metadata(path)?.ino() || inside == home_ino || cc::thread_ns_ino()? != home_ino
    {
        return Err("enter/leave did not land in the expected namespaces".into());
    }
    Ok(())
}

fn life(dir: &str, keep: bool) -> Result<(), Box<dyn Error>> {
    let path = Path::new(dir).join("ours");
    let home = NetNs::current()?;
    create(&path, &home)?;
    enter(&path)?;
    drop(home);
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

fn run(mode: &str, path: &str, keep: bool) -> Result<(), Box<dyn Error>> {
    match mode {
        "enter" => enter(Path::new(path)),
        "life" => life(path, keep),
        m => Err(format!("unknown mode {m}").into()),
    }
}

fn main() {
    let (a, keep) = cc::args(2, "ns-ours enter|life <path>");
    match cc::repeat_count() {
        Some(n) if !keep => cc::repeat("ns-ours", n, || run(&a[0], &a[1], false)),
        _ => cc::exit_on_error("ns-ours", run(&a[0], &a[1], keep)),
    }
}
