//! Device access rules (`linux.resources.devices`).
//!
//! The effective list is the config's rules followed by the rules every container gets
//! (as runc appends them): mknod of any device, the default devices, `/dev/pts/*`,
//! `/dev/ptmx` and `/dev/net/tun`. Among the rules the last one that matches a device
//! and an access bit decides that bit; what no rule covers is denied.
//!
//! cgroup v1 takes the list as `devices.allow`/`devices.deny` writes. cgroup v2 has no
//! device files: the list becomes an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE`
//! (instructions encoded here by hand, loaded with the raw `bpf(2)` syscall) attached to
//! the container's cgroup with `BPF_F_ALLOW_MULTI`. Replacing the rules attaches the new
//! program first and then detaches the old ones (found with `BPF_PROG_QUERY`), so there
//! is no moment without a filter. Removing the cgroup releases its programs.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};

use crate::error::{Context, Error, Result};

/// Access bits of `struct bpf_cgroup_dev_ctx` (BPF_DEVCG_ACC_*).
const ACC_MKNOD: u32 = 1;
const ACC_READ: u32 = 2;
const ACC_WRITE: u32 = 4;
const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;
/// Device types of `struct bpf_cgroup_dev_ctx` (BPF_DEVCG_DEV_*).
const DEV_BLOCK: u32 = 1;
const DEV_CHAR: u32 = 2;

/// One rule, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Allow (else deny).
    pub allow: bool,
    /// DEV_BLOCK or DEV_CHAR; `None`: every device (type "a", which ignores the numbers).
    pub typ: Option<u32>,
    /// `None`: any major.
    pub major: Option<u32>,
    /// `None`: any minor.
    pub minor: Option<u32>,
    /// ACC_* bits.
    pub access: u32,
}

impl Rule {
    fn new(
        allow: bool,
        typ: Option<u32>,
        major: Option<u32>,
        minor: Option<u32>,
        acc: u32,
    ) -> Rule {
        Rule {
            allow,
            typ,
            major,
            minor,
            access: acc,
        }
    }

    /// The line for cgroup v1's devices.allow / devices.deny.
    pub fn v1_line(&self) -> String {
        let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        let t = match self.typ {
            None => return "a".into(),
            Some(DEV_BLOCK) => 'b',
            Some(_) => 'c',
        };
        let mut acc = String::new();
        for (bit, c) in [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')] {
            if self.access & bit != 0 {
                acc.push(c);
            }
        }
        format!("{t} {}:{} {acc}", num(self.major), num(self.minor))
    }

    /// Whether this rule covers every device and every access.
    fn covers_all(&self) -> bool {
        self.typ.is_none() && self.access == ACC_ALL
    }
}

/// Check one OCI rule; `field` is its JSON path.
pub fn parse(d: &LinuxDeviceCgroup, field: &str) -> Result<Rule> {
    let typ = match d.typ() {
        None | Some(LinuxDeviceType::A) => None,
        Some(LinuxDeviceType::B) => Some(DEV_BLOCK),
        Some(LinuxDeviceType::C | LinuxDeviceType::U) => Some(DEV_CHAR),
        Some(LinuxDeviceType::P) => {
            return Err(Error::config(
                format!("{field}.type"),
                "\"p\" (FIFO) is not a device type for cgroup rules (a, b, c)",
            ))
        }
    };
    let num = |v: Option<i64>, what: &str| -> Result<Option<u32>> {
        match v {
            None | Some(-1) => Ok(None),
            // The eBPF compare takes a sign-extended 32-bit immediate.
            Some(n) if (0..=i32::MAX as i64).contains(&n) => Ok(Some(n as u32)),
            Some(n) => Err(Error::config(
                format!("{field}.{what}"),
                format!("{n} is not a device number (-1 for any)"),
            )),
        }
    };
    let major = num(d.major(), "major")?;
    let minor = num(d.minor(), "minor")?;
    let mut access = 0;
    for c in d.access().as_deref().unwrap_or("").chars() {
        access |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => {
                return Err(Error::config(
                    format!("{field}.access"),
                    format!("{c:?} is not one of r, w, m"),
                ))
            }
        };
    }
    if access == 0 {
        access = ACC_ALL;
    }
    Ok(Rule::new(d.allow(), typ, major, minor, access))
}

/// The rules every container gets after its own.
pub fn default_rules() -> Vec<Rule> {
    let c = |maj: Option<u32>, min: Option<u32>, acc: u32| {
        Rule::new(true, Some(DEV_CHAR), maj, min, acc)
    };
    vec![
        c(None, None, ACC_MKNOD),
        Rule::new(true, Some(DEV_BLOCK), None, None, ACC_MKNOD),
        c(Some(1), Some(3), ACC_ALL),    // /dev/null
        c(Some(1), Some(8), ACC_ALL),    // /dev/random
        c(Some(1), Some(7), ACC_ALL),    // /dev/full
        c(Some(5), Some(0), ACC_ALL),    // /dev/tty
        c(Some(1), Some(5), ACC_ALL),    // /dev/zero
        c(Some(1), Some(9), ACC_ALL),    // /dev/urandom
        c(Some(136), None, ACC_ALL),     // /dev/pts/*
        c(Some(5), Some(2), ACC_ALL),    // /dev/ptmx
        c(Some(10), Some(200), ACC_ALL), // /dev/net/tun
    ]
}

/// The effective rule list of `r`: its devices, then [`default_rules`].
pub fn rules(r: &LinuxResources) -> Result<Vec<Rule>> {
    let mut out = vec![];
    for (i, d) in r.devices().as_deref().unwrap_or(&[]).iter().enumerate() {
        out.push(parse(d, &format!("linux.resources.devices[{i}]"))?);
    }
    out.extend(default_rules());
    Ok(out)
}

// ---- eBPF code generation ----------------------------------------------------------

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// dst_reg:4, src_reg:4 (bitfield order of the target).
    pub regs: u8,
    /// Jump offset or memory offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

// Opcodes (linux/bpf_common.h, linux/bpf.h): class | op | source.
/// BPF_LDX | BPF_MEM | BPF_W: dst = *(u32 *)(src + off)
const LDX_MEM_W: u8 = 0x61;
/// BPF_ALU64 | BPF_AND | BPF_K: dst &= imm
const AND64_K: u8 = 0x57;
/// BPF_ALU64 | BPF_RSH | BPF_K: dst >>= imm
const RSH64_K: u8 = 0x77;
/// BPF_ALU64 | BPF_MOV | BPF_K: dst = imm
const MOV64_K: u8 = 0xb7;
/// BPF_ALU64 | BPF_MOV | BPF_X: dst = src
const MOV64_X: u8 = 0xbf;
/// BPF_JMP | BPF_JEQ | BPF_K: if dst == imm goto +off
const JEQ_K: u8 = 0x15;
/// BPF_JMP | BPF_JNE | BPF_K: if dst != imm goto +off
const JNE_K: u8 = 0x55;
/// BPF_JMP | BPF_EXIT
const EXIT: u8 = 0x95;

// Registers: R1 = context (then scratch), R2 = device type, R3 unused, R4 = major,
// R5 = minor, R6 = access bits not decided yet, R0 = verdict.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    let regs = if cfg!(target_endian = "little") {
        src << 4 | dst
    } else {
        dst << 4 | src
    };
    Insn {
        code,
        regs,
        off,
        imm,
    }
}

/// A jump to the end of the current rule's block, patched when the block is complete.
const TO_NEXT: i16 = i16::MIN;

/// The program for `rules` (an effective list, see [`rules`]).
///
/// It walks the rules from the last to the first, keeping in R6 the requested access
/// bits no rule has decided yet: a matching deny rule that covers one of them denies
/// the request; a matching allow rule settles the bits it covers and allows once none
/// is left. Rules before the last one that covers every device and access are never
/// reached; that rule (or, without one, deny) is the verdict when nothing else decides.
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let (rest, fallback) = match rules.iter().rposition(Rule::covers_all) {
        Some(i) => (&rules[i + 1..], rules[i].allow),
        None => (rules, false),
    };
    let mut p = vec![
        insn(LDX_MEM_W, R2, R1, 0, 0), // access_type
        insn(AND64_K, R2, 0, 0, 0xffff),
        insn(LDX_MEM_W, R6, R1, 0, 0),
        insn(RSH64_K, R6, 0, 0, 16),
        insn(LDX_MEM_W, R4, R1, 4, 0), // major
        insn(LDX_MEM_W, R5, R1, 8, 0), // minor
    ];
    for r in rest.iter().rev() {
        let mut b = vec![];
        if let Some(t) = r.typ {
            b.push(insn(JNE_K, R2, 0, TO_NEXT, t as i32));
            if let Some(m) = r.major {
                b.push(insn(JNE_K, R4, 0, TO_NEXT, m as i32));
            }
            if let Some(m) = r.minor {
                b.push(insn(JNE_K, R5, 0, TO_NEXT, m as i32));
            }
        }
        if r.access != ACC_ALL {
            // Does the rule cover any undecided bit?
            b.push(insn(MOV64_X, R1, R6, 0, 0));
            b.push(insn(AND64_K, R1, 0, 0, r.access as i32));
            b.push(insn(JEQ_K, R1, 0, TO_NEXT, 0));
        }
        if r.allow && r.access != ACC_ALL {
            b.push(insn(AND64_K, R6, 0, 0, !(r.access as i32)));
            b.push(insn(JNE_K, R6, 0, TO_NEXT, 0));
        }
        b.push(insn(MOV64_K, R0, 0, 0, r.allow as i32));
        b.push(insn(EXIT, 0, 0, 0, 0));
        let n = b.len();
        for (i, ins) in b.iter_mut().enumerate() {
            if ins.off == TO_NEXT {
                ins.off = (n - i - 1) as i16;
            }
        }
        p.extend(b);
    }
    p.push(insn(MOV64_K, R0, 0, 0, fallback as i32));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

// ---- bpf(2) --------------------------------------------------------------------------

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// BPF_PROG_ATTACH / BPF_PROG_DETACH.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

/// BPF_PROG_QUERY.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] prefix of union bpf_attr and its
    // size is passed along; pointers inside it point to buffers alive during the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned_fd(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this new descriptor, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Load `prog`; on a verifier refusal the error carries the verifier's log.
fn load(prog: &[Insn]) -> Result<OwnedFd> {
    let license = b"Apache-2.0\0";
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"nodus_devcg");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned_fd(fd)),
        Err(e)
            if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EINVAL) =>
        {
            let mut log = vec![0u8; 64 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let again = bpf(BPF_PROG_LOAD, &mut attr);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            match again {
                Ok(fd) => Ok(owned_fd(fd)),
                Err(_) => Err(Error::Io {
                    context: format!(
                        "load the cgroup device eBPF program ({} instructions); verifier: {}",
                        prog.len(),
                        text.trim()
                    ),
                    source: e,
                }),
            }
        }
        Err(e) => Err(e).ctx(|| "load the cgroup device eBPF program (bpf BPF_PROG_LOAD)".into()),
    }
}

fn open_dir(dir: &Path) -> Result<OwnedFd> {
    let f = fs::File::open(dir).ctx(|| format!("open cgroup {}", dir.display()))?;
    Ok(f.into())
}

/// IDs of the device programs attached to the cgroup at `dir` itself.
pub fn attached(dir: &Path) -> Result<Vec<u32>> {
    let cg = open_dir(dir)?;
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)
        .ctx(|| format!("query the device programs of cgroup {}", dir.display()))?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

/// Whether a program with this ID still exists.
pub fn program_exists(id: u32) -> bool {
    let mut attr = GetFdAttr {
        prog_id: id,
        ..Default::default()
    };
    bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).map(owned_fd).is_ok()
}

/// Make `rules` the device rules of the cgroup v2 directory `dir`: attach their
/// program, then detach the device programs attached there before.
pub fn install(dir: &Path, rules: &[Rule]) -> Result<()> {
    let prog = load(&program(rules))?;
    let old = attached(dir)?;
    let cg = open_dir(dir)?;
    let mut attr = AttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    bpf(BPF_PROG_ATTACH, &mut attr)
        .ctx(|| format!("attach the device eBPF program to cgroup {}", dir.display()))?;
    for id in old {
        let mut get = GetFdAttr {
            prog_id: id,
            ..Default::default()
        };
        let old_fd = match bpf(BPF_PROG_GET_FD_BY_ID, &mut get) {
            Ok(fd) => owned_fd(fd),
            // Detached and freed meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e).ctx(|| format!("open device eBPF program {id}")),
        };
        let mut det = AttachAttr {
            target_fd: cg.as_raw_fd() as u32,
            attach_bpf_fd: old_fd.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            attach_flags: 0,
        };
        match bpf(BPF_PROG_DETACH, &mut det) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => {
                return Err(e).ctx(|| {
                    format!(
                        "detach device eBPF program {id} from cgroup {}",
                        dir.display()
                    )
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An interpreter for the instructions [`program`] emits.
    fn run(p: &[Insn], typ: u32, major: u32, minor: u32, access: u32) -> u64 {
        let ctx = [access << 16 | typ, major, minor];
        let mut reg = [0u64; 11];
        let mut pc = 0usize;
        let dst = |i: &Insn| (i.regs & 0xf) as usize;
        let src = |i: &Insn| (i.regs >> 4) as usize;
        for _ in 0..10_000 {
            let i = p[pc];
            pc += 1;
            let imm = i.imm as i64 as u64;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src(&i), 1, "loads come from the context");
                    reg[dst(&i)] = ctx[i.off as usize / 4] as u64;
                }
                AND64_K => reg[dst(&i)] &= imm,
                RSH64_K => reg[dst(&i)] >>= imm,
                MOV64_K => reg[dst(&i)] = imm,
                MOV64_X => reg[dst(&i)] = reg[src(&i)],
                JEQ_K | JNE_K => {
                    if (reg[dst(&i)] == imm) == (i.code == JEQ_K) {
                        pc = (pc as i64 + i.off as i64) as usize;
                    }
                }
                EXIT => return reg[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
        panic!("no exit");
    }

    fn rules_of(v: serde_json::Value) -> Vec<Rule> {
        let mut r = LinuxResources::default();
        r.set_devices(Some(serde_json::from_value(v).unwrap()));
        rules(&r).unwrap()
    }

    const R: u32 = ACC_READ;
    const W: u32 = ACC_WRITE;
    const M: u32 = ACC_MKNOD;
    const C: u32 = DEV_CHAR;
    const B: u32 = DEV_BLOCK;

    #[test]
    fn cri_default_list_allows_only_the_defaults() {
        let p = program(&rules_of(json!([{"allow": false, "access": "rwm"}])));
        assert_eq!(run(&p, C, 1, 3, R | W), 1, "/dev/null");
        assert_eq!(run(&p, C, 1, 5, R), 1, "/dev/zero");
        assert_eq!(run(&p, C, 136, 7, R | W), 1, "/dev/pts/7");
        assert_eq!(run(&p, C, 1, 11, W), 0, "/dev/kmsg");
        assert_eq!(run(&p, B, 8, 0, R), 0, "/dev/sda");
        assert_eq!(run(&p, B, 8, 0, M), 1, "mknod of anything");
        assert_eq!(run(&p, C, 1, 11, M | R), 0, "mknod+read of kmsg");
    }

    #[test]
    fn last_matching_rule_decides_each_access_bit() {
        let p = program(&rules_of(json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 11, "access": "rwm"},
            {"allow": false, "type": "c", "major": 1, "minor": 11, "access": "w"},
            {"allow": true, "type": "b", "major": 7, "access": "r"},
            {"allow": true, "type": "b", "major": 7, "minor": -1, "access": "w"}
        ])));
        assert_eq!(run(&p, C, 1, 11, R), 1);
        assert_eq!(run(&p, C, 1, 11, W), 0);
        // O_RDWR asks for both bits at once: the write bit is denied.
        assert_eq!(run(&p, C, 1, 11, R | W), 0);
        assert_eq!(run(&p, C, 1, 12, R), 0);
        // Two allow rules together grant read+write.
        assert_eq!(run(&p, B, 7, 3, R | W), 1);
        assert_eq!(run(&p, B, 7, 3, R), 1);
        assert_eq!(run(&p, C, 7, 3, R), 0, "type matters");
    }

    #[test]
    fn defaults_come_last_as_in_runc() {
        // A deny of /dev/null in the config is overridden by the default allow rule.
        let p = program(&rules_of(json!([
            {"allow": false, "access": "rwm"},
            {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
        ])));
        assert_eq!(run(&p, C, 1, 3, W), 1);
    }

    #[test]
    fn allow_all_and_blocklists() {
        let p = program(&rules_of(json!([{"allow": true, "access": "rwm"}])));
        assert_eq!(run(&p, B, 8, 0, R | W), 1);
        let p = program(&rules_of(json!([
            {"allow": true, "type": "a"},
            {"allow": false, "type": "b", "access": "w"}
        ])));
        assert_eq!(run(&p, B, 8, 0, R), 1);
        assert_eq!(run(&p, B, 8, 0, W), 0);
        assert_eq!(run(&p, C, 4, 1, W), 1);
        // Rules before the last allow-all are never reached: nothing emitted for them.
        let before = program(&rules_of(json!([
            {"allow": false, "type": "b", "major": 8, "access": "r"},
            {"allow": true, "access": "rwm"}
        ])));
        assert_eq!(before, program(&rules_of(json!([{"allow": true}]))));
    }

    #[test]
    fn instruction_sequence_of_one_rule() {
        let p = program(&[
            Rule::new(false, None, None, None, ACC_ALL),
            Rule::new(true, Some(C), Some(1), None, R),
        ]);
        let expect = vec![
            insn(LDX_MEM_W, R2, R1, 0, 0),
            insn(AND64_K, R2, 0, 0, 0xffff),
            insn(LDX_MEM_W, R6, R1, 0, 0),
            insn(RSH64_K, R6, 0, 0, 16),
            insn(LDX_MEM_W, R4, R1, 4, 0),
            insn(LDX_MEM_W, R5, R1, 8, 0),
            // c 1:* r
            insn(JNE_K, R2, 0, 8, C as i32),
            insn(JNE_K, R4, 0, 7, 1),
            insn(MOV64_X, R1, R6, 0, 0),
            insn(AND64_K, R1, 0, 0, R as i32),
            insn(JEQ_K, R1, 0, 4, 0),
            insn(AND64_K, R6, 0, 0, !(R as i32)),
            insn(JNE_K, R6, 0, 2, 0),
            insn(MOV64_K, R0, 0, 0, 1),
            insn(EXIT, 0, 0, 0, 0),
            // nothing decided: deny
            insn(MOV64_K, R0, 0, 0, 0),
            insn(EXIT, 0, 0, 0, 0),
        ];
        assert_eq!(p, expect);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        if cfg!(target_endian = "little") {
            // dst in the low nibble, src in the high one
            assert_eq!(insn(MOV64_X, R1, R6, 0, 0).regs, 0x61);
        }
    }

    #[test]
    fn v1_lines() {
        let r = rules_of(json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": -1, "minor": 3, "access": "mw"},
            {"allow": true, "type": "u", "major": 4}
        ]));
        let lines: Vec<String> = r.iter().take(3).map(Rule::v1_line).collect();
        assert_eq!(lines, ["a", "c *:3 wm", "c 4:* rwm"]);
    }

    #[test]
    fn bad_rules_name_the_field() {
        let cases = [
            (
                json!({"allow": true, "type": "p"}),
                "linux.resources.devices[0].type",
            ),
            (
                json!({"allow": true, "type": "c", "major": -2}),
                "linux.resources.devices[0].major",
            ),
            (
                json!({"allow": true, "type": "c", "minor": 1i64 << 40}),
                "linux.resources.devices[0].minor",
            ),
            (
                json!({"allow": true, "access": "rx"}),
                "linux.resources.devices[0].access",
            ),
        ];
        for (v, field) in cases {
            let mut r = LinuxResources::default();
            r.set_devices(Some(vec![serde_json::from_value(v).unwrap()]));
            let e = rules(&r).unwrap_err().to_string();
            assert!(e.starts_with(field), "{field}: {e}");
        }
    }
}
