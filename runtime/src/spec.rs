//! Loading and validating an OCI bundle's `config.json`.
//!
//! Everything that can be checked before the container is created is checked here, so
//! a bad config fails with an error naming the field and leaves nothing behind.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// A bundle: its directory, parsed config and absolute rootfs path.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory (absolute).
    pub dir: PathBuf,
    /// The parsed config.json.
    pub spec: Spec,
    /// `root.path` resolved against the bundle (absolute, canonical).
    pub rootfs: PathBuf,
}

/// Parse JSON into `T`, naming the JSON path of the field at fault.
pub fn parse_json<T: DeserializeOwned>(data: &[u8], what: &str) -> Result<T> {
    // Fast path without path tracking (it doubles the deserializer code that runs, and
    // so the memory this short-lived process touches); redo with it only on error.
    if let Ok(v) = serde_json::from_slice(data) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(data);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            what.to_string()
        } else {
            path
        };
        Error::config(field, format!("{} (in {what})", e.inner()))
    })
}

/// Check a container id (runc's rule: `^[\w+\-.]+$`, not `.`/`..`).
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

/// Load and validate `<bundle>/config.json`.
pub fn load_bundle(bundle: &Path) -> Result<Bundle> {
    let dir = fs::canonicalize(bundle)
        .map_err(|e| Error::config("bundle", format!("{}: {e}", bundle.display())))?;
    let cfg = dir.join("config.json");
    let data = fs::read(&cfg)
        .map_err(|e| Error::config("config.json", format!("{}: {e}", cfg.display())))?;
    let spec: Spec = parse_json(&data, "config.json")?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::config("root", "missing (root.path is required)"))?;
    let rp = root.path();
    if rp.as_os_str().is_empty() {
        return Err(Error::config("root.path", "empty"));
    }
    let joined = if rp.is_absolute() {
        rp.clone()
    } else {
        dir.join(rp)
    };
    let rootfs = fs::canonicalize(&joined)
        .map_err(|e| Error::config("root.path", format!("{}: {e}", joined.display())))?;
    if !rootfs.is_dir() {
        return Err(Error::config(
            "root.path",
            format!("{} is not a directory", rootfs.display()),
        ));
    }
    validate(&spec)?;
    Ok(Bundle { dir, spec, rootfs })
}

/// Validate a process (config.json's or exec's).
pub fn validate_process(p: &Process, field: &str) -> Result<()> {
    let args = p.args().as_deref().unwrap_or(&[]);
    if args.is_empty() || args[0].is_empty() {
        return Err(Error::config(
            format!("{field}.args"),
            "must name a program",
        ));
    }
    if !p.cwd().is_absolute() {
        return Err(Error::config(
            format!("{field}.cwd"),
            format!("{:?} is not an absolute path", p.cwd()),
        ));
    }
    for (i, e) in p.env().as_deref().unwrap_or(&[]).iter().enumerate() {
        if !e.contains('=') {
            return Err(Error::config(
                format!("{field}.env[{i}]"),
                format!("{e:?} is not KEY=VALUE"),
            ));
        }
    }
    for (i, r) in p.rlimits().as_deref().unwrap_or(&[]).iter().enumerate() {
        if r.soft() > r.hard() {
            return Err(Error::config(
                format!("{field}.rlimits[{i}]"),
                format!("soft {} exceeds hard {}", r.soft(), r.hard()),
            ));
        }
    }
    if p.apparmor_profile()
        .as_deref()
        .is_some_and(|a| !a.is_empty())
    {
        tracing::warn!("{field}.apparmorProfile: AppArmor is not supported here, ignored");
    }
    Ok(())
}

/// Validate the parts of a spec that do not need the host.
pub fn validate(spec: &Spec) -> Result<()> {
    if !spec.version().starts_with("1.") {
        return Err(Error::config(
            "ociVersion",
            format!(
                "{:?} is not a supported runtime-spec version (1.x)",
                spec.version()
            ),
        ));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::config("process", "missing"))?;
    validate_process(process, "process")?;
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| Error::config("linux", "missing"))?;

    let mut seen = HashSet::new();
    let mut has = HashSet::new();
    for (i, ns) in linux
        .namespaces()
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let f = format!("linux.namespaces[{i}]");
        if !seen.insert(ns.typ()) {
            return Err(Error::config(
                f,
                format!("duplicate namespace {}", ns.typ()),
            ));
        }
        match ns.typ() {
            LinuxNamespaceType::Time => {
                return Err(Error::config(
                    format!("{f}.type"),
                    format!("{} namespaces are not supported", ns.typ()),
                ))
            }
            t => {
                has.insert(t);
            }
        }
        if let Some(p) = ns.path() {
            if !p.is_absolute() || !p.exists() {
                return Err(Error::config(
                    format!("{f}.path"),
                    format!("{} does not exist", p.display()),
                ));
            }
        }
    }
    if !has.contains(&LinuxNamespaceType::Mount) {
        // The container will share the runtime's mount namespace (runc accepts that):
        // refuse, field by field, what would change mounts outside the rootfs there.
        let linux_paths = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|v| !v.is_empty());
        let refused = [
            // runc refuses these two the same way.
            ("linux.maskedPaths", linux_paths(linux.masked_paths())),
            ("linux.readonlyPaths", linux_paths(linux.readonly_paths())),
            // Would set the propagation of the host's mounts.
            (
                "linux.rootfsPropagation",
                linux
                    .rootfs_propagation()
                    .as_ref()
                    .is_some_and(|p| !p.is_empty()),
            ),
            // Would remount the host filesystem holding the rootfs read-only.
            (
                "root.readonly",
                spec.root().as_ref().and_then(|r| r.readonly()) == Some(true),
            ),
        ];
        if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
            return Err(Error::config(
                *field,
                "needs a mount namespace in linux.namespaces (the container would share the host's)",
            ));
        }
    }
    // As runc: a UTS namespace entry, new or joined by path, lets the container name
    // itself (in a joined one it renames that namespace); without one it would rename
    // the host.
    for (field, set) in [
        ("hostname", spec.hostname()),
        ("domainname", spec.domainname()),
    ] {
        // The kernel's limit (__NEW_UTS_LEN): sethostname/setdomainname refuse longer.
        if let Some(h) = set.as_deref().filter(|h| h.len() > 64) {
            return Err(Error::config(
                field,
                format!("{} bytes, more than the kernel's 64", h.len()),
            ));
        }
        if set.as_deref().is_some_and(|h| !h.is_empty()) && !has.contains(&LinuxNamespaceType::Uts)
        {
            return Err(Error::config(
                field,
                format!("setting the {field} needs a uts namespace in linux.namespaces (new or joined by path)"),
            ));
        }
    }
    for (i, m) in spec.mounts().as_deref().unwrap_or(&[]).iter().enumerate() {
        let d = m.destination();
        if d.as_os_str().is_empty() {
            return Err(Error::config(format!("mounts[{i}].destination"), "empty"));
        }
        if !d.is_absolute() {
            return Err(Error::config(
                format!("mounts[{i}].destination"),
                format!("{} is not an absolute path", d.display()),
            ));
        }
        for o in m.options().as_deref().unwrap_or(&[]) {
            if o == "idmap" || o == "ridmap" {
                return Err(Error::config(
                    format!("mounts[{i}].options"),
                    format!("{o} mounts are not supported"),
                ));
            }
        }
        let is_bind = m.typ().as_deref() == Some("bind")
            || m.options()
                .as_deref()
                .unwrap_or(&[])
                .iter()
                .any(|o| o == "bind" || o == "rbind");
        if is_bind && m.source().is_none() {
            return Err(Error::config(
                format!("mounts[{i}].source"),
                "a bind mount needs a source",
            ));
        }
    }
    if let Some(p) = linux.rootfs_propagation().as_deref() {
        if !p.is_empty() && crate::rootfs::propagation_flag(p).is_none() {
            return Err(Error::config(
                "linux.rootfsPropagation",
                format!("{p:?} is not one of shared, rshared, slave, rslave, private, rprivate, unbindable, runbindable"),
            ));
        }
    }
    for (i, d) in linux.devices().as_deref().unwrap_or(&[]).iter().enumerate() {
        if !d.path().is_absolute() {
            return Err(Error::config(
                format!("linux.devices[{i}].path"),
                format!("{} is not an absolute path", d.path().display()),
            ));
        }
    }
    if let Some(sysctl) = linux.sysctl() {
        for k in sysctl.keys() {
            let f = format!("linux.sysctl[{k:?}]");
            if k.contains('/') || k.contains("..") {
                return Err(Error::config(f, "not a sysctl name"));
            }
            let needs = if k.starts_with("net.") {
                Some(LinuxNamespaceType::Network)
            } else if k.starts_with("fs.mqueue.")
                || [
                    "kernel.msgmax",
                    "kernel.msgmnb",
                    "kernel.msgmni",
                    "kernel.sem",
                    "kernel.shmall",
                    "kernel.shmmax",
                    "kernel.shmmni",
                    "kernel.shm_rmid_forced",
                ]
                .contains(&k.as_str())
            {
                Some(LinuxNamespaceType::Ipc)
            } else if k == "kernel.hostname" || k == "kernel.domainname" {
                Some(LinuxNamespaceType::Uts)
            } else {
                return Err(Error::config(
                    f,
                    "not a namespaced sysctl (only net.*, IPC and UTS ones are allowed)",
                ));
            };
            if let Some(ns) = needs {
                if !has.contains(&ns) {
                    return Err(Error::config(
                        f,
                        format!("needs a {ns} namespace in linux.namespaces"),
                    ));
                }
            }
        }
    }
    if let Some(r) = linux.resources() {
        crate::cgroups::devices::rules(r)?;
    }
    // linux.seccomp is checked by compiling it, which `create` does once before it makes
    // anything (compiling it here too would do that work twice on every create).
    validate_id_mappings(linux)?;
    validate_mount_id_mappings(spec)?;
    if let Some(h) = spec.hooks() {
        let groups = [
            ("prestart", h.prestart()),
            ("createRuntime", h.create_runtime()),
            ("createContainer", h.create_container()),
            ("startContainer", h.start_container()),
            ("poststart", h.poststart()),
            ("poststop", h.poststop()),
        ];
        for (name, hooks) in groups {
            for (i, hk) in hooks.as_deref().unwrap_or(&[]).iter().enumerate() {
                if !hk.path().is_absolute() {
                    return Err(Error::config(
                        format!("hooks.{name}[{i}].path"),
                        format!("{} is not an absolute path", hk.path().display()),
                    ));
                }
                if hk.timeout().is_some_and(|t| t <= 0) {
                    return Err(Error::config(
                        format!("hooks.{name}[{i}].timeout"),
                        "must be positive",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `linux.uidMappings` and `linux.gidMappings` against the user namespace: a new one
/// needs both (the runtime writes them), a joined one has its own already.
/// `mounts[i].uidMappings`/`gidMappings` (runtime-spec 1.1): both or neither, on a bind.
fn validate_mount_id_mappings(spec: &Spec) -> Result<()> {
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let has = |v: &Option<Vec<_>>| v.as_ref().is_some_and(|v: &Vec<_>| !v.is_empty());
        let (u, g) = (has(m.uid_mappings()), has(m.gid_mappings()));
        if u != g {
            let missing = if u { "gidMappings" } else { "uidMappings" };
            return Err(Error::config(
                format!("mounts[{i}].{missing}"),
                "required with the other one (an idmapped mount maps both)",
            ));
        }
        let bind = m.typ().as_deref() == Some("bind")
            || m.options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        if u && !bind {
            return Err(Error::config(
                format!("mounts[{i}].uidMappings"),
                "only a bind mount can be idmapped",
            ));
        }
    }
    Ok(())
}

fn validate_id_mappings(linux: &oci_spec::runtime::Linux) -> Result<()> {
    let user = linux
        .namespaces()
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::User);
    for (field, maps) in [
        ("linux.uidMappings", linux.uid_mappings()),
        ("linux.gidMappings", linux.gid_mappings()),
    ] {
        let maps = maps.as_deref().unwrap_or(&[]);
        match user {
            None if !maps.is_empty() => {
                return Err(Error::config(
                    field,
                    "needs a user namespace in linux.namespaces",
                ))
            }
            Some(n) if n.path().is_none() && maps.is_empty() => {
                return Err(Error::config(
                    field,
                    "required with a new user namespace (no mapping given)",
                ))
            }
            _ => {}
        }
        // The kernel's limit on lines in a map.
        if maps.len() > 340 {
            return Err(Error::config(
                field,
                format!("{} mappings, at most 340", maps.len()),
            ));
        }
        for (i, m) in maps.iter().enumerate() {
            if m.size() == 0 {
                return Err(Error::config(
                    format!("{field}[{i}].size"),
                    "must be positive",
                ));
            }
            for (what, start) in [("containerID", m.container_id()), ("hostID", m.host_id())] {
                if start as u64 + m.size() as u64 > 1 << 32 {
                    return Err(Error::config(
                        format!("{field}[{i}]"),
                        format!("{what} {start} + size {} passes 2^32", m.size()),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("abc-1_2.3+x").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "ü"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parse_error_names_field() {
        let e = parse_json::<Spec>(
            br#"{"ociVersion":"1.0.2","process":{"cwd":"/","user":{"uid":"x","gid":0}}}"#,
            "config.json",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("process.user.uid"), "{e}");
    }
}
