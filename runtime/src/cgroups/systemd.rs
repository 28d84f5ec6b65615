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

use oci_spec::runtime::LinuxResources;
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

    /// Starts the unit as a transient one holding `pid` with the limits of `resources`, and
    /// waits until `pid` is in it. systemd is given the limits too, not only the files:
    /// it writes its own values back whenever it applies the unit's settings again (a
    /// daemon-reload), and would otherwise lift them.
    pub fn start(&self, pid: i32, resources: Option<&LinuxResources>) -> Result<()> {
        let conn = connect()?;
        let mut props = vec![
            Property::Str("Description", format!("nodus container {}", self.name)),
            Property::Str("Slice", self.slice.clone()),
            Property::Bool("Delegate", true),
            Property::Pids(vec![pid as u32]),
            Property::Bool("DefaultDependencies", false),
            Property::Bool("MemoryAccounting", true),
            Property::Bool("CPUAccounting", true),
            Property::Bool("TasksAccounting", true),
        ];
        props.extend(resources.map(resource_properties).unwrap_or_default());
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

    /// Gives the running unit new limits (the runtime's `update`), as [`Unit::start`] does.
    pub fn set_resources(&self, resources: &LinuxResources) -> Result<()> {
        let props = resource_properties(resources);
        if props.is_empty() {
            return Ok(());
        }
        let conn = connect()?;
        set_properties(&conn, &self.name, &props)
    }
}

/// The unit properties for an OCI `linux.resources`, as runc's systemd driver sets them:
/// the CPU weight from the shares, the quota per second (rounded up to whole percents,
/// systemd's unit) and the period, the memory and tasks limits (-1: u64::MAX, infinity).
/// What is not set stays out.
pub fn resource_properties(r: &LinuxResources) -> Vec<Property> {
    let mut props = Vec::new();
    if let Some(cpu) = r.cpu() {
        if let Some(shares) = cpu.shares().filter(|&s| s > 0) {
            props.push(Property::U64(
                "CPUWeight",
                super::v2::shares_to_weight(shares),
            ));
        }
        let period = cpu.period().filter(|&p| p > 0);
        match cpu.quota() {
            Some(q) if q > 0 => {
                let period = period.unwrap_or(100_000);
                let per_sec = (q as u64 * 1_000_000 / period).div_ceil(10_000) * 10_000;
                props.push(Property::U64("CPUQuotaPerSecUSec", per_sec));
            }
            Some(_) => props.push(Property::U64("CPUQuotaPerSecUSec", u64::MAX)),
            None => {}
        }
        if let Some(p) = period {
            props.push(Property::U64("CPUQuotaPeriodUSec", p));
        }
    }
    let limit = |v: i64| if v < 0 { u64::MAX } else { v as u64 };
    if let Some(m) = r
        .memory()
        .as_ref()
        .and_then(|m| m.limit())
        .filter(|&l| l != 0)
    {
        props.push(Property::U64("MemoryMax", limit(m)));
    }
    if let Some(p) = r.pids().as_ref().map(|p| p.limit()).filter(|&l| l != 0) {
        props.push(Property::U64("TasksMax", limit(p)));
    }
    props
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
    /// Properties systemd takes only when it makes a unit.
    fn creation_only(&self) -> bool {
        let name = match self {
            Property::Str(k, _) | Property::Bool(k, _) | Property::U64(k, _) => *k,
            Property::Pids(_) => "PIDs",
        };
        matches!(
            name,
            "Description" | "Slice" | "Delegate" | "PIDs" | "DefaultDependencies"
        )
    }

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

/// Makes the slice `name` with `props`, or, when systemd has it already, sets those of
/// `props` a running unit takes (for the runtime only, as runc does; `Description`,
/// `DefaultDependencies` and the like are refused then). Returns once its cgroup exists
/// under `root`.
pub fn ensure_slice(root: &std::path::Path, name: &str, props: &[Property]) -> Result<()> {
    let dir = root.join(slice_path(name).map_err(Error::Other)?);
    let conn = connect()?;
    match start_transient(&conn, name, props) {
        Ok(()) => {}
        Err(zbus::Error::MethodError(e, _, _))
            if e.as_str() == "org.freedesktop.systemd1.UnitExists" =>
        {
            let settable: Vec<Property> = props
                .iter()
                .filter(|p| !p.creation_only())
                .cloned()
                .collect();
            set_properties(&conn, name, &settable)?;
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

/// Stops the unit `name`; one systemd does not know (any more) is fine. A unit that ended
/// failed (an OOM kill, a stop timeout) is reset too: systemd would keep it loaded, and a
/// new unit of the same name would be refused.
pub fn stop_unit(name: &str) -> Result<()> {
    let conn = connect()?;
    let manager = manager(&conn)?;
    let no_such = |e: &zbus::Error| {
        matches!(e, zbus::Error::MethodError(n, _, _)
            if n.as_str() == "org.freedesktop.systemd1.NoSuchUnit")
    };
    let stopped: zbus::Result<OwnedObjectPath> = manager.call("StopUnit", &(name, "replace"));
    match stopped {
        Ok(_) => {}
        Err(e) if no_such(&e) => return Ok(()),
        Err(e) => return Err(dbus_error(&format!("stop unit {name}"), e)),
    }
    // Only a failed unit can be reset; any other answer changes nothing.
    let _: zbus::Result<()> = manager.call("ResetFailedUnit", &(name,));
    Ok(())
}

/// `SetUnitProperties(name, runtime = true, props)`.
fn set_properties(conn: &Connection, name: &str, props: &[Property]) -> Result<()> {
    let values: Vec<_> = props.iter().map(Property::to_value).collect();
    let _: () = manager(conn)?
        .call("SetUnitProperties", &(name, true, values))
        .map_err(|e| dbus_error(&format!("set properties of {name}"), e))?;
    Ok(())
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
    fn container_limits_become_unit_properties() {
        let r: LinuxResources = serde_json::from_str(
            r#"{"cpu": {"shares": 1024, "quota": 20000, "period": 100000},
                "memory": {"limit": 33554432}, "pids": {"limit": 10}}"#,
        )
        .unwrap();
        assert_eq!(
            resource_properties(&r),
            [
                Property::U64("CPUWeight", 39),
                Property::U64("CPUQuotaPerSecUSec", 200_000),
                Property::U64("CPUQuotaPeriodUSec", 100_000),
                Property::U64("MemoryMax", 33_554_432),
                Property::U64("TasksMax", 10),
            ]
        );
        let unlimited: LinuxResources = serde_json::from_str(
            r#"{"cpu": {"quota": -1}, "memory": {"limit": -1}, "pids": {"limit": -1}}"#,
        )
        .unwrap();
        assert_eq!(
            resource_properties(&unlimited),
            [
                Property::U64("CPUQuotaPerSecUSec", u64::MAX),
                Property::U64("MemoryMax", u64::MAX),
                Property::U64("TasksMax", u64::MAX),
            ]
        );
        assert!(resource_properties(&LinuxResources::default()).is_empty());
        // What a running unit is given again leaves out what only a new unit takes.
        assert!(Property::Bool("DefaultDependencies", false).creation_only());
        assert!(!Property::U64("MemoryMax", 1).creation_only());
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
