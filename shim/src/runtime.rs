//! Running the `nodus-runtime` binary (runc-compatible CLI).
//!
//! In the serving shim every child is reaped by the SIGCHLD thread, so a command's exit
//! status comes back through [`ChildWaiter`] rather than `std::process::Child::wait`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Where the runtime keeps container state: one root per containerd namespace.
const STATE_ROOT: &str = "/run/nodus-shim";
const BINARY: &str = "nodus-runtime";

/// Waits for the exit status of a child this process spawned.
pub(crate) trait ChildWaiter {
    fn wait_child(&self, pid: i32) -> i32;
}

/// The runtime binary and its state root.
#[derive(Debug, Clone)]
pub(crate) struct Runtime {
    binary: PathBuf,
    root: PathBuf,
}

/// How to wire a command's standard streams.
#[derive(Default)]
pub(crate) struct Io {
    pub(crate) stdin: Option<Stdio>,
    /// `None`: captured and returned.
    pub(crate) stdout: Option<Stdio>,
    /// `None`: captured (and used in the error message).
    pub(crate) stderr: Option<Stdio>,
    /// Written to a piped stdin (when `stdin` is `None`).
    pub(crate) input: Option<Vec<u8>>,
}

impl Runtime {
    /// The binary next to our own executable, else the first in PATH.
    pub(crate) fn locate(namespace: &str) -> Result<Runtime> {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join(BINARY)))
            .filter(|p| p.is_file());
        let binary = match beside {
            Some(p) => p,
            None => std::env::var_os("PATH")
                .and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join(BINARY))
                        .find(|p| p.is_file())
                })
                .with_context(|| format!("{BINARY} found neither beside the shim nor in PATH"))?,
        };
        let ns = if namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        if ns.contains('/') || ns == ".." {
            bail!("namespace {ns:?} is not a valid directory name");
        }
        Ok(Runtime {
            binary,
            root: Path::new(STATE_ROOT).join(ns),
        })
    }

    /// Whether the runtime still has state for container `id` (containerd's cleanup of a
    /// shim it believes dead runs `delete`, which removes it from under a live shim).
    pub(crate) fn has_state(&self, id: &str) -> bool {
        self.root.join(id).exists()
    }

    fn command(&self, log: Option<&Path>, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        if let Some(log) = log {
            cmd.arg("--log").arg(log).args(["--log-format", "json"]);
        }
        cmd.args(args);
        cmd
    }

    /// Runs a command in a process that does not reap children itself (the `delete` action).
    pub(crate) fn run_plain(&self, args: &[&str]) -> Result<Vec<u8>> {
        let out = self
            .command(None, args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {}", self.binary.display()))?;
        if !out.status.success() {
            bail!(
                "{BINARY} {}: {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    }

    /// Runs a command, its exit collected by `waiter`; the runtime's JSON log (`log`) gives
    /// the error message when it fails. Returns the captured stdout.
    pub(crate) fn run(
        &self,
        waiter: &dyn ChildWaiter,
        log: Option<&Path>,
        args: &[&str],
        io: Io,
    ) -> Result<Vec<u8>> {
        let mut cmd = self.command(log, args);
        let pipe_stdin = io.stdin.is_none() && io.input.is_some();
        cmd.stdin(match io.stdin {
            Some(s) => s,
            None if pipe_stdin => Stdio::piped(),
            None => Stdio::null(),
        });
        let capture_out = io.stdout.is_none();
        let capture_err = io.stderr.is_none();
        cmd.stdout(io.stdout.unwrap_or_else(Stdio::piped));
        cmd.stderr(io.stderr.unwrap_or_else(Stdio::piped));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", self.binary.display()))?;
        let pid = child.id() as i32;
        if let (Some(mut stdin), Some(input)) = (child.stdin.take(), io.input) {
            let _ = stdin.write_all(&input);
        }
        let mut stdout = Vec::new();
        if capture_out {
            if let Some(mut out) = child.stdout.take() {
                let _ = out.read_to_end(&mut stdout);
            }
        }
        let mut stderr = Vec::new();
        if capture_err {
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_end(&mut stderr);
            }
        }
        let status = waiter.wait_child(pid);
        if status != 0 {
            let mut detail = log.map(last_log_error).unwrap_or_default();
            if detail.is_empty() {
                detail = String::from_utf8_lossy(&stderr).trim().to_string();
            }
            bail!("{BINARY} {} exited with {status}: {detail}", args.join(" "));
        }
        Ok(stdout)
    }
}

/// The runtime's JSON log for a container, under its bundle.
pub(crate) fn log_path(bundle: &Path) -> PathBuf {
    bundle.join("runtime.log.json")
}

/// The message of the last error line of a JSON runtime log (runc's format: one object per
/// line with `level` and `msg`).
pub(crate) fn last_log_error(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            matches!(
                v.get("level").and_then(|l| l.as_str()),
                Some("error" | "fatal")
            )
        })
        .and_then(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| text.lines().last().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.json");
        std::fs::write(
            &log,
            "{\"level\":\"error\",\"msg\":\"first\"}\n{\"level\":\"info\",\"msg\":\"x\"}\n{\"level\":\"error\",\"msg\":\"second\"}\n{\"level\":\"debug\",\"msg\":\"y\"}\n",
        )
        .unwrap();
        assert_eq!(last_log_error(&log), "second");
        assert_eq!(last_log_error(&dir.path().join("missing")), "");
    }
}
