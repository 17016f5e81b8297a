//! The device cgroup: which device nodes a container may open or create.
//!
//! A default container's root keeps `CAP_MKNOD`, so without this it could `mknod` a node for
//! the host's disk and read it. Docker's answer, reproduced here, is a deny-all list with
//! [`DEFAULT_RULES`] allowed; `--privileged` allows everything.
//!
//! * v1 (legacy and hybrid hosts, where the `devices` controller is mounted): the rules are
//!   written to `devices.deny`/`devices.allow`.
//! * v2 (the guest): the kernel has no interface file; the rules become a
//!   `BPF_PROG_TYPE_CGROUP_DEVICE` program, assembled here from a handful of instructions (the
//!   approach runc takes) and attached to the container's cgroup with `BPF_F_ALLOW_MULTI`. The
//!   cgroup keeps the program alive: nothing needs to be detached, it goes with the cgroup.
//!
//! The rootfs side (`nodev` on every filesystem the container can create nodes on, see
//! [`crate::rootfs`]) holds even where neither is available.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::syscall::{Errno, SysError};

/// Device type of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceType {
    /// Character devices (`c`).
    Char,
    /// Block devices (`b`).
    Block,
}

/// One allow rule: a type, a major and a minor (`None`: any), and the access it grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    /// Character or block.
    pub kind: DeviceType,
    /// The major number; `None` is `*`.
    pub major: Option<u32>,
    /// The minor number; `None` is `*`.
    pub minor: Option<u32>,
    /// `r`, `w` and `m` (mknod) letters.
    pub access: &'static str,
}

const fn rule(
    kind: DeviceType,
    major: Option<u32>,
    minor: Option<u32>,
    access: &'static str,
) -> DeviceRule {
    DeviceRule {
        kind,
        major,
        minor,
        access,
    }
}

/// Docker's default allow list (moby's `oci.DefaultLinuxSpec` plus runc's default devices):
/// creating any node (opening it is what matters), the standard `/dev` nodes, ptys, tun.
pub const DEFAULT_RULES: [DeviceRule; 12] = [
    rule(DeviceType::Char, None, None, "m"),
    rule(DeviceType::Block, None, None, "m"),
    rule(DeviceType::Char, Some(1), Some(3), "rwm"),
    rule(DeviceType::Char, Some(1), Some(5), "rwm"),
    rule(DeviceType::Char, Some(1), Some(7), "rwm"),
    rule(DeviceType::Char, Some(1), Some(8), "rwm"),
    rule(DeviceType::Char, Some(1), Some(9), "rwm"),
    rule(DeviceType::Char, Some(5), Some(0), "rwm"),
    rule(DeviceType::Char, Some(5), Some(1), "rwm"),
    rule(DeviceType::Char, Some(5), Some(2), "rwm"),
    rule(DeviceType::Char, Some(136), None, "rwm"),
    rule(DeviceType::Char, Some(10), Some(200), "rwm"),
];

impl DeviceRule {
    /// The rule as a v1 `devices.allow` line: `c 1:3 rwm`, `b *:* m`.
    pub fn to_v1(&self) -> String {
        let number = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        let kind = match self.kind {
            DeviceType::Char => 'c',
            DeviceType::Block => 'b',
        };
        format!(
            "{kind} {}:{} {}",
            number(self.major),
            number(self.minor),
            self.access
        )
    }

    /// The `BPF_DEVCG_ACC_*` bits of the rule's access letters.
    fn access_bits(&self) -> i32 {
        self.access.chars().fold(0, |bits, c| match c {
            'm' => bits | ACC_MKNOD,
            'r' => bits | ACC_READ,
            'w' => bits | ACC_WRITE,
            _ => bits,
        })
    }
}

/// The v1 writes for a container, in order: (file, value).
pub fn v1_writes(privileged: bool) -> Vec<(&'static str, String)> {
    v1_writes_with(privileged, &[])
}

/// [`v1_writes`] with `extra` rules allowed after Docker's defaults (`--device`,
/// `--device-cgroup-rule`).
pub fn v1_writes_with(privileged: bool, extra: &[DeviceRule]) -> Vec<(&'static str, String)> {
    if privileged {
        return vec![("devices.allow", "a".to_string())];
    }
    std::iter::once(("devices.deny", "a".to_string()))
        .chain(
            DEFAULT_RULES
                .iter()
                .chain(extra)
                .map(|r| ("devices.allow", r.to_v1())),
        )
        .collect()
}

/// The access letters in the order the kernel prints them, as a static string; `None` when
/// `access` has another letter or none.
fn canonical_access(access: &str) -> Option<&'static str> {
    let has = |c| access.contains(c);
    if access.is_empty() || !access.chars().all(|c| "rwm".contains(c)) {
        return None;
    }
    Some(match (has('r'), has('w'), has('m')) {
        (true, true, true) => "rwm",
        (true, true, false) => "rw",
        (true, false, true) => "rm",
        (false, true, true) => "wm",
        (true, false, false) => "r",
        (false, true, false) => "w",
        _ => "m",
    })
}

/// The cgroup rules of a spec's allow rule (`a` is one rule per type); none when its access
/// letters are invalid.
pub fn rules_of(allow: &crate::spec::DeviceAllow) -> Vec<DeviceRule> {
    let Some(access) = canonical_access(&allow.access) else {
        return Vec::new();
    };
    let kinds: &[DeviceType] = match allow.kind {
        'c' => &[DeviceType::Char],
        'b' => &[DeviceType::Block],
        'a' => &[DeviceType::Char, DeviceType::Block],
        _ => &[],
    };
    kinds
        .iter()
        .map(|&kind| rule(kind, allow.major, allow.minor, access))
        .collect()
}

// The program's context, `struct bpf_cgroup_dev_ctx`: access_type (type in the low 16 bits,
// access in the high 16), major, minor, all u32.
const CTX_ACCESS_TYPE: i16 = 0;
const CTX_MAJOR: i16 = 4;
const CTX_MINOR: i16 = 8;
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

// Registers: r1 the context; the program keeps type in r2, access in r3, major in r4, minor
// in r5; r0 the verdict.
const R0: u8 = 0;
const R1: u8 = 1;
const R_TYPE: u8 = 2;
const R_ACCESS: u8 = 3;
const R_MAJOR: u8 = 4;
const R_MINOR: u8 = 5;

// Opcodes (linux/bpf.h, linux/bpf_common.h).
const LDX_W_MEM: u8 = 0x61;
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU64_MOV_K: u8 = 0xb7;
const JMP_JNE_K: u8 = 0x55;
const JMP_JSET_K: u8 = 0x45;
const JMP_EXIT: u8 = 0x95;

/// One eBPF instruction, `struct bpf_insn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// The device program for `rules`: allows (returns 1) what a rule matches, denies (0) the rest.
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut prog = vec![
        insn(LDX_W_MEM, R_TYPE, R1, CTX_ACCESS_TYPE, 0),
        insn(ALU32_AND_K, R_TYPE, 0, 0, 0xffff),
        insn(LDX_W_MEM, R_ACCESS, R1, CTX_ACCESS_TYPE, 0),
        insn(ALU32_RSH_K, R_ACCESS, 0, 0, 16),
        insn(LDX_W_MEM, R_MAJOR, R1, CTX_MAJOR, 0),
        insn(LDX_W_MEM, R_MINOR, R1, CTX_MINOR, 0),
    ];
    for rule in rules {
        // Each test jumps past the rest of the block on a mismatch; the flag marks those
        // jumps, whose offsets are known once the block is complete.
        let mut block: Vec<(Insn, bool)> = Vec::new();
        let kind = match rule.kind {
            DeviceType::Char => DEV_CHAR,
            DeviceType::Block => DEV_BLOCK,
        };
        block.push((insn(JMP_JNE_K, R_TYPE, 0, 0, kind), true));
        if let Some(major) = rule.major {
            block.push((insn(JMP_JNE_K, R_MAJOR, 0, 0, major as i32), true));
        }
        if let Some(minor) = rule.minor {
            block.push((insn(JMP_JNE_K, R_MINOR, 0, 0, minor as i32), true));
        }
        let denied = (ACC_MKNOD | ACC_READ | ACC_WRITE) & !rule.access_bits();
        if denied != 0 {
            block.push((insn(JMP_JSET_K, R_ACCESS, 0, 0, denied), true));
        }
        block.push((insn(ALU64_MOV_K, R0, 0, 0, 1), false));
        block.push((insn(JMP_EXIT, 0, 0, 0, 0), false));
        let len = block.len();
        prog.extend(block.into_iter().enumerate().map(|(i, (mut ins, jump))| {
            if jump {
                // A handful of instructions per block: the offset always fits.
                ins.off = (len - i - 1) as i16;
            }
            ins
        }));
    }
    prog.push(insn(ALU64_MOV_K, R0, 0, 0, 0));
    prog.push(insn(JMP_EXIT, 0, 0, 0, 0));
    prog
}

/// A failure loading or attaching the v2 device program.
#[derive(Debug, thiserror::Error)]
pub enum DeviceProgramError {
    /// The cgroup directory could not be opened.
    #[error("open cgroup {}", path.display())]
    Open {
        /// The cgroup directory.
        path: std::path::PathBuf,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// The kernel refused the program.
    #[error("load the device program for {}", path.display())]
    Load {
        /// The cgroup directory.
        path: std::path::PathBuf,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// The program could not be attached to the cgroup.
    #[error("attach the device program to {}", path.display())]
    Attach {
        /// The cgroup directory.
        path: std::path::PathBuf,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` this uses; the kernel takes a prefix.
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
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

/// Loads [`program`] of `rules` and attaches it to the v2 cgroup `dir`.
pub fn attach_program(dir: &Path, rules: &[DeviceRule]) -> Result<(), DeviceProgramError> {
    let cgroup = std::fs::File::open(dir).map_err(|err| DeviceProgramError::Open {
        path: dir.to_path_buf(),
        source: SysError(crate::syscall::io_errno(&err)),
    })?;
    let insns = program(rules);
    let license = c"Apache-2.0";
    let load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        // A few dozen instructions: far below u32.
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    // SAFETY: `load` is a valid prefix of `union bpf_attr` for BPF_PROG_LOAD, its size is
    // passed, and the instructions and license it points to outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &load as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        return Err(DeviceProgramError::Load {
            path: dir.to_path_buf(),
            source: SysError(Errno::last()),
        });
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it. A file
    // descriptor always fits in i32.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attach = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    // SAFETY: `attach` is a valid prefix of `union bpf_attr` for BPF_PROG_ATTACH and its size
    // is passed; both descriptors are open for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attach as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if rc < 0 {
        return Err(DeviceProgramError::Attach {
            path: dir.to_path_buf(),
            source: SysError(Errno::last()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_denies_everything_then_allows_dockers_list() {
        let writes = v1_writes(false);
        assert_eq!(writes[0], ("devices.deny", "a".to_string()));
        let allowed: Vec<&str> = writes[1..]
            .iter()
            .inspect(|(file, _)| assert_eq!(*file, "devices.allow"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(
            allowed,
            [
                "c *:* m",
                "b *:* m",
                "c 1:3 rwm",
                "c 1:5 rwm",
                "c 1:7 rwm",
                "c 1:8 rwm",
                "c 1:9 rwm",
                "c 5:0 rwm",
                "c 5:1 rwm",
                "c 5:2 rwm",
                "c 136:* rwm",
                "c 10:200 rwm",
            ]
        );
        assert_eq!(v1_writes(true), [("devices.allow", "a".to_string())]);
    }

    /// Runs `prog` the way the kernel would on one access, to check the jumps and verdicts.
    fn interpret(prog: &[Insn], kind: i32, access: i32, major: u32, minor: u32) -> u64 {
        let ctx = [(access << 16 | kind) as u32, major, minor];
        let mut regs = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let ins = prog[pc];
            let (dst, src) = ((ins.regs & 0x0f) as usize, (ins.regs >> 4) as usize);
            assert!(
                src == R1 as usize || ins.code != LDX_W_MEM,
                "loads read the context"
            );
            pc += 1;
            match ins.code {
                LDX_W_MEM => regs[dst] = u64::from(ctx[(ins.off / 4) as usize]),
                ALU32_AND_K => regs[dst] = u64::from(regs[dst] as u32 & ins.imm as u32),
                ALU32_RSH_K => regs[dst] = u64::from((regs[dst] as u32) >> ins.imm),
                ALU64_MOV_K => regs[dst] = ins.imm as u64,
                JMP_JNE_K if regs[dst] != ins.imm as u64 => pc += ins.off as usize,
                JMP_JSET_K if regs[dst] & ins.imm as u64 != 0 => pc += ins.off as usize,
                JMP_JNE_K | JMP_JSET_K => {}
                JMP_EXIT => return regs[R0 as usize],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn the_program_allows_the_default_list_and_mknod_only() {
        let prog = program(&DEFAULT_RULES);
        let rw = ACC_READ | ACC_WRITE;
        // The standard nodes and ptys open.
        assert_eq!(interpret(&prog, DEV_CHAR, rw, 1, 3), 1);
        assert_eq!(interpret(&prog, DEV_CHAR, ACC_READ, 1, 9), 1);
        assert_eq!(interpret(&prog, DEV_CHAR, rw, 136, 42), 1);
        assert_eq!(interpret(&prog, DEV_CHAR, rw, 5, 2), 1);
        // Any node may be made, but the host's disk or memory cannot be opened.
        assert_eq!(interpret(&prog, DEV_BLOCK, ACC_MKNOD, 8, 0), 1);
        assert_eq!(interpret(&prog, DEV_BLOCK, ACC_READ, 8, 0), 0);
        assert_eq!(interpret(&prog, DEV_CHAR, ACC_READ, 1, 1), 0);
        assert_eq!(interpret(&prog, DEV_CHAR, rw, 10, 232), 0);
        // A block device with a char rule's numbers is still denied.
        assert_eq!(interpret(&prog, DEV_BLOCK, ACC_READ, 1, 3), 0);
    }

    #[test]
    fn instructions_encode_like_struct_bpf_insn() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        let ins = insn(LDX_W_MEM, R_MAJOR, R1, CTX_MAJOR, 0);
        assert_eq!((ins.code, ins.regs, ins.off), (0x61, 0x14, 4));
    }

    #[test]
    fn extra_rules_follow_the_defaults_and_a_means_both_types() {
        let allow: crate::spec::DeviceAllow = "a 10:229 wr".parse().expect("rule");
        let rules = rules_of(&allow);
        assert_eq!(
            rules.iter().map(DeviceRule::to_v1).collect::<Vec<_>>(),
            vec!["c 10:229 rw", "b 10:229 rw"]
        );
        let writes = v1_writes_with(false, &rules);
        assert_eq!(writes.len(), 1 + DEFAULT_RULES.len() + 2);
        assert_eq!(
            writes.last(),
            Some(&("devices.allow", "b 10:229 rw".to_string()))
        );
        assert_eq!(v1_writes_with(true, &rules), v1_writes(true));
        // The program lets the new device through and still refuses others.
        let prog = program(&rules);
        assert_eq!(interpret(&prog, DEV_CHAR, ACC_READ, 10, 229), 1);
        assert_eq!(interpret(&prog, DEV_CHAR, ACC_READ, 10, 230), 0);
    }
}
