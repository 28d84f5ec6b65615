//! OCI hooks: run a program with the container state JSON on stdin, with a timeout.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use crate::error::{Error, Result};

/// Run `hooks` (of kind `kind`, for messages) in order; the first failure stops.
pub fn run(hooks: &[Hook], kind: &str, state: &[u8]) -> Result<()> {
    for (i, h) in hooks.iter().enumerate() {
        run_one(h, state).map_err(|e| {
            Error::Other(format!("hooks.{kind}[{i}] ({}): {e}", h.path().display()))
        })?;
    }
    Ok(())
}

fn run_one(h: &Hook, state: &[u8]) -> std::result::Result<(), String> {
    let args = h.args().clone().unwrap_or_default();
    let mut cmd = Command::new(h.path());
    if let Some(a0) = args.first() {
        cmd.arg0(a0);
    }
    cmd.args(args.iter().skip(1))
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for e in h.env().as_deref().unwrap_or(&[]) {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd.spawn().map_err(|e| format!("start: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine (EPIPE).
        let _ = stdin.write_all(state);
    }
    let deadline = h
        .timeout()
        .map(|t| Instant::now() + Duration::from_secs(t.max(1) as u64));
    // Drain stdout/stderr while waiting so a chatty hook cannot block on a full pipe.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let mut text = Vec::new();
    loop {
        let mut fds = vec![];
        if let Some(o) = &out {
            fds.push(libc::pollfd {
                fd: o.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if let Some(e) = &err {
            fds.push(libc::pollfd {
                fd: e.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if fds.is_empty() {
            break;
        }
        let wait_ms = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("timed out after {}s", h.timeout().unwrap_or(0)));
                }
                left.as_millis().min(i32::MAX as u128) as i32
            }
            None => -1,
        };
        // SAFETY: poll on pollfds we own.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        let mut i = 0;
        for slot in [&mut out as &mut dyn ReadSlot, &mut err as &mut dyn ReadSlot] {
            if !slot.present() {
                continue;
            }
            let rev = fds[i].revents;
            i += 1;
            if rev != 0 {
                match slot.read(&mut buf) {
                    Ok(0) | Err(_) => slot.close(),
                    Ok(n) => text.extend_from_slice(&buf[..n]),
                }
            }
        }
    }
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| format!("wait: {e}"))? {
            break s;
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {}s", h.timeout().unwrap_or(0)));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&text).trim()
        ))
    }
}

trait ReadSlot {
    fn present(&self) -> bool;
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    fn close(&mut self);
}

impl<R: Read> ReadSlot for Option<R> {
    fn present(&self) -> bool {
        self.is_some()
    }
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Some(r) => r.read(buf),
            None => Ok(0),
        }
    }
    fn close(&mut self) {
        *self = None;
    }
}
