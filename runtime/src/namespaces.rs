//! Which namespaces a container creates and which it joins.

use std::fs::File;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};

/// The namespace plan of a container.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Namespaces created at clone time (pid, mnt, uts, ipc, net).
    pub clone_flags: CloneFlags,
    /// A new cgroup namespace, made after the init joined its cgroup.
    pub new_cgroup: bool,
    /// Namespaces joined by path, in the order they must be joined (mnt last).
    pub join: Vec<(LinuxNamespaceType, PathBuf)>,
}

/// The clone(2) flag of a namespace type.
pub fn flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::empty(),
    }
}

/// The /proc/<pid>/ns/ name of a namespace type.
pub fn proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

impl Plan {
    /// Build the plan from `linux.namespaces` (already validated).
    pub fn from_spec(spec: &Spec) -> Plan {
        let mut plan = Plan {
            clone_flags: CloneFlags::empty(),
            new_cgroup: false,
            join: vec![],
        };
        let nss = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default();
        for ns in nss {
            match ns.path() {
                Some(p) => plan.join.push((ns.typ(), p.clone())),
                None if ns.typ() == LinuxNamespaceType::Cgroup => plan.new_cgroup = true,
                None => plan.clone_flags |= flag(ns.typ()),
            }
        }
        // The user namespace first (the others may belong to it); the mount namespace
        // changes path lookups: join it after the others.
        plan.join.sort_by_key(|(t, _)| match t {
            LinuxNamespaceType::User => 0,
            LinuxNamespaceType::Mount => 2,
            _ => 1,
        });
        plan
    }

    /// Whether the container gets a new namespace of this type.
    pub fn is_new(&self, t: LinuxNamespaceType) -> bool {
        if t == LinuxNamespaceType::Cgroup {
            return self.new_cgroup;
        }
        self.clone_flags.contains(flag(t))
    }

    /// Whether the container joins an existing namespace of this type.
    pub fn joins(&self, t: LinuxNamespaceType) -> Option<&PathBuf> {
        self.join.iter().find(|(x, _)| *x == t).map(|(_, p)| p)
    }

    /// Open the namespaces to join (except pid, which the parent joins before clone).
    pub fn open_joins(&self) -> Result<Vec<(CloneFlags, File)>> {
        self.join
            .iter()
            .filter(|(t, _)| *t != LinuxNamespaceType::Pid)
            .map(|(t, p)| {
                File::open(p).map(|f| (flag(*t), f)).map_err(|e| {
                    Error::config(
                        format!("linux.namespaces[{t}].path"),
                        format!("{}: {e}", p.display()),
                    )
                })
            })
            .collect()
    }
}
