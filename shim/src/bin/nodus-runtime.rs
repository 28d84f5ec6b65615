//! `nodus-runtime`: runc's command line over the nodus OCI runtime library.
//!
//! A thin layer: parse flags (runc's names), set up runc-style logging, call the
//! library, print results. Errors go to the log (JSON for containerd's runc shim) and
//! to stderr, with exit status 1.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use nodus_shim::cgroups;
use nodus_shim::logging::{Format, RuncLogger};
use nodus_shim::spec::parse_json;
use nodus_shim::{CreateOpts, ExecOpts, Runtime, Status};
use oci_spec::runtime::{LinuxCpu, LinuxPids, LinuxResources, Process};

#[derive(Parser, Debug)]
#[command(
    name = "nodus-runtime",
    about = "An OCI runtime with runc's command line",
    disable_version_flag = true
)]
struct Cli {
    /// State directory for containers.
    #[arg(long, global = true, default_value = "/run/nodus")]
    root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format.
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Debug logging.
    #[arg(long, global = true)]
    debug: bool,
    /// Use systemd for cgroups (not supported).
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility; ignored.
    #[arg(long, global = true, hide = true)]
    criu: Option<String>,
    /// Accepted for runc compatibility; ignored.
    #[arg(long, global = true, hide = true)]
    rootless: Option<String>,
    /// Print the version.
    #[arg(short = 'v', long = "version")]
    version: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Json,
    Text,
}

#[derive(clap::Args, Debug)]
struct CreateArgs {
    /// Bundle directory.
    #[arg(short = 'b', long, default_value = ".")]
    bundle: PathBuf,
    /// File to write the init pid to.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to.
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Use MS_MOVE + chroot instead of pivot_root.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted for runc compatibility; ignored.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// Accepted for runc compatibility; only 0 is supported.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    /// Container id.
    id: String,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a container (init waits for `start`).
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Create, start, wait and delete.
    Run {
        #[command(flatten)]
        c: CreateArgs,
        /// Return after start.
        #[arg(short = 'd', long)]
        detach: bool,
        /// Keep the container after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Print the OCI state.
    State { id: String },
    /// Send a signal (default SIGTERM).
    Kill {
        /// Signal every process of the container.
        #[arg(short = 'a', long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container.
    Delete {
        /// Kill it first if it runs.
        #[arg(short = 'f', long)]
        force: bool,
        id: String,
    },
    /// List the container's processes.
    Ps {
        /// table or json.
        #[arg(short = 'f', long, default_value = "table")]
        format: String,
        id: String,
        /// Ignored (runc passes them to ps).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Run a process in a running container.
    Exec {
        /// process.json to run.
        #[arg(short = 'p', long)]
        process: Option<PathBuf>,
        #[arg(short = 'd', long)]
        detach: bool,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        /// Allocate a pty.
        #[arg(short = 't', long)]
        tty: bool,
        /// Working directory.
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Extra environment KEY=VALUE.
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// uid[:gid].
        #[arg(short = 'u', long)]
        user: Option<String>,
        /// Additional groups.
        #[arg(short = 'g', long = "additional-gids")]
        additional_gids: Vec<u32>,
        /// Set no_new_privs.
        #[arg(long = "no-new-privs")]
        no_new_privs: bool,
        /// Accepted for runc compatibility; only 0 is supported.
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: u32,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Freeze all processes.
    Pause { id: String },
    /// Thaw all processes.
    Resume { id: String },
    /// Change resource limits.
    Update {
        /// LinuxResources JSON file, or - for stdin.
        #[arg(short = 'r', long)]
        resources: Option<String>,
        #[arg(long)]
        memory: Option<i64>,
        #[arg(long = "memory-swap")]
        memory_swap: Option<i64>,
        #[arg(long = "memory-reservation")]
        memory_reservation: Option<i64>,
        #[arg(long = "pids-limit")]
        pids_limit: Option<i64>,
        #[arg(long = "cpu-quota")]
        cpu_quota: Option<i64>,
        #[arg(long = "cpu-period")]
        cpu_period: Option<u64>,
        #[arg(long = "cpu-share")]
        cpu_share: Option<u64>,
        #[arg(long = "cpuset-cpus")]
        cpuset_cpus: Option<String>,
        #[arg(long = "cpuset-mems")]
        cpuset_mems: Option<String>,
        id: String,
    },
    /// Print what this runtime supports (JSON).
    Features,
    /// Print resource statistics.
    Events {
        /// One snapshot, then exit.
        #[arg(long)]
        stats: bool,
        /// Seconds between snapshots.
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// List containers.
    List {
        #[arg(short = 'q', long)]
        quiet: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match cli.log_format {
        LogFormat::Json => Format::Json,
        LogFormat::Text => Format::Text,
    };
    let logger = match RuncLogger::new(cli.log.as_deref(), format, cli.debug) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("nodus-runtime: open log {:?}: {e}", cli.log);
            return ExitCode::FAILURE;
        }
    };
    let to_file = logger.to_file();
    let _ = tracing::subscriber::set_global_default(logger);
    match run(cli) {
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

fn run(cli: Cli) -> anyhow::Result<u8> {
    if cli.version {
        println!("nodus-runtime version {}", env!("CARGO_PKG_VERSION"));
        println!("spec: {}", nodus_shim::container::OCI_VERSION);
        return Ok(0);
    }
    if cli.systemd_cgroup {
        bail!("--systemd-cgroup: the systemd cgroup driver is not supported; use cgroupfs");
    }
    let Some(cmd) = cli.cmd else {
        bail!("no command given (see --help)");
    };
    let rt = Runtime::new(&cli.root);
    let create_opts = |c: &CreateArgs| -> anyhow::Result<CreateOpts> {
        if c.preserve_fds != 0 {
            bail!("--preserve-fds is not supported");
        }
        Ok(CreateOpts {
            id: c.id.clone(),
            bundle: c.bundle.clone(),
            pid_file: c.pid_file.clone(),
            console_socket: c.console_socket.clone(),
            no_pivot: c.no_pivot,
        })
    };
    match cmd {
        Cmd::Create(c) => {
            rt.create(&create_opts(&c)?)?;
        }
        Cmd::Start { id } => rt.start(&id)?,
        Cmd::Run { c, detach, keep } => {
            let o = create_opts(&c)?;
            if keep {
                let pid = rt.create(&o)?;
                rt.start(&o.id)?;
                if detach {
                    return Ok(0);
                }
                let code = wait_pid(pid);
                return Ok(code as u8);
            }
            let code = rt.run(&o, detach)?;
            return Ok(code.clamp(0, 255) as u8);
        }
        Cmd::State { id } => {
            let st = rt.state(&id)?;
            println!("{}", serde_json::to_string_pretty(&st)?);
        }
        Cmd::Kill { all, id, signal } => {
            let sig = nodus_shim::util::parse_signal(&signal)
                .ok_or_else(|| anyhow!("unknown signal {signal:?}"))?;
            rt.kill(&id, sig, all)?;
        }
        Cmd::Delete { force, id } => rt.delete(&id, force)?,
        Cmd::Ps { format, id, .. } => {
            let pids = rt.ps(&id)?;
            match format.as_str() {
                "json" => println!("{}", serde_json::to_string(&pids)?),
                "table" => {
                    println!("{:>8} CMD", "PID");
                    for p in pids {
                        let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
                            .map(|c| {
                                String::from_utf8_lossy(&c)
                                    .replace('\0', " ")
                                    .trim()
                                    .to_string()
                            })
                            .unwrap_or_default();
                        println!("{p:>8} {cmd}");
                    }
                }
                f => bail!("--format {f:?}: use table or json"),
            }
        }
        Cmd::Exec {
            process,
            detach,
            pid_file,
            console_socket,
            tty,
            cwd,
            env,
            user,
            additional_gids,
            no_new_privs,
            preserve_fds,
            id,
            command,
        } => {
            if preserve_fds != 0 {
                bail!("--preserve-fds is not supported");
            }
            let p: Process = match &process {
                Some(f) => {
                    let data =
                        std::fs::read(f).with_context(|| format!("--process {}", f.display()))?;
                    parse_json(&data, &f.display().to_string())?
                }
                None => {
                    if command.is_empty() {
                        bail!("exec: give --process FILE or a command");
                    }
                    let saved = rt.load(&id)?;
                    let mut p = saved.spec.process().clone().unwrap_or_default();
                    p.set_args(Some(command));
                    p.set_terminal(Some(tty));
                    if let Some(c) = cwd {
                        p.set_cwd(c);
                    }
                    let mut e = p.env().clone().unwrap_or_default();
                    e.extend(env);
                    p.set_env(Some(e));
                    if let Some(u) = user {
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
                    if !additional_gids.is_empty() {
                        let mut usr = p.user().clone();
                        usr.set_additional_gids(Some(additional_gids));
                        p.set_user(usr);
                    }
                    if no_new_privs {
                        p.set_no_new_privileges(Some(true));
                    }
                    p
                }
            };
            let code = rt.exec(
                &id,
                &ExecOpts {
                    process: p,
                    detach,
                    pid_file,
                    console_socket,
                },
            )?;
            return Ok(code.clamp(0, 255) as u8);
        }
        Cmd::Pause { id } => rt.pause(&id)?,
        Cmd::Resume { id } => rt.resume(&id)?,
        Cmd::Update {
            resources,
            memory,
            memory_swap,
            memory_reservation,
            pids_limit,
            cpu_quota,
            cpu_period,
            cpu_share,
            cpuset_cpus,
            cpuset_mems,
            id,
        } => {
            let mut r: LinuxResources = match resources.as_deref() {
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
            if let Some(l) = pids_limit {
                let mut p = LinuxPids::default();
                p.set_limit(l);
                r.set_pids(Some(p));
            }
            if cpu_quota.is_some()
                || cpu_period.is_some()
                || cpu_share.is_some()
                || cpuset_cpus.is_some()
                || cpuset_mems.is_some()
            {
                let mut c: LinuxCpu = r.cpu().clone().unwrap_or_default();
                if cpu_quota.is_some() {
                    c.set_quota(cpu_quota);
                }
                if cpu_period.is_some() {
                    c.set_period(cpu_period);
                }
                if cpu_share.is_some() {
                    c.set_shares(cpu_share);
                }
                if cpuset_cpus.is_some() {
                    c.set_cpus(cpuset_cpus);
                }
                if cpuset_mems.is_some() {
                    c.set_mems(cpuset_mems);
                }
                r.set_cpu(Some(c));
            }
            rt.update(&id, &r)?;
        }
        Cmd::Features => println!("{}", serde_json::to_string_pretty(&features())?),
        Cmd::Events {
            stats,
            interval,
            id,
        } => {
            let secs: f64 = interval
                .trim_end_matches('s')
                .parse()
                .map_err(|_| anyhow!("--interval {interval:?}: give seconds like 5s"))?;
            loop {
                let v = rt.stats(&id)?;
                let mut out = std::io::stdout().lock();
                writeln!(out, "{v}")?;
                out.flush()?;
                if stats {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_secs_f64(secs.max(0.1)));
                if rt.state(&id)?.status == Status::Stopped {
                    break;
                }
            }
        }
        Cmd::List { quiet } => {
            let ids = rt.list()?;
            if !quiet {
                println!("{:<40} {:>8} {:<10} BUNDLE", "ID", "PID", "STATUS");
            }
            for id in ids {
                if quiet {
                    println!("{id}");
                } else if let Ok(s) = rt.state(&id) {
                    println!(
                        "{:<40} {:>8} {:<10} {}",
                        id,
                        s.pid,
                        s.status,
                        s.bundle.display()
                    );
                }
            }
        }
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
        "ociVersionMax": nodus_shim::container::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec",
            "mand", "noatime", "nodev", "nodiratime", "noexec", "nomand", "norelatime",
            "nostrictatime", "nosuid", "private", "rbind", "relatime", "remount", "ro",
            "rprivate", "rshared", "rslave", "runbindable", "rw", "shared", "slave",
            "strictatime", "suid", "sync", "tmpcopyup", "unbindable"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false,
                       "unified": cgroups::is_unified()},
            "seccomp": {"enabled": false},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {"org.opencontainers.runtime-spec.features": "nodus-runtime"},
    })
}
