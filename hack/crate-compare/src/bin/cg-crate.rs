//! cgroups, crate: the same cgroup through cgroups-rs's fs API (hierarchies::auto, a
//! Cgroup on the same controllers, Resources applied, each controller's stats read as
//! nodus_runtime's Stats reads them: cpuacct, cpu.stat, memory with swap/kmem/tcp,
//! pids current and max), then deleted. Argument: the cgroup name.

use std::error::Error;

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{hierarchies, Cgroup, MaxValue, Resources};
use nodus_crate_compare as cc;

fn run(name: &str, keep: bool) -> Result<(), Box<dyn Error>> {
    let mut r = Resources::default();
    r.memory.memory_hard_limit = Some(cc::MEMORY_LIMIT);
    r.cpu.shares = Some(cc::CPU_SHARES);
    r.cpu.quota = Some(cc::CPU_QUOTA);
    r.cpu.period = Some(cc::CPU_PERIOD);
    r.pid.maximum_number_of_processes = Some(MaxValue::Value(cc::PIDS_MAX));
    let controllers = cc::CONTROLLERS.iter().map(|c| c.to_string()).collect();
    let cg = Cgroup::new_with_specified_controllers(hierarchies::auto(), name, Some(controllers))?;
    cg.apply(&r)?;
    if cc::cg_setup_only() {
        return finish(&cg, keep);
    }

    let cpuacct: &CpuAcctController = cg.controller_of().ok_or("no cpuacct")?;
    let cpu: &CpuController = cg.controller_of().ok_or("no cpu")?;
    let mem: &MemController = cg.controller_of().ok_or("no memory")?;
    let pids: &PidController = cg.controller_of().ok_or("no pids")?;
    std::hint::black_box(cpuacct.cpuacct());
    std::hint::black_box(cpu.cpu());
    std::hint::black_box(mem.memory_stat());
    std::hint::black_box(mem.memswap());
    std::hint::black_box(mem.kmem_stat());
    std::hint::black_box(mem.kmem_tcp_stat());
    std::hint::black_box(pids.get_pid_current()?);
    match pids.get_pid_max()? {
        MaxValue::Value(v) if v == cc::PIDS_MAX => {}
        other => return Err(format!("pids limit reads {other:?}").into()),
    }
    finish(&cg, keep)
}

fn finish(cg: &Cgroup, keep: bool) -> Result<(), Box<dyn Error>> {
    if !keep {
        cg.delete()?;
    }
    Ok(())
}

fn main() {
    let (a, keep) = cc::args(1, "cg-crate <name>");
    match cc::repeat_count() {
        Some(n) if !keep => cc::repeat("cg-crate", n, || run(&a[0], false)),
        _ => cc::exit_on_error("cg-crate", run(&a[0], keep)),
    }
}
