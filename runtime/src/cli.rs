//! runc's command line: the options of each command ([`parse`], with lexopt) and what
//! they turn into without touching the system: an exec's process ([`exec_process`]) and an
//! update's resources ([`update_resources`]). `nodus-runtime` (main.rs) runs the commands;
//! the fuzz target `runtime_cli` feeds this module arbitrary argument lists.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use oci_spec::runtime::{Capabilities, Capability, LinuxCpu, LinuxPids, LinuxResources, Process};

/// A command line that cannot be used; names the option and the value.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Args(#[from] lexopt::Error),
    #[error("{0} is not UTF-8")]
    NotUtf8(String),
    #[error("--{flag} {value:?}: {reason}")]
    BadValue {
        flag: String,
        value: String,
        reason: &'static str,
    },
    #[error("{command}: missing container id")]
    MissingId { command: String },
    #[error("exec: give --process FILE or a command")]
    NoCommand,
}

fn bad(flag: &str, value: &str, reason: &'static str) -> CliError {
    CliError::BadValue {
        flag: flag.to_string(),
        value: value.to_string(),
        reason,
    }
}

pub const USAGE: &str = "nodus-runtime: an OCI runtime with runc's command line

USAGE: nodus-runtime [--root DIR] [--log FILE] [--log-format text|json] [--debug] COMMAND [OPTIONS] ID

COMMANDS:
  create [--bundle DIR] [--pid-file F] [--console-socket S] [--no-pivot] ID
  start ID
  run [--bundle DIR] [--pid-file F] [--console-socket S] [--no-pivot] [--detach] [--keep] ID
  state ID
  kill [--all] ID [SIGNAL]
  delete [--force] ID
  ps [--format table|json] ID
  exec [--process FILE] [--detach] [--pid-file F] [--console-socket S] [--tty] [--cwd DIR]
       [--env K=V]... [--user UID[:GID]] [--additional-gids G]... [--no-new-privs] ID [CMD ARGS...]
  pause ID | resume ID
  update [--resources FILE|-] [--memory N] [--memory-swap N] [--memory-reservation N]
         [--pids-limit N] [--cpu-quota N] [--cpu-period N] [--cpu-share N]
         [--cpuset-cpus L] [--cpuset-mems L] ID
  features
  events [--stats] [--interval 5s] ID
  list [--quiet]
  --version
";

/// Parsed options of one command: flags (long names) with their values, and positionals.
#[derive(Default, Debug)]
pub struct Opts {
    pub vals: HashMap<&'static str, Vec<String>>,
    pub flags: Vec<&'static str>,
    pub pos: Vec<String>,
    /// Everything after the first positional, for `exec ID CMD...` (raw, hyphens kept).
    pub rest: Vec<String>,
}

impl Opts {
    pub fn val(&self, k: &str) -> Option<String> {
        self.vals.get(k).and_then(|v| v.last().cloned())
    }
    pub fn all(&self, k: &str) -> Vec<String> {
        self.vals.get(k).cloned().unwrap_or_default()
    }
    pub fn has(&self, k: &str) -> bool {
        self.flags.contains(&k)
    }
    pub fn path(&self, k: &str) -> Option<PathBuf> {
        self.val(k).map(PathBuf::from)
    }
    pub fn num<T: std::str::FromStr>(&self, k: &str) -> Result<Option<T>, CliError> {
        self.val(k)
            .map(|v| v.parse::<T>().map_err(|_| bad(k, &v, "not a number")))
            .transpose()
    }
    pub fn id(&self, cmd: &str) -> Result<String, CliError> {
        self.pos
            .first()
            .cloned()
            .ok_or_else(|| CliError::MissingId {
                command: cmd.to_string(),
            })
    }
}

/// Options every command accepts (runc's global flags).
const GLOBAL_VALUES: &[(&str, &str)] = &[
    ("root", "root"),
    ("log", "log"),
    ("log-format", "log-format"),
    ("criu", "criu"),
    ("rootless", "rootless"),
];
const GLOBAL_FLAGS: &[(&str, &str)] = &[
    ("debug", "debug"),
    ("systemd-cgroup", "systemd-cgroup"),
    ("version", "version"),
    ("v", "version"),
    ("help", "help"),
    ("h", "help"),
];

/// (accepted spelling, canonical name) pairs.
type OptTable = &'static [(&'static str, &'static str)];

/// The value-taking and flag options of a command.
fn command_options(cmd: &str) -> (OptTable, OptTable) {
    const CREATE_V: &[(&str, &str)] = &[
        ("bundle", "bundle"),
        ("b", "bundle"),
        ("pid-file", "pid-file"),
        ("console-socket", "console-socket"),
        ("preserve-fds", "preserve-fds"),
    ];
    const CREATE_F: &[(&str, &str)] = &[
        ("no-pivot", "no-pivot"),
        ("no-new-keyring", "no-new-keyring"),
        ("detach", "detach"),
        ("d", "detach"),
        ("keep", "keep"),
    ];
    match cmd {
        "create" | "run" => (CREATE_V, CREATE_F),
        "kill" => (&[], &[("all", "all"), ("a", "all")]),
        "delete" => (&[], &[("force", "force"), ("f", "force")]),
        "ps" => (&[("format", "format"), ("f", "format")], &[]),
        "exec" => (
            &[
                ("process", "process"),
                ("p", "process"),
                ("pid-file", "pid-file"),
                ("console-socket", "console-socket"),
                ("cwd", "cwd"),
                ("env", "env"),
                ("e", "env"),
                ("user", "user"),
                ("u", "user"),
                ("additional-gids", "additional-gids"),
                ("g", "additional-gids"),
                ("preserve-fds", "preserve-fds"),
                ("process-label", "process-label"),
                ("apparmor", "apparmor"),
                ("cap", "cap"),
                ("c", "cap"),
                ("cgroup", "cgroup"),
            ],
            &[
                ("detach", "detach"),
                ("d", "detach"),
                ("tty", "tty"),
                ("t", "tty"),
                ("no-new-privs", "no-new-privs"),
                ("ignore-paused", "ignore-paused"),
            ],
        ),
        "update" => (
            &[
                ("resources", "resources"),
                ("r", "resources"),
                ("memory", "memory"),
                ("memory-swap", "memory-swap"),
                ("memory-reservation", "memory-reservation"),
                ("pids-limit", "pids-limit"),
                ("cpu-quota", "cpu-quota"),
                ("cpu-period", "cpu-period"),
                ("cpu-share", "cpu-share"),
                ("cpuset-cpus", "cpuset-cpus"),
                ("cpuset-mems", "cpuset-mems"),
            ],
            &[],
        ),
        "events" => (&[("interval", "interval")], &[("stats", "stats")]),
        "list" => (
            &[("format", "format"), ("f", "format")],
            &[("quiet", "quiet"), ("q", "quiet")],
        ),
        _ => (&[], &[]),
    }
}

/// Parse `args` with lexopt: globals anywhere, the command's own options, positionals.
/// For `exec`, everything after the container id is the command line, taken raw.
pub fn parse(args: Vec<OsString>) -> Result<(Opts, Option<String>), CliError> {
    use lexopt::prelude::*;
    let mut p =
        lexopt::Parser::from_iter(std::iter::once(OsString::from("nodus-runtime")).chain(args));
    let mut o = Opts::default();
    let mut cmd: Option<String> = None;
    while let Some(arg) = p.next()? {
        let name = match &arg {
            Short(c) => c.to_string(),
            Long(l) => l.to_string(),
            Value(v) => {
                let v = v
                    .clone()
                    .into_string()
                    .map_err(|v| CliError::NotUtf8(format!("argument {v:?}")))?;
                if cmd.is_none() {
                    cmd = Some(v);
                    continue;
                }
                o.pos.push(v);
                if cmd.as_deref() == Some("exec") || cmd.as_deref() == Some("ps") {
                    for r in p.raw_args()? {
                        o.rest.push(
                            r.into_string()
                                .map_err(|v| CliError::NotUtf8(format!("argument {v:?}")))?,
                        );
                    }
                }
                continue;
            }
        };
        let (cv, cf) = command_options(cmd.as_deref().unwrap_or(""));
        if let Some((_, canon)) = GLOBAL_VALUES.iter().chain(cv).find(|(n, _)| *n == name) {
            let v = p
                .value()?
                .into_string()
                .map_err(|v| CliError::NotUtf8(format!("--{name} {v:?}")))?;
            o.vals.entry(canon).or_default().push(v);
        } else if let Some((_, canon)) = GLOBAL_FLAGS.iter().chain(cf).find(|(n, _)| *n == name) {
            o.flags.push(canon);
        } else {
            return Err(arg.unexpected().into());
        }
    }
    Ok((o, cmd))
}

/// The process `exec ID CMD...` runs: `base` (the container's own process) with the
/// command line's command, terminal, cwd, env, user, groups, no-new-privileges and
/// capabilities, as runc's `exec` builds it.
pub fn exec_process(o: &Opts, mut p: Process) -> Result<Process, CliError> {
    if o.rest.is_empty() {
        return Err(CliError::NoCommand);
    }
    p.set_args(Some(o.rest.clone()));
    p.set_terminal(Some(o.has("tty")));
    if let Some(c) = o.path("cwd") {
        p.set_cwd(c);
    }
    let mut env = p.env().clone().unwrap_or_default();
    env.extend(o.all("env"));
    p.set_env(Some(env));
    if let Some(u) = o.val("user") {
        let (uid, gid) = match u.split_once(':') {
            Some((a, b)) => (a.parse::<u32>(), b.parse::<u32>()),
            None => (u.parse::<u32>(), Ok(0)),
        };
        let (Ok(uid), Ok(gid)) = (uid, gid) else {
            return Err(bad("user", &u, "give numeric uid[:gid]"));
        };
        let mut usr = p.user().clone();
        usr.set_uid(uid);
        usr.set_gid(gid);
        p.set_user(usr);
    }
    let gids = o.all("additional-gids");
    if !gids.is_empty() {
        let gids = gids
            .iter()
            .map(|g| {
                g.parse::<u32>()
                    .map_err(|_| bad("additional-gids", g, "not a number"))
            })
            .collect::<Result<Vec<u32>, CliError>>()?;
        let mut usr = p.user().clone();
        usr.set_additional_gids(Some(gids));
        p.set_user(usr);
    }
    if o.has("no-new-privs") {
        p.set_no_new_privileges(Some(true));
    }
    let extra = o.all("cap");
    if !extra.is_empty() {
        // Like runc: --cap adds to the bounding, effective and permitted sets.
        let mut add = Vec::new();
        for c in &extra {
            let name = c.to_ascii_uppercase();
            let name = name.strip_prefix("CAP_").unwrap_or(&name);
            add.push(
                name.parse::<Capability>()
                    .map_err(|_| bad("cap", c, "unknown capability"))?,
            );
        }
        let mut caps = p.capabilities().clone().unwrap_or_default();
        let with = |set: &Option<Capabilities>| {
            let mut s = set.clone().unwrap_or_default();
            s.extend(add.iter().copied());
            Some(s)
        };
        let (b, e, pm) = (
            with(caps.bounding()),
            with(caps.effective()),
            with(caps.permitted()),
        );
        caps.set_bounding(b);
        caps.set_effective(e);
        caps.set_permitted(pm);
        p.set_capabilities(Some(caps));
    }
    Ok(p)
}

/// The resources `update` applies: `base` (from `--resources`, or empty) with the memory,
/// pids and CPU flags over it.
pub fn update_resources(o: &Opts, mut r: LinuxResources) -> Result<LinuxResources, CliError> {
    let memory = o.num::<i64>("memory")?;
    let memory_swap = o.num::<i64>("memory-swap")?;
    let memory_reservation = o.num::<i64>("memory-reservation")?;
    if memory.is_some() || memory_swap.is_some() || memory_reservation.is_some() {
        let mut m = r.memory().unwrap_or_default();
        if memory.is_some() {
            m.set_limit(memory);
        }
        if memory_swap.is_some() {
            m.set_swap(memory_swap);
        }
        if memory_reservation.is_some() {
            m.set_reservation(memory_reservation);
        }
        r.set_memory(Some(m));
    }
    if let Some(l) = o.num::<i64>("pids-limit")? {
        let mut p = LinuxPids::default();
        p.set_limit(l);
        r.set_pids(Some(p));
    }
    let quota = o.num::<i64>("cpu-quota")?;
    let period = o.num::<u64>("cpu-period")?;
    let share = o.num::<u64>("cpu-share")?;
    let cpus = o.val("cpuset-cpus");
    let mems = o.val("cpuset-mems");
    if quota.is_some() || period.is_some() || share.is_some() || cpus.is_some() || mems.is_some() {
        let mut c: LinuxCpu = r.cpu().clone().unwrap_or_default();
        if quota.is_some() {
            c.set_quota(quota);
        }
        if period.is_some() {
            c.set_period(period);
        }
        if share.is_some() {
            c.set_shares(share);
        }
        if cpus.is_some() {
            c.set_cpus(cpus);
        }
        if mems.is_some() {
            c.set_mems(mems);
        }
        r.set_cpu(Some(c));
    }
    Ok(r)
}

/// `events --interval`: seconds, as `5s` or `0.5`, at least 0.1 s.
pub fn interval(o: &Opts) -> Result<std::time::Duration, CliError> {
    let interval = o.val("interval").unwrap_or_else(|| "5s".into());
    interval
        .trim_end_matches('s')
        .parse::<f64>()
        .ok()
        .filter(|s| *s >= 0.0)
        .and_then(|s| std::time::Duration::try_from_secs_f64(s.max(0.1)).ok())
        .ok_or_else(|| bad("interval", &interval, "give seconds like 5s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<(Opts, Option<String>), CliError> {
        parse(a.iter().map(OsString::from).collect())
    }

    #[test]
    fn globals_anywhere_and_exec_takes_the_rest_raw() {
        let (o, cmd) = args(&["exec", "--root", "/r", "-t", "c1", "sh", "-c", "--x"]).unwrap();
        assert_eq!(cmd.as_deref(), Some("exec"));
        assert_eq!(o.val("root").as_deref(), Some("/r"));
        assert!(o.has("tty"));
        assert_eq!(o.pos, ["c1"]);
        assert_eq!(o.rest, ["sh", "-c", "--x"]);
        let p = exec_process(&o, Process::default()).unwrap();
        assert_eq!(p.args().as_deref(), Some(&o.rest[..]));
        assert_eq!(p.terminal(), Some(true));
    }

    #[test]
    fn bad_values_name_the_option_and_the_value() {
        let (o, _) = args(&["exec", "--user", "root", "c1", "sh"]).unwrap();
        let e = exec_process(&o, Process::default())
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--user \"root\": give numeric uid[:gid]");
        let (o, _) = args(&["exec", "--cap", "CAP_BOGUS", "c1", "sh"]).unwrap();
        let e = exec_process(&o, Process::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--cap \"CAP_BOGUS\""), "{e}");
        let (o, _) = args(&["update", "--memory", "12x", "c1"]).unwrap();
        let e = update_resources(&o, LinuxResources::default())
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--memory \"12x\": not a number");
        let e = args(&["create", "--bogus", "c1"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--bogus"), "{e}");
        let bad = std::os::unix::ffi::OsStringExt::from_vec(vec![b'c', 0xff]);
        let e = parse(vec!["state".into(), bad]).err().unwrap().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn an_interval_must_be_a_finite_number_of_seconds() {
        for (v, ok) in [
            ("5s", Some(5.0)),
            ("0.5", Some(0.5)),
            ("0", Some(0.1)),
            ("infs", None),
            ("NaN", None),
            ("-1s", None),
            ("1e20", None),
        ] {
            let (o, _) = args(&["events", "--interval", v, "c1"]).unwrap();
            assert_eq!(interval(&o).ok().map(|d| d.as_secs_f64()), ok, "{v}");
        }
    }

    #[test]
    fn update_flags_go_over_the_resources_file() {
        let (o, _) = args(&["update", "--memory", "1048576", "--cpu-quota", "5000", "c1"]).unwrap();
        let mut base = LinuxResources::default();
        let mut pids = LinuxPids::default();
        pids.set_limit(7);
        base.set_pids(Some(pids));
        let r = update_resources(&o, base).unwrap();
        assert_eq!(r.memory().unwrap().limit(), Some(1048576));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(5000));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 7);
    }
}
