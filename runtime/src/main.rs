//! `nodus-runtime`: runc's command line over the nodus OCI runtime library.
//!
//! A thin layer: parse flags (runc's names), set up runc-style logging, call the
//! library, print results. Errors go to the log (JSON for containerd's runc shim) and
//! to stderr, with exit status 1.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _};
use nodus_runtime::cli::{self, Opts, USAGE};
use nodus_runtime::logging::{Format, RuncLogger};
use nodus_runtime::spec::parse_json;
use nodus_runtime::{cgroups, seccomp};
use nodus_runtime::{CreateOpts, ExecOpts, Runtime, Status};
use oci_spec::runtime::{LinuxResources, Process};

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

fn main() -> ExitCode {
    let (opts, cmd) = match cli::parse(std::env::args_os().skip(1).collect()) {
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
                        return Err(cli::CliError::NoCommand.into());
                    }
                    let saved = rt.load(&id)?;
                    cli::exec_process(&o, saved.process.clone().unwrap_or_default())?
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
            let r: LinuxResources = match o.val("resources").as_deref() {
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
            let r = cli::update_resources(&o, r)?;
            rt.update(&id, &r)?;
        }
        "features" => outln!("{}", serde_json::to_string_pretty(&features())?),
        "events" => {
            let id = o.id("events")?;
            let interval = cli::interval(&o)?;
            loop {
                // runc's event shape: {"type":"stats","id":..,"data":{cpu, memory, pids}}.
                let v = serde_json::json!({"type": "stats", "id": id, "data": rt.stats(&id)?});
                let mut out = std::io::stdout().lock();
                writeln!(out, "{v}")?;
                out.flush()?;
                if o.has("stats") {
                    break;
                }
                std::thread::sleep(interval);
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
