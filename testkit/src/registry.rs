//! A private image registry for pull tests: Debian's `docker-registry` on an address of the
//! calling thread's network namespace (a test node's loopback), optionally serving TLS and
//! asking for htpasswd credentials. Dropping it ends the process (by PID) and removes its
//! storage.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use crate::{Error, Result};

/// What a [`Registry`] serves with.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// `host:port` to listen on.
    pub addr: String,
    /// PEM certificate and key: serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// (user, password): every request must authenticate (htpasswd, bcrypt).
    pub auth: Option<(String, String)>,
}

pub struct Registry {
    dir: tempfile::TempDir,
    child: Option<Child>,
    options: RegistryOptions,
}

fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| Error::Command {
        command: shown.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: shown,
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Registry {
    /// Starts the registry and waits until it accepts connections.
    pub fn start(options: RegistryOptions) -> Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("nodus-registry-")
            .tempdir()
            .map_err(|e| Error::io(&std::env::temp_dir(), e))?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {}\n  secret: nodus-test\n",
            dir.path().join("storage").display(),
            options.addr
        );
        if let Some((cert, key)) = &options.tls {
            config += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
        }
        if let Some((user, password)) = &options.auth {
            let htpasswd = dir.path().join("htpasswd");
            let entry = run(Command::new("htpasswd").args(["-Bbn", user, password]))?;
            std::fs::write(&htpasswd, entry).map_err(|e| Error::io(&htpasswd, e))?;
            config += &format!(
                "auth:\n  htpasswd:\n    realm: nodus-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).map_err(|e| Error::io(&config_path, e))?;
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
        let err = log.try_clone().map_err(|e| Error::io(&log_path, e))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::Command {
                command: "docker-registry serve".into(),
                detail: e.to_string(),
            })?;
        let registry = Registry {
            dir,
            child: Some(child),
            options,
        };
        let addr = registry.options.addr.clone();
        crate::try_wait_until(
            Duration::from_secs(20),
            &format!("docker-registry on {addr}"),
            || TcpStream::connect(&addr).is_ok(),
        )
        .map_err(|_| Error::Timeout {
            what: format!("docker-registry on {addr} (log: {})", registry.log()),
            seconds: 20,
        })?;
        Ok(registry)
    }

    pub fn addr(&self) -> &str {
        &self.options.addr
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes image `source` of containerd (socket `socket`, namespace `k8s.io`) as
    /// `<addr>/<name>`, trusting `ca` for TLS; the pushed tag is then removed from
    /// containerd, so that a pod's pull must go to the registry.
    pub fn push(
        &self,
        socket: &Path,
        source: &str,
        name: &str,
        ca: Option<&Path>,
    ) -> Result<String> {
        let target = format!("{}/{name}", self.options.addr);
        let ctr = || {
            let mut c = Command::new("ctr");
            c.arg("--address")
                .arg(socket)
                .args(["--namespace", "k8s.io"]);
            c
        };
        run(ctr().args(["images", "tag", "--force", source, &target]))?;
        let mut push = ctr();
        push.args(["images", "push"]);
        match (&self.options.tls, ca) {
            (None, _) => {
                push.arg("--plain-http");
            }
            (Some(_), Some(ca)) => {
                push.arg("--tlscacert").arg(ca);
            }
            (Some(_), None) => {}
        }
        if let Some((user, password)) = &self.options.auth {
            push.arg("--user").arg(format!("{user}:{password}"));
        }
        run(push.arg(&target))?;
        run(ctr().args(["images", "rm", &target]))?;
        Ok(target)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
