//! Messages between the runtime and the container's init over a SOCK_SEQPACKET pair.
//!
//! One message per packet: a tag byte and a payload. The init reports progress and
//! errors; the runtime answers after it has done its part (cgroup, hooks).

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::error::{Context, Result};

/// Runtime -> init: you are in your cgroup; payload is the OCI state JSON for hooks.
pub const GO: u8 = b'g';
/// Init -> runtime: run the prestart/createRuntime hooks now.
pub const HOOKS: u8 = b'h';
/// Runtime -> init: hooks done.
pub const HOOKS_DONE: u8 = b'd';
/// Init -> runtime: set up, about to block on the exec FIFO.
pub const READY: u8 = b'r';
/// Init -> runtime: failed; payload is the message.
pub const ERROR: u8 = b'e';

/// A connected pair (parent end, child end), both close-on-exec.
pub fn pair() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .ctx(|| "socketpair".into())
}

/// Send one message.
pub fn send(fd: &OwnedFd, tag: u8, payload: &[u8]) -> Result<()> {
    let mut buf = Vec::with_capacity(payload.len() + 1);
    buf.push(tag);
    buf.extend_from_slice(payload);
    // SAFETY: send on a valid fd and buffer.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "sync send".into());
    }
    Ok(())
}

/// Receive one message; `None` when the other end closed.
pub fn recv(fd: &OwnedFd) -> Result<Option<(u8, Vec<u8>)>> {
    loop {
        // Size the buffer to the packet (MSG_PEEK|MSG_TRUNC returns its full length):
        // a big fixed buffer would cost resident memory in every create.
        // SAFETY: a zero-length peek reads nothing into the null buffer.
        let len = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_PEEK | libc::MSG_TRUNC,
            )
        };
        if len < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).ctx(|| "sync recv".into());
        }
        if len == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; len as usize];
        // SAFETY: recv into a buffer we own of the given length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).ctx(|| "sync recv".into());
        }
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n as usize);
        let tag = buf.remove(0);
        return Ok(Some((tag, buf)));
    }
}
