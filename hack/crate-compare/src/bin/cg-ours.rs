//! cgroups, ours: nodus_runtime::cgroups: resolve an absolute cgroupsPath, create the
//! directories (v1: one per controller the runtime joins), apply memory, cpu and pids
//! limits, read the stats the runtime reports, remove. The device allowlist that
//! `Cgroup::create` adds for a container is left out (the crate side has none): create and
//! apply are called per version as `Cgroup::create` calls them. Argument: the cgroup name.

use std::error::Error;
use std::path::PathBuf;

use nodus_crate_compare as cc;
use nodus_runtime::cgroups::Cgroup;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
};

fn run(name: &str, keep: bool) -> Result<(), Box<dyn Error>> {
    let resources = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(cc::MEMORY_LIMIT)
                .build()?,
        )
        .cpu(
            LinuxCpuBuilder::default()
                .shares(cc::CPU_SHARES)
                .quota(cc::CPU_QUOTA)
                .period(cc::CPU_PERIOD)
                .build()?,
        )
        .pids(LinuxPidsBuilder::default().limit(cc::PIDS_MAX).build()?)
        .build()?;
    let path = PathBuf::from(format!("/{name}"));
    let cg = Cgroup::resolve(Some(&path), name)?;
    match &cg {
        Cgroup::V1(c) => {
            c.create()?;
            c.apply(&resources)?;
        }
        Cgroup::V2(c) => {
            c.create()?;
            c.apply(&resources)?;
        }
    }
    if cc::cg_setup_only() {
        return finish(&cg, keep);
    }
    let stats = cg.stats();
    if stats.pids.limit != cc::PIDS_MAX as u64 {
        return Err(format!("pids limit reads {}", stats.pids.limit).into());
    }
    std::hint::black_box(&stats);
    finish(&cg, keep)
}

fn finish(cg: &Cgroup, keep: bool) -> Result<(), Box<dyn Error>> {
    if !keep {
        cg.destroy()?;
    }
    Ok(())
}

fn main() {
    let (a, keep) = cc::args(1, "cg-ours <name>");
    match cc::repeat_count() {
        Some(n) if !keep => cc::repeat("cg-ours", n, || run(&a[0], false)),
        _ => cc::exit_on_error("cg-ours", run(&a[0], keep)),
    }
}
