//! Uniquely named network namespaces (`/run/netns/<name>`) that are deleted on drop.
//!
//! Commands run inside with `nsenter --net=...`, which changes only the network namespace
//! (`ip netns exec` would remount /sys and hide the cgroup hierarchy).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::{Error, Result};

#[derive(Debug)]
pub struct NodeNetns {
    name: String,
    path: PathBuf,
}

impl NodeNetns {
    /// Creates `nodus-<prefix>-<pid>-<n>` with its loopback up.
    pub fn create(prefix: &str) -> Result<Self> {
        let name = format!("nodus-{prefix}-{}", crate::unique_suffix());
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = NodeNetns {
            path: PathBuf::from("/run/netns").join(&name),
            name,
        };
        netns.run_checked(&["ip", "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command that will run inside this namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path.display()));
        cmd.arg("--");
        cmd.args(args);
        cmd
    }

    /// Runs `args` inside this namespace and returns what it printed, whatever its status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap_or_else(|e| Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
            stdout: Vec::new(),
            stderr: e.to_string().into_bytes(),
        })
    }

    /// Moves the calling thread into this namespace (setns affects only that thread, and the
    /// threads and processes it starts afterwards). For a test whose servers and clients all
    /// live in the node's namespace: run it on a current-thread runtime.
    pub fn enter_current_thread(&self) -> Result<()> {
        let f = std::fs::File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io(&self.path, std::io::Error::from(e)))
    }

    /// Runs `args` inside this namespace; a non-zero exit is an error.
    pub fn run_checked(&self, args: &[&str]) -> Result<String> {
        run_checked(&mut self.command(args))
    }
}

impl Drop for NodeNetns {
    fn drop(&mut self) {
        // Deleting the name drops the last reference once no process is left inside; links
        // living in it (bridge, veth host ends) go with it.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

pub(crate) fn run_checked(cmd: &mut Command) -> Result<String> {
    let output = cmd.output().map_err(|e| Error::Command {
        command: format!("{cmd:?}"),
        detail: e.to_string(),
    })?;
    if !output.status.success() {
        return Err(Error::Command {
            command: format!("{cmd:?}"),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
