//! The systemd cgroup driver, as runc's `--systemd-cgroup` reads `linux.cgroupsPath`:
//! `slice:prefix:name` is the transient scope `prefix-name.scope` in `slice` (a `name`
//! ending in `.slice` is a slice itself). containerd's CRI writes this form whenever the
//! pod's cgroup parent is a systemd slice, whatever the runtime.
//!
//! The scope is started through systemd's D-Bus API (`StartTransientUnit`) with the
//! container's init as its first process (a scope cannot exist empty) and `Delegate=yes`,
//! so that systemd leaves the cgroup's files to us: the limits are then written as with
//! cgroupfs, in the scope's directory under the slice's. Stopping the unit removes the
//! directory.
//!
//! The kubelet's systemd cgroup driver makes its pod and QoS slices with the same calls
//! ([`ensure_slice`], [`stop_unit`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zbus::blocking::{Connection, Proxy};
use zbus::zvariant::{OwnedObjectPath, Value};

use crate::error::{Error, Result};

const DESTINATION: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// How long systemd may take to run the start job (move the init into the scope).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the stop job may take before the directory is removed by hand.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A container's systemd unit: the unit's name and the slice it lives in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Unit {
    /// `prefix-name.scope`, or `name` when it is a slice.
    pub name: String,
    /// The parent slice (`system.slice` when the path leaves it empty).
    pub slice: String,
}

impl Unit {
    /// `Some` when `cgroups_path` has systemd's form `slice:prefix:name` (no `/`, three
    /// parts, the first empty or a slice). Its parts are checked as systemd checks names.
    pub fn parse(cgroups_path: &str) -> Option<Result<Unit>> {
        if cgroups_path.contains('/') {
            return None;
        }
        let parts: Vec<&str> = cgroups_path.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            return None;
        };
        if !(slice.is_empty() || slice.ends_with(".slice")) {
            return None;
        }
        Some(Unit::new(slice, prefix, name))
    }

    fn new(slice: &str, prefix: &str, name: &str) -> Result<Unit> {
        let field = "linux.cgroupsPath";
        let bad = |what: &str| {
            Error::config(
                field,
                format!("{slice}:{prefix}:{name}: {what} (systemd form is slice:prefix:name)"),
            )
        };
        if name.is_empty() {
            return Err(bad("the name is empty"));
        }
        let unit = if name.ends_with(".slice") {
            name.to_string()
        } else {
            format!("{prefix}-{name}.scope")
        };
        if !unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c))
            || unit.len() > 255
        {
            return Err(bad("not a valid unit name"));
        }
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        slice_path(slice).map_err(|e| bad(&e))?;
        Ok(Unit {
            name: unit,
            slice: slice.to_string(),
        })
    }

    /// The unit's cgroup, relative to the cgroup mount: the slice's path, then the unit.
    pub fn cgroup_path(&self) -> PathBuf {
        // Checked in `new`.
        let mut p = slice_path(&self.slice).unwrap_or_default();
        p.push(&self.name);
        p
    }

    /// Starts the unit as a transient one holding `pid`, and waits until `pid` is in it.
    pub fn start(&self, pid: i32) -> Result<()> {
        let conn = connect()?;
        let props = [
            Property::Str("Description", format!("nodus container {}", self.name)),
            Property::Str("Slice", self.slice.clone()),
            Property::Bool("Delegate", true),
            Property::Pids(vec![pid as u32]),
            Property::Bool("DefaultDependencies", false),
            Property::Bool("MemoryAccounting", true),
            Property::Bool("CPUAccounting", true),
            Property::Bool("TasksAccounting", true),
        ];
        start_transient(&conn, &self.name, &props)
            .map_err(|e| dbus_error(&format!("start unit {}", self.name), e))?;
        // The move is done when /proc says so.
        let want = format!("/{}", self.cgroup_path().display());
        let moved = wait_for(START_TIMEOUT, || {
            let cgroups =
                std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            cgroups
                .lines()
                .any(|l| l.split(':').nth(2) == Some(want.as_str()))
        });
        if moved {
            Ok(())
        } else {
            Err(Error::Other(format!(
                "systemd did not move pid {pid} into {} within {START_TIMEOUT:?}",
                self.name
            )))
        }
    }

    /// Stops the unit (a unit systemd no longer knows is fine: an empty scope is gone by
    /// itself) and waits briefly for its directory under `root` to go.
    pub fn stop(&self, root: &std::path::Path) -> Result<()> {
        stop_unit(&self.name)?;
        wait_for(STOP_TIMEOUT, || !root.join(self.cgroup_path()).exists());
        Ok(())
    }
}

/// A property of a transient unit, as systemd's D-Bus API takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Property {
    /// A string property (`Description`, `Slice`).
    Str(&'static str, String),
    /// A boolean property (`Delegate`, `CPUAccounting`...).
    Bool(&'static str, bool),
    /// An unsigned property (`CPUWeight`, `MemoryMax`, `CPUQuotaPerSecUSec`...;
    /// `u64::MAX` is systemd's "infinity").
    U64(&'static str, u64),
    /// `PIDs`: the processes a scope starts with.
    Pids(Vec<u32>),
}

impl Property {
    fn to_value(&self) -> (&'static str, Value<'_>) {
        match self {
            Property::Str(k, v) => (k, Value::from(v.as_str())),
            Property::Bool(k, v) => (k, Value::from(*v)),
            Property::U64(k, v) => (k, Value::from(*v)),
            Property::Pids(p) => ("PIDs", Value::from(p.clone())),
        }
    }
}

/// True when systemd is the init system (the test runc and sd_booted use).
pub fn is_running() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

/// Makes the slice `name` with `props`, or sets `props` on it when systemd has it already
/// (for the runtime only, as runc does). Returns once its cgroup exists under `root`.
pub fn ensure_slice(root: &std::path::Path, name: &str, props: &[Property]) -> Result<()> {
    let dir = root.join(slice_path(name).map_err(Error::Other)?);
    let conn = connect()?;
    match start_transient(&conn, name, props) {
        Ok(()) => {}
        Err(zbus::Error::MethodError(e, _, _))
            if e.as_str() == "org.freedesktop.systemd1.UnitExists" =>
        {
            let values: Vec<_> = props.iter().map(Property::to_value).collect();
            let _: () = manager(&conn)?
                .call("SetUnitProperties", &(name, true, values))
                .map_err(|e| dbus_error(&format!("set properties of {name}"), e))?;
        }
        Err(e) => return Err(dbus_error(&format!("start unit {name}"), e)),
    }
    if wait_for(START_TIMEOUT, || dir.is_dir()) {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "systemd started {name}, but {} did not appear within {START_TIMEOUT:?}",
            dir.display()
        )))
    }
}

/// Stops the unit `name`; one systemd does not know (any more) is fine.
pub fn stop_unit(name: &str) -> Result<()> {
    let conn = connect()?;
    let stopped: zbus::Result<OwnedObjectPath> =
        manager(&conn)?.call("StopUnit", &(name, "replace"));
    match stopped {
        Ok(_) => Ok(()),
        Err(zbus::Error::MethodError(e, _, _))
            if e.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
        {
            Ok(())
        }
        Err(e) => Err(dbus_error(&format!("stop unit {name}"), e)),
    }
}

/// `StartTransientUnit(name, "replace", props, [])`. The reply comes when the job is
/// queued, not done: callers wait for what they need (a process moved, a directory).
fn start_transient(conn: &Connection, name: &str, props: &[Property]) -> zbus::Result<()> {
    let values: Vec<_> = props.iter().map(Property::to_value).collect();
    let aux: Vec<(&str, Vec<(&str, Value)>)> = Vec::new();
    let _job: OwnedObjectPath = Proxy::new(conn, DESTINATION, PATH, MANAGER)?
        .call("StartTransientUnit", &(name, "replace", values, aux))?;
    Ok(())
}

/// Polls `done` every 2 ms until it holds (true) or `timeout` passes (false).
fn wait_for(timeout: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The cgroup path of `slice`: each dash opens a level, as systemd expands slice names
/// (`a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root).
pub fn slice_path(slice: &str) -> Result<PathBuf, String> {
    if slice == "-.slice" {
        return Ok(PathBuf::new());
    }
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(format!("{slice:?} is not a slice"));
    };
    if stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return Err(format!("{slice:?} is not a valid slice name"));
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path)
}

fn connect() -> Result<Connection> {
    Connection::system().map_err(|e| dbus_error("connect to the system bus", e))
}

fn manager(conn: &Connection) -> Result<Proxy<'_>> {
    Proxy::new(conn, DESTINATION, PATH, MANAGER).map_err(|e| dbus_error("systemd manager", e))
}

fn dbus_error(what: &str, e: zbus::Error) -> Error {
    Error::Other(format!("systemd cgroup driver: {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_expand_as_systemd_expands_them() {
        assert_eq!(
            slice_path("kubepods-burstable-pod1_2.slice").unwrap(),
            PathBuf::from(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1_2.slice"
            )
        );
        assert_eq!(
            slice_path("system.slice").unwrap(),
            PathBuf::from("system.slice")
        );
        assert_eq!(slice_path("-.slice").unwrap(), PathBuf::new());
        for bad in ["a--b.slice", "-a.slice", "a-.slice", "a.scope", ".slice"] {
            assert!(slice_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cgroups_paths_in_systemd_form_name_a_scope() {
        let u = Unit::parse("kubepods-besteffort-podx.slice:cri-containerd:abc")
            .unwrap()
            .unwrap();
        assert_eq!(u.name, "cri-containerd-abc.scope");
        assert_eq!(u.slice, "kubepods-besteffort-podx.slice");
        assert_eq!(
            u.cgroup_path(),
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice/cri-containerd-abc.scope"
            )
        );
        let u = Unit::parse(":nodus:c1").unwrap().unwrap();
        assert_eq!(
            (u.name.as_str(), u.slice.as_str()),
            ("nodus-c1.scope", "system.slice")
        );
        let u = Unit::parse("machine.slice::inner.slice").unwrap().unwrap();
        assert_eq!(u.name, "inner.slice");
        // cgroupfs paths stay cgroupfs paths.
        for path in ["/kubepods/pod1/abc", "nodus-rel/c1", "abc", "a:b", "x:y:z"] {
            assert!(Unit::parse(path).is_none(), "{path}");
        }
        for bad in ["system.slice:p:", "bad--.slice:p:n", "system.slice:p:a b"] {
            let e = Unit::parse(bad).unwrap().unwrap_err().to_string();
            assert!(
                e.starts_with("linux.cgroupsPath: ") && e.contains(bad),
                "{e}"
            );
        }
    }
}
