//! `nodus-runtime`: runc's command line over the nodus OCI runtime library.
//!
//! A thin layer: parse flags (runc's names), set up runc-style logging, call the
//! library, print results. Errors go to the log (JSON for containerd's runc shim) and
//! to stderr, with exit status 1.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _};
use nodus_runtime::logging::{Format, RuncLogger};
use nodus_runtime::spec::parse_json;
use nodus_runtime::{cgroups, seccomp};
use nodus_runtime::{CreateOpts, ExecOpts, Runtime, Status};
use oci_spec::runtime::{LinuxCpu, LinuxPids, LinuxResources, Process};

const USAGE: &str = "nodus-runtime: an OCI runtime with runc's command line

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
struct Opts {
    vals: HashMap<&'static str, Vec<String>>,
    flags: Vec<&'static str>,
    pos: Vec<String>,
    /// Everything after the first positional, for `exec ID CMD...` (raw, hyphens kept).
    rest: Vec<String>,
}

impl Opts {
    fn val(&self, k: &str) -> Option<String> {
        self.vals.get(k).and_then(|v| v.last().cloned())
    }
    fn all(&self, k: &str) -> Vec<String> {
        self.vals.get(k).cloned().unwrap_or_default()
    }
    fn has(&self, k: &str) -> bool {
        self.flags.contains(&k)
    }
    fn path(&self, k: &str) -> Option<PathBuf> {
        self.val(k).map(PathBuf::from)
    }
    fn num<T: std::str::FromStr>(&self, k: &str) -> anyhow::Result<Option<T>> {
        self.val(k)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|_| anyhow!("--{k} {v:?}: not a number"))
            })
            .transpose()
    }
    fn id(&self, cmd: &str) -> anyhow::Result<String> {
        match self.pos.first() {
            Some(id) => Ok(id.clone()),
            None => bail!("{cmd}: missing container id"),
        }
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

/// `print!`/`println!` that end the process quietly, as runc does (SIGPIPE), when
/// stdout's reader went away (`nodus-runtime --version | head -1`), instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => { emit(format_args!($($arg)*), false) };
}
macro_rules! outln {
    ($($arg:tt)*) => { emit(format_args!($($arg)*), true) };
}

fn emit(args: std::fmt::Arguments, newline: bool) {
    let mut stdout = std::io::stdout().lock();
    let r = stdout.write_fmt(args).and_then(|()| {
        if newline {
            stdout.write_all(b"\n")
        } else {
            Ok(())
        }
    });
    if let Err(e) = r {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            // The status a shell shows for a process ended by SIGPIPE.
            std::process::exit(128 + libc::SIGPIPE);
        }
        eprintln!("nodus-runtime: write to stdout: {e}");
        std::process::exit(1);
    }
}

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
fn parse(args: Vec<OsString>) -> anyhow::Result<(Opts, Option<String>)> {
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
                    .map_err(|v| anyhow!("argument {v:?} is not UTF-8"))?;
                if cmd.is_none() {
                    cmd = Some(v);
                    continue;
                }
                o.pos.push(v);
                if cmd.as_deref() == Some("exec") || cmd.as_deref() == Some("ps") {
                    for r in p.raw_args()? {
                        o.rest.push(
                            r.into_string()
                                .map_err(|v| anyhow!("argument {v:?} is not UTF-8"))?,
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
                .map_err(|v| anyhow!("--{name} {v:?} is not UTF-8"))?;
            o.vals.entry(canon).or_default().push(v);
        } else if let Some((_, canon)) = GLOBAL_FLAGS.iter().chain(cf).find(|(n, _)| *n == name) {
            o.flags.push(canon);
        } else {
            return Err(arg.unexpected().into());
        }
    }
    Ok((o, cmd))
}

fn main() -> ExitCode {
    let (opts, cmd) = match parse(std::env::args_os().skip(1).collect()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("nodus-runtime: {e}\n\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let format = match opts.val("log-format").as_deref() {
        None | Some("text") => Format::Text,
        Some("json") => Format::Json,
        Some(f) => {
            eprintln!("nodus-runtime: --log-format {f:?}: use text or json");
            return ExitCode::FAILURE;
        }
    };
    let log = opts.path("log");
    let logger = match RuncLogger::new(log.as_deref(), format, opts.has("debug")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("nodus-runtime: open log {log:?}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let to_file = logger.to_file();
    let _ = tracing::subscriber::set_global_default(logger);
    match run(opts, cmd) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!("{msg}");
            if to_file {
                eprintln!("nodus-runtime: {msg}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(o: Opts, cmd: Option<String>) -> anyhow::Result<u8> {
    if o.has("help") {
        out!("{USAGE}");
        return Ok(0);
    }
    if o.has("version") {
        outln!("nodus-runtime version {}", env!("CARGO_PKG_VERSION"));
        outln!("spec: {}", nodus_runtime::container::OCI_VERSION);
        return Ok(0);
    }
    // --systemd-cgroup is accepted as runc's: a cgroupsPath in systemd's form
    // (slice:prefix:name) is a systemd scope with or without it.
    let Some(cmd) = cmd else {
        bail!("no command given (see --help)");
    };
    let rt = Runtime::new(
        o.path("root")
            .unwrap_or_else(|| PathBuf::from("/run/nodus")),
    );
    let create_opts = |o: &Opts| -> anyhow::Result<CreateOpts> {
        if o.num::<u32>("preserve-fds")?.unwrap_or(0) != 0 {
            bail!("--preserve-fds is not supported");
        }
        Ok(CreateOpts {
            id: o.id("create")?,
            bundle: o.path("bundle").unwrap_or_else(|| PathBuf::from(".")),
            pid_file: o.path("pid-file"),
            console_socket: o.path("console-socket"),
            no_pivot: o.has("no-pivot"),
        })
    };
    match cmd.as_str() {
        "create" => {
            rt.create(&create_opts(&o)?)?;
        }
        "start" => rt.start(&o.id("start")?)?,
        "run" => {
            let c = create_opts(&o)?;
            let detach = o.has("detach");
            if o.has("keep") {
                let pid = rt.create(&c)?;
                rt.start(&c.id)?;
                if detach {
                    return Ok(0);
                }
                return Ok(wait_pid(pid).clamp(0, 255) as u8);
            }
            let code = rt.run(&c, detach)?;
            return Ok(code.clamp(0, 255) as u8);
        }
        "state" => {
            let st = rt.state(&o.id("state")?)?;
            outln!("{}", serde_json::to_string_pretty(&st)?);
        }
        "kill" => {
            let id = o.id("kill")?;
            let signal = o.pos.get(1).cloned().unwrap_or_else(|| "SIGTERM".into());
            let sig = nodus_runtime::util::parse_signal(&signal)
                .ok_or_else(|| anyhow!("unknown signal {signal:?}"))?;
            rt.kill(&id, sig, o.has("all"))?;
        }
        "delete" => rt.delete(&o.id("delete")?, o.has("force"))?,
        "ps" => {
            let pids = rt.ps(&o.id("ps")?)?;
            match o.val("format").as_deref().unwrap_or("table") {
                "json" => outln!("{}", serde_json::to_string(&pids)?),
                "table" => {
                    outln!("{:>8} CMD", "PID");
                    for p in pids {
                        let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
                            .map(|c| {
                                String::from_utf8_lossy(&c)
                                    .replace('\0', " ")
                                    .trim()
                                    .to_string()
                            })
                            .unwrap_or_default();
                        outln!("{p:>8} {cmd}");
                    }
                }
                f => bail!("--format {f:?}: use table or json"),
            }
        }
        "exec" => {
            let id = o.id("exec")?;
            if o.num::<u32>("preserve-fds")?.unwrap_or(0) != 0 {
                bail!("--preserve-fds is not supported");
            }
            if o.val("cgroup").is_some() {
                bail!("--cgroup: joining a sub-cgroup is not supported");
            }
            if o.val("process-label").is_some() || o.val("apparmor").is_some() {
                tracing::warn!(
                    "--process-label/--apparmor: no SELinux or AppArmor support, ignored"
                );
            }
            let p: Process = match o.path("process") {
                Some(f) => {
                    let data =
                        std::fs::read(&f).with_context(|| format!("--process {}", f.display()))?;
                    parse_json(&data, &f.display().to_string())?
                }
                None => {
                    if o.rest.is_empty() {
                        bail!("exec: give --process FILE or a command");
                    }
                    let saved = rt.load(&id)?;
                    let mut p = saved.process.clone().unwrap_or_default();
                    p.set_args(Some(o.rest.clone()));
                    p.set_terminal(Some(o.has("tty")));
                    if let Some(c) = o.path("cwd") {
                        p.set_cwd(c);
                    }
                    let mut e = p.env().clone().unwrap_or_default();
                    e.extend(o.all("env"));
                    p.set_env(Some(e));
                    if let Some(u) = o.val("user") {
                        let (uid, gid) = match u.split_once(':') {
                            Some((a, b)) => (a.parse::<u32>(), b.parse::<u32>()),
                            None => (u.parse::<u32>(), Ok(0)),
                        };
                        let (Ok(uid), Ok(gid)) = (uid, gid) else {
                            bail!("--user {u:?}: give numeric uid[:gid]");
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
                                    .map_err(|_| anyhow!("--additional-gids {g:?}: not a number"))
                            })
                            .collect::<anyhow::Result<Vec<u32>>>()?;
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
                        let mut caps = p.capabilities().clone().unwrap_or_default();
                        let add = |set: &mut Option<oci_spec::runtime::Capabilities>| -> anyhow::Result<()> {
                            let s = set.get_or_insert_with(Default::default);
                            for c in &extra {
                                let name = c.to_ascii_uppercase();
                                let name = name.strip_prefix("CAP_").unwrap_or(&name);
                                let cap = name
                                    .parse::<oci_spec::runtime::Capability>()
                                    .map_err(|_| anyhow!("--cap {c:?}: unknown capability"))?;
                                s.insert(cap);
                            }
                            Ok(())
                        };
                        let (mut b, mut e, mut pm) = (
                            caps.bounding().clone(),
                            caps.effective().clone(),
                            caps.permitted().clone(),
                        );
                        add(&mut b)?;
                        add(&mut e)?;
                        add(&mut pm)?;
                        caps.set_bounding(b);
                        caps.set_effective(e);
                        caps.set_permitted(pm);
                        p.set_capabilities(Some(caps));
                    }
                    p
                }
            };
            let code = rt.exec(
                &id,
                &ExecOpts {
                    process: p,
                    detach: o.has("detach"),
                    pid_file: o.path("pid-file"),
                    console_socket: o.path("console-socket"),
                },
            )?;
            return Ok(code.clamp(0, 255) as u8);
        }
        "pause" => rt.pause(&o.id("pause")?)?,
        "resume" => rt.resume(&o.id("resume")?)?,
        "update" => {
            let id = o.id("update")?;
            let mut r: LinuxResources = match o.val("resources").as_deref() {
                Some("-") => {
                    let mut data = vec![];
                    std::io::stdin().read_to_end(&mut data)?;
                    parse_json(&data, "resources (stdin)")?
                }
                Some(f) => {
                    let data = std::fs::read(f).with_context(|| format!("--resources {f}"))?;
                    parse_json(&data, f)?
                }
                None => LinuxResources::default(),
            };
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
            if quota.is_some()
                || period.is_some()
                || share.is_some()
                || cpus.is_some()
                || mems.is_some()
            {
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
            rt.update(&id, &r)?;
        }
        "features" => outln!("{}", serde_json::to_string_pretty(&features())?),
        "events" => {
            let id = o.id("events")?;
            let interval = o.val("interval").unwrap_or_else(|| "5s".into());
            let secs: f64 = interval
                .trim_end_matches('s')
                .parse()
                .map_err(|_| anyhow!("--interval {interval:?}: give seconds like 5s"))?;
            loop {
                // runc's event shape: {"type":"stats","id":..,"data":{cpu, memory, pids}}.
                let v = serde_json::json!({"type": "stats", "id": id, "data": rt.stats(&id)?});
                let mut out = std::io::stdout().lock();
                writeln!(out, "{v}")?;
                out.flush()?;
                if o.has("stats") {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_secs_f64(secs.max(0.1)));
                if rt.state(&id)?.status == Status::Stopped {
                    break;
                }
            }
        }
        "list" => {
            let ids = rt.list()?;
            let quiet = o.has("quiet");
            if !quiet {
                outln!("{:<40} {:>8} {:<10} BUNDLE", "ID", "PID", "STATUS");
            }
            for id in ids {
                if quiet {
                    outln!("{id}");
                } else if let Ok(s) = rt.state(&id) {
                    outln!(
                        "{:<40} {:>8} {:<10} {}",
                        id,
                        s.pid,
                        s.status,
                        s.bundle.display()
                    );
                }
            }
        }
        other => bail!("unknown command {other:?} (see --help)"),
    }
    Ok(0)
}

fn wait_pid(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid on our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": nodus_runtime::container::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec",
            "mand", "noatime", "nodev", "nodiratime", "noexec", "nomand", "norelatime",
            "nostrictatime", "nosuid", "private", "rbind", "relatime", "remount", "ro",
            "rprivate", "rshared", "rslave", "runbindable", "rw", "shared", "slave",
            "strictatime", "suid", "sync", "tmpcopyup", "unbindable"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "cgroup": {"v1": true, "v2": true, "systemd": true, "systemdUser": false,
                       "unified": cgroups::is_unified()},
            "seccomp": {
                "enabled": true,
                "actions": seccomp::ACTIONS,
                "operators": seccomp::OPERATORS,
                "archs": seccomp::supported_archs(),
                "knownFlags": seccomp::FLAGS.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
                "supportedFlags": seccomp::supported_flags(),
            },
            "apparmor": {"enabled": false},
            // The rootfs of a user-namespaced container, when its owner is not mapped.
            "mountExtensions": {"idmap": {"enabled": true}},
            "selinux": {"enabled": false},
        },
        "annotations": {"org.opencontainers.runtime-spec.features": "nodus-runtime"},
    })
}
