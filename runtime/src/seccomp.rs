//! `linux.seccomp`: the OCI profile compiled to a classic BPF program and installed
//! with seccomp(2).
//!
//! The program first checks the architecture (an architecture the profile does not
//! cover is killed, as libseccomp's "bad arch" action), then walks the rules in config
//! order: the first rule whose syscall number and argument conditions match returns
//! its action, otherwise the default action. As runc does on top of libseccomp:
//! syscall names unknown on an architecture are skipped, rules whose action equals the
//! default action are dropped, and conditions of one rule are ANDed unless two of them
//! test the same argument, in which case each condition stands alone (ORed).

use std::collections::HashSet;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator,
};

use crate::error::{Error, Result};

/// The kernel's limit on one classic BPF program (BPF_MAXINSNS).
pub const MAX_INSTRUCTIONS: usize = 4096;

// Offsets in struct seccomp_data.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

// Classic BPF opcodes (linux/filter.h): class | size/op | mode/source.
/// BPF_LD | BPF_W | BPF_ABS
const LD_W_ABS: u16 = 0x20;
/// BPF_LD | BPF_W | BPF_MEM
const LD_MEM: u16 = 0x60;
/// BPF_ST
const ST: u16 = 0x02;
/// BPF_ALU | BPF_AND | BPF_K
const ALU_AND_K: u16 = 0x54;
/// BPF_JMP | BPF_JA
const JMP_JA: u16 = 0x05;
/// BPF_JMP | BPF_JEQ | BPF_K
const JMP_JEQ_K: u16 = 0x15;
/// BPF_JMP | BPF_JGT | BPF_K
const JMP_JGT_K: u16 = 0x25;
/// BPF_JMP | BPF_JGE | BPF_K
const JMP_JGE_K: u16 = 0x35;
/// BPF_RET | BPF_K
const RET_K: u16 = 0x06;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
/// x32 syscalls arrive as AUDIT_ARCH_X86_64 with this bit set in the number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Syscalls from an architecture the profile does not cover.
const BAD_ARCH_ACTION: u32 = libc::SECCOMP_RET_KILL_PROCESS;

/// A compiled filter, ready for [`install`].
#[derive(Debug, Clone)]
pub struct Filter {
    /// The BPF program.
    pub program: Vec<libc::sock_filter>,
    /// SECCOMP_FILTER_FLAG_* bits.
    pub flags: libc::c_ulong,
}

/// Architectures whose syscalls this build can filter: the native one, and its
/// compat ABIs. Names as in `linux.seccomp.architectures`.
pub fn supported_archs() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    } else if cfg!(target_arch = "aarch64") {
        &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        &[]
    }
}

/// Actions `linux.seccomp` may use here.
pub const ACTIONS: &[&str] = &[
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
];

/// Argument operators.
pub const OPERATORS: &[&str] = &[
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];

/// Filter flags we know, with their kernel bits.
pub const FLAGS: &[(&str, libc::c_ulong)] = &[
    ("SECCOMP_FILTER_FLAG_TSYNC", libc::SECCOMP_FILTER_FLAG_TSYNC),
    ("SECCOMP_FILTER_FLAG_LOG", libc::SECCOMP_FILTER_FLAG_LOG),
    (
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
    ),
];

/// The flags of [`FLAGS`] this kernel accepts (probed as runc does: a supported flag
/// with a NULL program fails with EFAULT, an unknown one with EINVAL).
pub fn supported_flags() -> Vec<&'static str> {
    FLAGS
        .iter()
        .filter(|(_, bit)| {
            // SAFETY: seccomp(2) with a NULL program only validates its arguments.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    *bit,
                    std::ptr::null::<libc::sock_fprog>(),
                )
            };
            r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EFAULT)
        })
        .map(|(name, _)| *name)
        .collect()
}

/// One architecture's part of the program.
struct Section {
    audit_arch: u32,
    /// Syscall name to number on this architecture.
    lookup: fn(&str) -> Option<u32>,
    /// Arguments are 64-bit (else only their low 32 bits are compared).
    wide: bool,
    /// Also filter x32 syscalls here (x86_64 numbers with the x32 bit).
    x32: bool,
}

#[cfg(target_arch = "x86_64")]
fn lookup_native(name: &str) -> Option<u32> {
    name.parse::<syscalls::x86_64::Sysno>()
        .ok()
        .map(|s| s.id() as u32)
}

#[cfg(target_arch = "x86_64")]
fn lookup_compat(name: &str) -> Option<u32> {
    name.parse::<syscalls::x86::Sysno>()
        .ok()
        .map(|s| s.id() as u32)
}

#[cfg(target_arch = "aarch64")]
fn lookup_native(name: &str) -> Option<u32> {
    name.parse::<syscalls::aarch64::Sysno>()
        .ok()
        .map(|s| s.id() as u32)
}

#[cfg(target_arch = "aarch64")]
fn lookup_compat(name: &str) -> Option<u32> {
    name.parse::<syscalls::arm::Sysno>()
        .ok()
        .map(|s| s.id() as u32)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn lookup_native(_name: &str) -> Option<u32> {
    None
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn lookup_compat(_name: &str) -> Option<u32> {
    None
}

/// The sections for the profile's architectures: always the native one (as
/// libseccomp), plus the compat ABIs listed. Listed architectures that cannot run on
/// this machine are ignored: no syscall ever arrives from them.
fn sections(archs: &[Arch]) -> Result<Vec<Section>> {
    let (native, compat) = if cfg!(target_arch = "x86_64") {
        (
            (AUDIT_ARCH_X86_64, Arch::ScmpArchX86_64),
            (AUDIT_ARCH_I386, Arch::ScmpArchX86),
        )
    } else if cfg!(target_arch = "aarch64") {
        (
            (AUDIT_ARCH_AARCH64, Arch::ScmpArchAarch64),
            (AUDIT_ARCH_ARM, Arch::ScmpArchArm),
        )
    } else {
        return Err(Error::config(
            "linux.seccomp",
            "seccomp filters are only supported on x86_64 and aarch64",
        ));
    };
    let mut out = vec![Section {
        audit_arch: native.0,
        lookup: lookup_native,
        wide: true,
        x32: cfg!(target_arch = "x86_64") && archs.contains(&Arch::ScmpArchX32),
    }];
    if archs.contains(&compat.1) {
        out.push(Section {
            audit_arch: compat.0,
            lookup: lookup_compat,
            wide: false,
            x32: false,
        });
    }
    Ok(out)
}

/// The SECCOMP_RET_* value of an action; `field` names it in errors.
fn action_value(a: LinuxSeccompAction, errno_ret: Option<u32>, field: &str) -> Result<u32> {
    let data = |what: &str| -> Result<u32> {
        let v = errno_ret.unwrap_or(libc::EPERM as u32);
        if v > 4095 {
            return Err(Error::config(
                field.replace("action", what),
                format!("{v} is not an errno value (0..4095)"),
            ));
        }
        Ok(v)
    };
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => libc::SECCOMP_RET_ALLOW,
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            libc::SECCOMP_RET_KILL_THREAD
        }
        LinuxSeccompAction::ScmpActKillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => libc::SECCOMP_RET_TRAP,
        LinuxSeccompAction::ScmpActLog => libc::SECCOMP_RET_LOG,
        LinuxSeccompAction::ScmpActErrno => libc::SECCOMP_RET_ERRNO | data("errnoRet")?,
        LinuxSeccompAction::ScmpActTrace => libc::SECCOMP_RET_TRACE | data("errnoRet")?,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(Error::config(
                field,
                "SCMP_ACT_NOTIFY is not supported by nodus-runtime (no seccomp agent)",
            ))
        }
    })
}

/// A syscall rule after validation: any of `alternatives` (each an AND of
/// conditions; an empty one always matches) makes the syscall return `action`.
struct Rule<'a> {
    names: &'a [String],
    action: u32,
    alternatives: Vec<Vec<LinuxSeccompArg>>,
}

fn rules(s: &LinuxSeccomp, default: u32) -> Result<Vec<Rule<'_>>> {
    let mut out = vec![];
    for (i, sc) in s.syscalls().as_deref().unwrap_or(&[]).iter().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        if sc.names().is_empty() || sc.names().iter().any(|n| n.is_empty()) {
            return Err(Error::config(
                format!("{field}.names"),
                "must name at least one syscall",
            ));
        }
        let action = action_value(sc.action(), sc.errno_ret(), &format!("{field}.action"))?;
        let args = sc.args().as_deref().unwrap_or(&[]);
        let mut indexes = HashSet::new();
        let mut repeated = false;
        for (j, a) in args.iter().enumerate() {
            if a.index() >= 6 {
                return Err(Error::config(
                    format!("{field}.args[{j}].index"),
                    format!("{} is not a syscall argument index (0..5)", a.index()),
                ));
            }
            repeated |= !indexes.insert(a.index());
        }
        if action == default {
            continue;
        }
        let alternatives = if repeated {
            args.iter().map(|a| vec![*a]).collect()
        } else {
            vec![args.to_vec()]
        };
        out.push(Rule {
            names: sc.names(),
            action,
            alternatives,
        });
    }
    Ok(out)
}

/// Compile `linux.seccomp`.
pub fn compile(s: &LinuxSeccomp) -> Result<Filter> {
    let default = action_value(
        s.default_action(),
        s.default_errno_ret(),
        "linux.seccomp.defaultAction",
    )?;
    if s.default_errno_ret().is_some() && s.default_action() != LinuxSeccompAction::ScmpActErrno {
        tracing::debug!("linux.seccomp.defaultErrnoRet ignored: defaultAction is not ERRNO");
    }
    let mut flags = 0;
    for f in s.flags().as_deref().unwrap_or(&[]) {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            // Only meaningful with a notification listener, which we never create.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
        };
    }
    let rules = rules(s, default)?;
    let sections = sections(s.architectures().as_deref().unwrap_or(&[]))?;
    let program = generate(&sections, &rules, default)?;
    if program.len() > MAX_INSTRUCTIONS {
        return Err(Error::config(
            "linux.seccomp",
            format!(
                "the profile needs {} BPF instructions; the kernel takes at most {MAX_INSTRUCTIONS}",
                program.len()
            ),
        ));
    }
    Ok(Filter { program, flags })
}

/// Install `f` on the calling thread (all threads with TSYNC). Needs no_new_privs or
/// CAP_SYS_ADMIN.
pub fn install(f: &Filter) -> Result<()> {
    let prog = libc::sock_fprog {
        len: f.program.len() as u16,
        filter: f.program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: the kernel copies the program; `prog` points into `f`, alive here.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            f.flags,
            &prog as *const libc::sock_fprog,
        )
    };
    match r {
        0 => Ok(()),
        r if r > 0 => Err(Error::Other(format!(
            "linux.seccomp: thread {r} could not be synchronized (SECCOMP_FILTER_FLAG_TSYNC)"
        ))),
        _ => Err(Error::Io {
            context: "linux.seccomp: seccomp(SECCOMP_SET_MODE_FILTER)".into(),
            source: std::io::Error::last_os_error(),
        }),
    }
}

// ---- code generation -------------------------------------------------------------

#[derive(Clone, Copy)]
enum Target {
    Next,
    Label(usize),
}

enum Insn {
    Stmt(u16, u32),
    Jump(u16, u32, Target, Target),
    Always(usize),
    Label(usize),
}

#[derive(Default)]
struct Asm {
    code: Vec<Insn>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels += 1;
        self.labels - 1
    }
    fn place(&mut self, l: usize) {
        self.code.push(Insn::Label(l));
    }
    fn stmt(&mut self, code: u16, k: u32) {
        self.code.push(Insn::Stmt(code, k));
    }
    fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) {
        self.code.push(Insn::Jump(code, k, jt, jf));
    }
    fn ret(&mut self, v: u32) {
        self.stmt(RET_K, v);
    }

    /// Resolve labels into relative offsets.
    fn finish(self) -> Result<Vec<libc::sock_filter>> {
        let mut at = vec![usize::MAX; self.labels];
        let mut pc = 0;
        for i in &self.code {
            match i {
                Insn::Label(l) => at[*l] = pc,
                _ => pc += 1,
            }
        }
        let mut out = Vec::with_capacity(pc);
        for i in &self.code {
            let pc = out.len();
            let off = |t: Target| -> Result<u8> {
                let d = match t {
                    Target::Next => 0,
                    Target::Label(l) => at[l] - pc - 1,
                };
                u8::try_from(d).map_err(|_| {
                    Error::config(
                        "linux.seccomp",
                        "a rule is too large for a BPF conditional jump (over 255 instructions)",
                    )
                })
            };
            let f = match i {
                Insn::Label(_) => continue,
                Insn::Stmt(code, k) => bpf(*code, *k, 0, 0),
                Insn::Jump(code, k, jt, jf) => bpf(*code, *k, off(*jt)?, off(*jf)?),
                Insn::Always(l) => bpf(JMP_JA, (at[*l] - pc - 1) as u32, 0, 0),
            };
            out.push(f);
        }
        Ok(out)
    }
}

fn bpf(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Unconditional names are tested in runs of this many JEQs sharing one RET (a
/// conditional jump reaches at most 255 instructions ahead).
const RUN: usize = 200;

fn generate(sections: &[Section], rules: &[Rule], default: u32) -> Result<Vec<libc::sock_filter>> {
    let mut a = Asm::default();
    let starts: Vec<usize> = sections.iter().map(|_| a.label()).collect();
    a.stmt(LD_W_ABS, OFF_ARCH);
    for (s, start) in sections.iter().zip(&starts) {
        let other = a.label();
        a.jump(JMP_JEQ_K, s.audit_arch, Target::Next, Target::Label(other));
        a.code.push(Insn::Always(*start));
        a.place(other);
    }
    a.ret(BAD_ARCH_ACTION);
    for (s, start) in sections.iter().zip(&starts) {
        a.place(*start);
        section(&mut a, s, rules, default);
    }
    a.finish()
}

fn section(a: &mut Asm, s: &Section, rules: &[Rule], default: u32) {
    a.stmt(LD_W_ABS, OFF_NR);
    if s.x32 {
        // x32 numbers are x86_64's with a flag bit: drop it, keep the result in M[0].
        a.stmt(ALU_AND_K, !X32_SYSCALL_BIT);
        a.stmt(ST, 0);
    } else if s.audit_arch == AUDIT_ARCH_X86_64 {
        // x32 was not asked for: its syscalls are a bad architecture.
        let ok = a.label();
        a.jump(JMP_JGE_K, X32_SYSCALL_BIT, Target::Next, Target::Label(ok));
        a.ret(BAD_ARCH_ACTION);
        a.place(ok);
    }
    let reload = |a: &mut Asm| {
        if s.x32 {
            a.stmt(LD_MEM, 0);
        } else {
            a.stmt(LD_W_ABS, OFF_NR);
        }
    };
    // Whether the accumulator holds the syscall number.
    let mut have_nr = true;
    for r in rules {
        let nrs: Vec<u32> = r.names.iter().filter_map(|n| (s.lookup)(n)).collect();
        if nrs.is_empty() {
            continue;
        }
        if r.alternatives.iter().any(|alt| alt.is_empty()) {
            for run in nrs.chunks(RUN) {
                if !have_nr {
                    reload(a);
                    have_nr = true;
                }
                let hit = a.label();
                let miss = a.label();
                let (last, first) = run.split_last().expect("chunks are not empty");
                for nr in first {
                    a.jump(JMP_JEQ_K, *nr, Target::Label(hit), Target::Next);
                }
                a.jump(JMP_JEQ_K, *last, Target::Next, Target::Label(miss));
                a.place(hit);
                a.ret(r.action);
                a.place(miss);
            }
            continue;
        }
        for nr in &nrs {
            for alt in &r.alternatives {
                if !have_nr {
                    reload(a);
                }
                let miss = a.label();
                a.jump(JMP_JEQ_K, *nr, Target::Next, Target::Label(miss));
                for cond in alt {
                    condition(a, cond, s.wide, miss);
                }
                have_nr = false;
                a.ret(r.action);
                a.place(miss);
            }
        }
    }
    a.ret(default);
}

/// Test one argument condition: fall through when it holds, jump to `fail` if not.
fn condition(a: &mut Asm, c: &LinuxSeccompArg, wide: bool, fail: usize) {
    let lo_off = OFF_ARGS + 8 * c.index() as u32;
    let (lo_off, hi_off) = if cfg!(target_endian = "little") {
        (lo_off, lo_off + 4)
    } else {
        (lo_off + 4, lo_off)
    };
    let split = |v: u64| ((v >> 32) as u32, v as u32);
    let (v_hi, v_lo) = split(c.value());
    let fail = Target::Label(fail);
    let ok = a.label();
    let okt = Target::Label(ok);
    let next = Target::Next;
    use LinuxSeccompOperator as Op;
    match c.op() {
        Op::ScmpCmpEq => {
            if wide {
                a.stmt(LD_W_ABS, hi_off);
                a.jump(JMP_JEQ_K, v_hi, next, fail);
            }
            a.stmt(LD_W_ABS, lo_off);
            a.jump(JMP_JEQ_K, v_lo, next, fail);
        }
        Op::ScmpCmpNe => {
            if wide {
                a.stmt(LD_W_ABS, hi_off);
                a.jump(JMP_JEQ_K, v_hi, next, okt);
            }
            a.stmt(LD_W_ABS, lo_off);
            a.jump(JMP_JEQ_K, v_lo, fail, next);
        }
        Op::ScmpCmpMaskedEq => {
            let (d_hi, d_lo) = split(c.value_two().unwrap_or(0));
            if wide {
                a.stmt(LD_W_ABS, hi_off);
                a.stmt(ALU_AND_K, v_hi);
                a.jump(JMP_JEQ_K, d_hi, next, fail);
            }
            a.stmt(LD_W_ABS, lo_off);
            a.stmt(ALU_AND_K, v_lo);
            a.jump(JMP_JEQ_K, d_lo, next, fail);
        }
        Op::ScmpCmpGt | Op::ScmpCmpGe => {
            // Unsigned 64-bit: the high words decide unless they are equal.
            if wide {
                a.stmt(LD_W_ABS, hi_off);
                a.jump(JMP_JGT_K, v_hi, okt, next);
                a.jump(JMP_JEQ_K, v_hi, next, fail);
            }
            a.stmt(LD_W_ABS, lo_off);
            let op = if c.op() == Op::ScmpCmpGt {
                JMP_JGT_K
            } else {
                JMP_JGE_K
            };
            a.jump(op, v_lo, next, fail);
        }
        Op::ScmpCmpLt | Op::ScmpCmpLe => {
            if wide {
                a.stmt(LD_W_ABS, hi_off);
                a.jump(JMP_JGT_K, v_hi, fail, next);
                a.jump(JMP_JEQ_K, v_hi, next, okt);
            }
            a.stmt(LD_W_ABS, lo_off);
            // arg < v  <=>  !(arg >= v);  arg <= v  <=>  !(arg > v)
            let op = if c.op() == Op::ScmpCmpLt {
                JMP_JGE_K
            } else {
                JMP_JGT_K
            };
            a.jump(op, v_lo, fail, next);
        }
    }
    a.place(ok);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic BPF interpreter for the opcodes we emit, over a seccomp_data.
    fn run(prog: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, v) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        let word = |off: u32| {
            let o = off as usize;
            u32::from_le_bytes(data[o..o + 4].try_into().unwrap())
        };
        let (mut acc, mut mem, mut pc) = (0u32, [0u32; 16], 0usize);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => acc = word(i.k),
                LD_MEM => acc = mem[i.k as usize],
                ST => mem[i.k as usize] = acc,
                ALU_AND_K => acc &= i.k,
                JMP_JA => pc += i.k as usize,
                JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K => {
                    let t = match i.code {
                        JMP_JEQ_K => acc == i.k,
                        JMP_JGT_K => acc > i.k,
                        _ => acc >= i.k,
                    };
                    pc += if t { i.jt } else { i.jf } as usize;
                }
                RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn profile(v: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(v).unwrap()
    }

    fn nr(name: &str) -> u32 {
        lookup_native(name).unwrap()
    }

    #[cfg(target_arch = "x86_64")]
    const NATIVE: u32 = AUDIT_ARCH_X86_64;
    #[cfg(target_arch = "aarch64")]
    const NATIVE: u32 = AUDIT_ARCH_AARCH64;

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;

    #[test]
    fn instruction_sequence_of_a_small_profile() {
        let f = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdirat", "no_such_syscall"], "action": "SCMP_ACT_ERRNO"}]
        })))
        .unwrap();
        let mkdirat = nr("mkdirat");
        let mut expect = vec![
            bpf(LD_W_ABS, OFF_ARCH, 0, 0),
            bpf(JMP_JEQ_K, NATIVE, 0, 1),
            bpf(JMP_JA, 1, 0, 0),
            bpf(RET_K, BAD_ARCH_ACTION, 0, 0),
            bpf(LD_W_ABS, OFF_NR, 0, 0),
        ];
        if cfg!(target_arch = "x86_64") {
            expect.push(bpf(JMP_JGE_K, X32_SYSCALL_BIT, 0, 1));
            expect.push(bpf(RET_K, BAD_ARCH_ACTION, 0, 0));
        }
        expect.extend([
            bpf(JMP_JEQ_K, mkdirat, 0, 1),
            bpf(RET_K, EPERM, 0, 0),
            bpf(RET_K, ALLOW, 0, 0),
        ]);
        let show = |p: &[libc::sock_filter]| {
            p.iter()
                .map(|i| (i.code, i.jt, i.jf, i.k))
                .collect::<Vec<_>>()
        };
        assert_eq!(show(&f.program), show(&expect));
        assert_eq!(f.flags, 0);
    }

    #[test]
    fn first_matching_rule_decides() {
        let f = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64", "SCMP_ARCH_S390X"],
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22},
                {"names": ["getpid"], "action": "SCMP_ACT_KILL_PROCESS"},
                {"names": ["read"], "action": "SCMP_ACT_TRAP"}
            ]
        })))
        .unwrap();
        let p = &f.program;
        let none = [0; 6];
        let enosys = libc::SECCOMP_RET_ERRNO | 38;
        assert_eq!(run(p, NATIVE, nr("read"), none), ALLOW);
        assert_eq!(run(p, NATIVE, nr("write"), none), ALLOW);
        assert_eq!(run(p, NATIVE, nr("close"), none), enosys);
        assert_eq!(
            run(p, NATIVE, nr("getpid"), none),
            libc::SECCOMP_RET_KILL_PROCESS
        );
        let pers = nr("personality");
        assert_eq!(run(p, NATIVE, pers, [8, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(
            run(p, NATIVE, pers, [8 | 1 << 32, 0, 0, 0, 0, 0]),
            libc::SECCOMP_RET_ERRNO | 22
        );
        assert_eq!(run(p, NATIVE, pers, [0; 6]), libc::SECCOMP_RET_ERRNO | 22);
        assert_eq!(run(p, 0x1234, nr("read"), none), BAD_ARCH_ACTION);
        if cfg!(target_arch = "x86_64") {
            // i386: read is 3 there, and its arguments are 32-bit.
            assert_eq!(run(p, AUDIT_ARCH_I386, 3, none), ALLOW);
            assert_eq!(run(p, AUDIT_ARCH_I386, 136, [8, 0, 0, 0, 0, 0]), ALLOW);
            // x32 was not listed: killed.
            assert_eq!(
                run(p, NATIVE, nr("read") | X32_SYSCALL_BIT, none),
                BAD_ARCH_ACTION
            );
        }
    }

    #[test]
    fn argument_operators_compare_64_bit_values() {
        let big = 0x1_0000_0005u64;
        let ops = [
            (
                "SCMP_CMP_EQ",
                0u64,
                &[(big, true), (5, false), (big + 1, false)][..],
            ),
            (
                "SCMP_CMP_NE",
                0,
                &[(big, false), (5, true), (big | 1 << 40, true)],
            ),
            (
                "SCMP_CMP_GT",
                0,
                &[(big + 1, true), (big, false), (6, false), (1 << 33, true)],
            ),
            (
                "SCMP_CMP_GE",
                0,
                &[(big, true), (big - 1, false), (1 << 33, true)],
            ),
            (
                "SCMP_CMP_LT",
                0,
                &[(big - 1, true), (big, false), (1 << 33, false), (9, true)],
            ),
            (
                "SCMP_CMP_LE",
                0,
                &[(big, true), (big + 1, false), (0, true)],
            ),
            // (arg & value) == valueTwo
            (
                "SCMP_CMP_MASKED_EQ",
                0x1_0000_0001,
                &[(big, true), (0x1_0000_0000, false), (big | 2, true)],
            ),
        ];
        for (op, two, cases) in ops {
            let value_two = if op == "SCMP_CMP_MASKED_EQ" {
                big & two
            } else {
                0
            };
            let value = if op == "SCMP_CMP_MASKED_EQ" { two } else { big };
            let f = compile(&profile(serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["ioctl"], "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": 2, "value": value, "valueTwo": value_two, "op": op}]}]
            })))
            .unwrap();
            for (arg, hit) in cases {
                let got = run(&f.program, NATIVE, nr("ioctl"), [0, 0, *arg, 0, 0, 0]);
                assert_eq!(got == EPERM, *hit, "{op} arg {arg:#x}");
            }
        }
    }

    #[test]
    fn conditions_on_the_same_argument_are_ored() {
        let f = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]},
                {"names": ["ioctl"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                {"index": 1, "value": 2, "op": "SCMP_CMP_EQ"}]}]
        })))
        .unwrap();
        let s = nr("socket");
        assert_eq!(run(&f.program, NATIVE, s, [1, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(&f.program, NATIVE, s, [2, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(&f.program, NATIVE, s, [3, 0, 0, 0, 0, 0]), EPERM);
        let i = nr("ioctl");
        assert_eq!(run(&f.program, NATIVE, i, [1, 2, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(&f.program, NATIVE, i, [1, 3, 0, 0, 0, 0]), EPERM);
    }

    #[test]
    fn long_allow_lists_fit() {
        let names: Vec<String> = (0..400)
            .filter_map(|n| lookup_native_name(n).map(str::to_string))
            .collect();
        let f = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}]
        })))
        .unwrap();
        assert!(
            f.program.len() < 2 * names.len() + 50,
            "{}",
            f.program.len()
        );
        for n in &names {
            assert_eq!(run(&f.program, NATIVE, nr(n), [0; 6]), ALLOW, "{n}");
        }
        if cfg!(target_arch = "x86_64") {
            // x32 uses x86_64's numbers with the x32 bit.
            let r = nr("read") | X32_SYSCALL_BIT;
            assert_eq!(run(&f.program, NATIVE, r, [0; 6]), ALLOW);
        }
    }

    fn lookup_native_name(n: u32) -> Option<&'static str> {
        #[cfg(target_arch = "x86_64")]
        let s = syscalls::x86_64::Sysno::new(n as usize);
        #[cfg(target_arch = "aarch64")]
        let s = syscalls::aarch64::Sysno::new(n as usize);
        s.map(|s| s.name())
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (
                serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"}),
                "linux.seccomp.defaultAction",
            ),
            (
                serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]}),
                "linux.seccomp.syscalls[0].errnoRet",
            ),
            (
                serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                    {"names": [], "action": "SCMP_ACT_ERRNO"}]}),
                "linux.seccomp.syscalls[0].names",
            ),
            (
                serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ERRNO",
                     "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}),
                "linux.seccomp.syscalls[0].args[0].index",
            ),
        ];
        for (v, field) in cases {
            let e = compile(&profile(v)).unwrap_err().to_string();
            assert!(e.starts_with(field), "{field}: {e}");
        }
    }
}
