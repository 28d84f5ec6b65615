//! A process's standard streams. containerd names FIFOs (CRI and `ctr` both use them).
//!
//! - Without a terminal the output FIFOs are handed straight to the process (opened
//!   read-write, so the process never gets SIGPIPE while containerd is restarting), and
//!   stdin goes through a pipe fed by a thread that opens the FIFO when containerd does:
//!   the process sees EOF only when containerd closes its end (CloseIO).
//! - With a terminal the runtime sends the pty master over a console socket; threads copy
//!   between it and the FIFOs, and ResizePty sets its window size.

use std::fs::{File, OpenOptions};
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// The stream paths containerd gave for one process.
#[derive(Debug, Clone, Default)]
pub(crate) struct StdioPaths {
    pub(crate) stdin: String,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) terminal: bool,
}

/// The streams a runtime command gets for the process it starts.
pub(crate) struct ProcessIo {
    pub(crate) stdin: Stdio,
    pub(crate) stdout: Stdio,
    pub(crate) stderr: Stdio,
}

pub(crate) fn fifo_path(uri: &str) -> Result<&str> {
    if let Some(rest) = uri.strip_prefix("fifo://") {
        return Ok(rest);
    }
    if uri.starts_with("binary://") || uri.starts_with("file://") {
        bail!("stdio {uri:?}: only FIFO paths are supported");
    }
    Ok(uri)
}

fn thread(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = crate::thread::spawn(name, f) {
        tracing::warn!(error = %e, "spawn {name} thread");
    }
}

/// How long output waits for containerd to open its end of a FIFO.
const READER_WAIT: Duration = Duration::from_secs(5);

/// Opens an output FIFO read-write once it has a reader (containerd opens its end
/// asynchronously). Output written while nobody holds the FIFO is dropped by the kernel when
/// the last writer closes, so a fast process could otherwise lose all of it.
///
/// The probe that finds the reader stays open until the read-write open is done: the reader's
/// open(2) completes as soon as any writer appears, and a reader that then finds no writer
/// at all reads EOF at once and stops (losing everything written afterwards).
fn open_output_fifo(path: &str) -> std::io::Result<File> {
    let deadline = std::time::Instant::now() + READER_WAIT;
    let probe = loop {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => break Some(f),
            // ENXIO: no reader yet.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
            Err(_) => break None,
        }
        if std::time::Instant::now() > deadline {
            tracing::warn!(path, "no reader on the output FIFO");
            break None;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path);
    drop(probe);
    file
}

fn open_output(uri: &str) -> Result<Stdio> {
    if uri.is_empty() {
        return Ok(Stdio::null());
    }
    let path = fifo_path(uri)?;
    let file = open_output_fifo(path).with_context(|| format!("open stdio {path}"))?;
    Ok(Stdio::from(file))
}

/// A pipe whose read end the process gets, fed from the stdin FIFO by a thread.
fn stdin_pipe(uri: &str) -> Result<Stdio> {
    if uri.is_empty() {
        return Ok(Stdio::null());
    }
    let path = fifo_path(uri)?.to_string();
    // CLOEXEC: the write end must not leak into later children (the process would never
    // see EOF); the read end becomes the child's fd 0 through dup2, which clears the flag.
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("stdin pipe")?;
    thread("stdin", move || {
        // Blocks until containerd opens its end for writing.
        let Ok(mut fifo) = File::open(&path) else {
            return;
        };
        let mut sink = File::from(write);
        let _ = std::io::copy(&mut fifo, &mut sink);
    });
    Ok(Stdio::from(read))
}

impl StdioPaths {
    /// Streams for a process without a terminal.
    pub(crate) fn open_direct(&self) -> Result<ProcessIo> {
        Ok(ProcessIo {
            stdin: stdin_pipe(&self.stdin)?,
            stdout: open_output(&self.stdout)?,
            stderr: open_output(&self.stderr)?,
        })
    }
}

/// A unix socket the runtime connects to, sending the pty master.
pub(crate) struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    pub(crate) fn new() -> Result<ConsoleSocket> {
        static N: AtomicU32 = AtomicU32::new(0);
        // Bundle paths can exceed sun_path's 108 bytes: use a short one.
        let path = std::env::temp_dir().join(format!(
            "nodus-shim-pty-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).with_context(|| format!("bind {}", path.display()))?;
        Ok(ConsoleSocket { listener, path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The master the runtime sent (it has connected and sent before it exited).
    pub(crate) fn receive(&self) -> Result<OwnedFd> {
        self.listener.set_nonblocking(true)?;
        let (stream, _) = self
            .listener
            .accept()
            .context("the runtime sent no console")?;
        stream.set_nonblocking(false)?;
        let mut buf = [0u8; 256];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!(RawFd);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("receive the console")?;
        for cmsg in msg.cmsgs().context("console control message")? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the fd was just received and is owned by nobody else.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        bail!("the console message carried no file descriptor")
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Set once a copy thread has written everything out.
#[derive(Default)]
pub(crate) struct Done {
    flag: Mutex<bool>,
    cond: Condvar,
}

impl Done {
    fn set(&self) {
        *self.flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cond.notify_all();
    }

    /// Waits until set, at most `timeout`.
    pub(crate) fn wait(&self, timeout: Duration) {
        let guard = self.flag.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.cond.wait_timeout_while(guard, timeout, |done| !*done);
    }

    pub(crate) fn is_set(&self) -> bool {
        *self.flag.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Copies between the pty master and the FIFOs for the life of the process. Returns what
/// tells when the output is all out (the exit must not be reported before that, or the
/// reader stops short of the last lines).
pub(crate) fn start_console_copy(
    master: Arc<OwnedFd>,
    paths: &StdioPaths,
) -> Result<Option<Arc<Done>>> {
    if !paths.stdin.is_empty() {
        let path = fifo_path(&paths.stdin)?.to_string();
        let m = master.clone();
        thread("pty-in", move || {
            let Ok(mut fifo) = File::open(&path) else {
                return;
            };
            let mut buf = [0u8; 4096];
            loop {
                match fifo.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if nix::unistd::write(&*m, &buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    if !paths.stdout.is_empty() {
        let path = fifo_path(&paths.stdout)?.to_string();
        let m = master.clone();
        let done = Arc::new(Done::default());
        let done_copy = done.clone();
        thread("pty-out", move || {
            // The pty holds the output meanwhile.
            let Ok(mut out) = open_output_fifo(&path) else {
                done_copy.set();
                return;
            };
            let mut buf = [0u8; 4096];
            loop {
                match nix::unistd::read(&*m, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(nix::errno::Errno::EINTR) => continue,
                    // EIO once the last process holding the slave exits.
                    Err(_) => break,
                }
            }
            // Close our end of the FIFO first: the reader sees EOF.
            drop(out);
            done_copy.set();
        });
        return Ok(Some(done));
    }
    Ok(None)
}

/// Sets the window size of a pty master.
pub(crate) fn resize(master: &OwnedFd, width: u32, height: u32) -> Result<()> {
    let ws = libc::winsize {
        ws_row: u16::try_from(height).with_context(|| format!("height {height} too large"))?,
        ws_col: u16::try_from(width).with_context(|| format!("width {width} too large"))?,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct we own.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(std::io::Error::last_os_error()).context("TIOCSWINSZ");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader like containerd's: a blocking open(2), then reads at once until EOF.
    fn spawn_reader(path: PathBuf) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut f = File::open(&path).expect("open the FIFO for reading");
            let mut out = Vec::new();
            let _ = f.read_to_end(&mut out);
            out
        })
    }

    /// Nothing written through an output FIFO is lost, whenever the reader gets to its first
    /// read: the reader never sees a moment with no writer (which it would take for EOF).
    #[test]
    fn output_fifo_reader_sees_everything() {
        let dir = tempfile::tempdir().unwrap();
        for n in 0..300 {
            let path = dir.path().join(format!("out-{n}"));
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            let reader = spawn_reader(path.clone());
            let mut w = open_output_fifo(path.to_str().unwrap()).unwrap();
            w.write_all(b"line\n").unwrap();
            drop(w);
            assert_eq!(reader.join().unwrap(), b"line\n", "round {n}");
        }
    }
}
