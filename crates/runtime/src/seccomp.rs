//! The default seccomp filter: the system calls Docker's default profile refuses a container,
//! refused the same way (`EPERM`; `ENOSYS` for `clone3`, so libc falls back to `clone`, whose
//! flags a filter can read).
//!
//! Docker's profile is an allow-list by name; this filter is the complement written as a
//! deny-list, which gives the same answers for every system call up to the newest the profile
//! names while staying short enough to read: what is refused, and which capability lifts the
//! refusal. Calls newer than that get `ENOSYS`, as runc answers them. The
//! groups follow Docker's: a container given `CAP_SYS_ADMIN` may mount and make namespaces, one
//! given `CAP_SYS_TIME` may set the clock, and so on. `--privileged` and `--security-opt
//! seccomp=unconfined` install no filter at all.
//!
//! Only the native ABI passes: the x32 ABI and 32-bit compat calls (`int 0x80`, an i386
//! binary) are refused outright, since their numbers differ and a deny-list keyed on native
//! numbers would not see them. A 32-bit binary needs `--security-opt seccomp=unconfined`.
//!
//! The filter is classic BPF built here: the program is small and linear, and the seccomp
//! crates either need libseccomp (a C library the static guest lacks) or kill the process on a
//! foreign ABI instead of answering `EPERM`.

use crate::syscall::Errno;

/// Bits of a capability set, by capability number.
const fn cap(number: u32) -> u64 {
    1 << number
}

const CAP_DAC_READ_SEARCH: u64 = cap(2);
const CAP_SYS_MODULE: u64 = cap(16);
// The only syscalls it guards (ioperm, iopl) exist on x86 only.
#[cfg(target_arch = "x86_64")]
const CAP_SYS_RAWIO: u64 = cap(17);
const CAP_SYS_CHROOT: u64 = cap(18);
const CAP_SYS_PTRACE: u64 = cap(19);
const CAP_SYS_PACCT: u64 = cap(20);
const CAP_SYS_ADMIN: u64 = cap(21);
const CAP_SYS_BOOT: u64 = cap(22);
const CAP_SYS_NICE: u64 = cap(23);
const CAP_SYS_TIME: u64 = cap(25);
const CAP_SYS_TTY_CONFIG: u64 = cap(26);
const CAP_SYSLOG: u64 = cap(34);
const CAP_PERFMON: u64 = cap(38);
const CAP_BPF: u64 = cap(39);

/// Refused whatever the capabilities: keyrings are not namespaced, kexec and swap act on the
/// host, io_uring and userfaultfd have been the way into many kernel bugs, the rest is obsolete.
const ALWAYS_REFUSED: &[libc::c_long] = &[
    libc::SYS_add_key,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_io_uring_setup,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_kexec_file_load,
    // The libc crate lacks it for aarch64 musl; asm-generic/unistd.h numbers it 294.
    #[cfg(target_arch = "aarch64")]
    294,
    libc::SYS_kexec_load,
    libc::SYS_keyctl,
    libc::SYS_migrate_pages,
    libc::SYS_move_pages,
    libc::SYS_nfsservctl,
    libc::SYS_pivot_root,
    libc::SYS_request_key,
    libc::SYS_swapoff,
    libc::SYS_swapon,
    libc::SYS_userfaultfd,
    #[cfg(target_arch = "x86_64")]
    libc::SYS__sysctl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_afs_syscall,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_getpmsg,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_putpmsg,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_security,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_sysfs,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_tuxcall,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_uselib,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ustat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_vserver,
];

/// Refused unless the container holds one of the capabilities (a mask of them).
const REFUSED_WITHOUT: &[(u64, &[libc::c_long])] = &[
    (
        CAP_SYS_ADMIN,
        &[
            libc::SYS_fanotify_init,
            libc::SYS_fsconfig,
            libc::SYS_fsmount,
            libc::SYS_fsopen,
            libc::SYS_fspick,
            libc::SYS_lookup_dcookie,
            libc::SYS_mount,
            libc::SYS_mount_setattr,
            libc::SYS_move_mount,
            libc::SYS_open_tree,
            libc::SYS_quotactl,
            libc::SYS_quotactl_fd,
            libc::SYS_setdomainname,
            libc::SYS_sethostname,
            libc::SYS_setns,
            libc::SYS_umount2,
            libc::SYS_unshare,
        ],
    ),
    (CAP_SYS_ADMIN | CAP_BPF, &[libc::SYS_bpf]),
    (CAP_SYS_ADMIN | CAP_PERFMON, &[libc::SYS_perf_event_open]),
    (CAP_SYS_ADMIN | CAP_SYSLOG, &[libc::SYS_syslog]),
    (CAP_SYS_PACCT, &[libc::SYS_acct]),
    (CAP_SYS_BOOT, &[libc::SYS_reboot]),
    (CAP_SYS_CHROOT, &[libc::SYS_chroot]),
    (
        CAP_SYS_MODULE,
        &[
            libc::SYS_delete_module,
            libc::SYS_finit_module,
            libc::SYS_init_module,
        ],
    ),
    (
        CAP_SYS_NICE,
        &[
            libc::SYS_get_mempolicy,
            libc::SYS_mbind,
            libc::SYS_set_mempolicy,
            libc::SYS_set_mempolicy_home_node,
        ],
    ),
    (
        CAP_SYS_PTRACE,
        &[
            libc::SYS_kcmp,
            libc::SYS_pidfd_getfd,
            libc::SYS_process_madvise,
        ],
    ),
    #[cfg(target_arch = "x86_64")]
    (CAP_SYS_RAWIO, &[libc::SYS_ioperm, libc::SYS_iopl]),
    (
        CAP_SYS_TIME,
        &[libc::SYS_clock_settime, libc::SYS_settimeofday],
    ),
    (CAP_SYS_TTY_CONFIG, &[libc::SYS_vhangup]),
    (CAP_DAC_READ_SEARCH, &[libc::SYS_open_by_handle_at]),
];

/// `clone` flags that make namespaces (NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
/// NEWNET), refused without `CAP_SYS_ADMIN`.
const NAMESPACE_FLAGS: u32 = 0x7E02_0000;

/// The `personality` values a container may set: Linux, 32-bit Linux, UNAME26 with either, and
/// the query `0xffffffff`.
const ALLOWED_PERSONALITIES: [u32; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Socket domains refused: AF_ALG (38) and AF_VSOCK (40).
const REFUSED_SOCKET_DOMAINS: [u32; 2] = [38, 40];

#[cfg(target_arch = "x86_64")]
const NATIVE_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const NATIVE_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

/// The newest system call the policy knows (`removexattrat`, 466, the same number on x86-64
/// and aarch64). Newer ones get `ENOSYS`, as runc answers calls its profile predates: libc then
/// falls back to an older call the filter does judge.
const LAST_KNOWN_SYSCALL: u32 = 466;

/// x32 system calls are the x86-64 numbers with this bit set.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const ARG0_LOW_OFFSET: u32 = 16;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

/// A seccomp filter ready to install.
#[derive(Debug, Clone)]
pub struct Filter {
    program: Vec<libc::sock_filter>,
}

impl Filter {
    /// Docker's default policy for a container holding `capabilities` (a bit per number).
    pub fn docker_default(capabilities: u64) -> Self {
        let mut b = Builder::default();
        b.load(ARCH_OFFSET);
        b.unless_eq(NATIVE_ARCH, RET_ERRNO | libc::EPERM as u32);
        b.load(NR_OFFSET);
        #[cfg(target_arch = "x86_64")]
        b.if_set(X32_SYSCALL_BIT, RET_ERRNO | libc::EPERM as u32);
        b.if_greater(LAST_KNOWN_SYSCALL, RET_ERRNO | libc::ENOSYS as u32);
        let mut refused: Vec<libc::c_long> = ALWAYS_REFUSED.to_vec();
        for (caps, calls) in REFUSED_WITHOUT {
            if capabilities & caps == 0 {
                refused.extend_from_slice(calls);
            }
        }
        for nr in refused {
            b.if_eq(nr as u32, RET_ERRNO | libc::EPERM as u32);
        }
        if capabilities & CAP_SYS_ADMIN == 0 {
            b.if_eq(libc::SYS_clone3 as u32, RET_ERRNO | libc::ENOSYS as u32);
            b.arg0_check(libc::SYS_clone as u32, |b| {
                b.if_set(NAMESPACE_FLAGS, RET_ERRNO | libc::EPERM as u32);
                b.ret(RET_ALLOW);
            });
        }
        b.arg0_check(libc::SYS_personality as u32, |b| {
            for value in ALLOWED_PERSONALITIES {
                b.if_eq(value, RET_ALLOW);
            }
            b.ret(RET_ERRNO | libc::EPERM as u32);
        });
        b.arg0_check(libc::SYS_socket as u32, |b| {
            for domain in REFUSED_SOCKET_DOMAINS {
                b.if_eq(domain, RET_ERRNO | libc::EPERM as u32);
            }
            b.ret(RET_ALLOW);
        });
        b.ret(RET_ALLOW);
        Self { program: b.program }
    }

    /// How many BPF instructions the filter has.
    pub fn len(&self) -> usize {
        self.program.len()
    }

    /// Whether the filter is empty (never: every filter ends with a verdict).
    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }

    /// Installs the filter on the calling thread. Needs `CAP_SYS_ADMIN` or no_new_privs; the
    /// filter outlives `execve` and is inherited by every child.
    pub fn install(&self) -> Result<(), Errno> {
        let Ok(len) = u16::try_from(self.program.len()) else {
            return Err(Errno::E2BIG);
        };
        let fprog = libc::sock_fprog {
            len,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: `fprog` points at `len` initialised instructions that live until the call
        // returns; the kernel copies the program.
        let ret = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog,
            )
        };
        if ret != 0 {
            return Err(Errno::last());
        }
        Ok(())
    }
}

/// Emits the BPF: every test is followed at once by its own verdict, so each jump is 0 or 1
/// instructions and no offset can overflow BPF's 8-bit jump fields.
#[derive(Default)]
struct Builder {
    program: Vec<libc::sock_filter>,
}

impl Builder {
    fn push(&mut self, code: u32, jt: u8, jf: u8, k: u32) {
        self.program.push(libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        });
    }

    /// The accumulator gets the 32-bit word at `offset` of `seccomp_data`.
    fn load(&mut self, offset: u32) {
        self.push(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, offset);
    }

    fn ret(&mut self, verdict: u32) {
        self.push(libc::BPF_RET | libc::BPF_K, 0, 0, verdict);
    }

    /// Returns `verdict` if the accumulator equals `value`.
    fn if_eq(&mut self, value: u32, verdict: u32) {
        self.push(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 1, value);
        self.ret(verdict);
    }

    /// Returns `verdict` unless the accumulator equals `value`.
    fn unless_eq(&mut self, value: u32, verdict: u32) {
        self.push(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 1, 0, value);
        self.ret(verdict);
    }

    /// Returns `verdict` if the accumulator is above `value`.
    fn if_greater(&mut self, value: u32, verdict: u32) {
        self.push(libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K, 0, 1, value);
        self.ret(verdict);
    }

    /// Returns `verdict` if the accumulator has any bit of `mask`.
    fn if_set(&mut self, mask: u32, verdict: u32) {
        self.push(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K, 0, 1, mask);
        self.ret(verdict);
    }

    /// For system call `nr`, runs `body` on the low word of its first argument (`body` must end
    /// in a verdict); other calls skip it with the system call number still loaded.
    fn arg0_check(&mut self, nr: u32, body: impl FnOnce(&mut Builder)) {
        let mut inner = Builder::default();
        inner.load(ARG0_LOW_OFFSET);
        body(&mut inner);
        // The bodies are a dozen instructions at most (the tables above); a longer one would
        // make the jump land inside it, so it must stop the build's tests rather than pass.
        let skip = u8::try_from(inner.program.len())
            .expect("an argument check longer than a BPF jump can skip");
        self.push(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, skip, nr);
        self.program.extend(inner.program);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_instruction_ends_in_a_verdict_and_jumps_stay_inside() {
        for caps in [0, CAP_SYS_ADMIN, crate::caps::ALL_CAPABILITIES] {
            let filter = Filter::docker_default(caps);
            let program = &filter.program;
            let last = program.last().expect("a verdict");
            assert_eq!(last.code as u32, libc::BPF_RET | libc::BPF_K);
            assert_eq!(last.k, RET_ALLOW);
            for (i, insn) in program.iter().enumerate() {
                if insn.code as u32 & 0x07 == libc::BPF_JMP {
                    assert!(i + 1 + (insn.jt.max(insn.jf) as usize) < program.len());
                }
            }
        }
    }

    #[test]
    fn argument_checks_skip_exactly_their_block() {
        let program = Filter::docker_default(0).program;
        for (i, insn) in program.iter().enumerate() {
            // An argument check: JEQ nr, 0, skip; then a load of arg 0 starts its block.
            if insn.code as u32 == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K && insn.jf > 1 {
                let block = &program[i + 1..=i + insn.jf as usize];
                assert_eq!(block[0].k, ARG0_LOW_OFFSET);
                let last = block.last().expect("a non-empty block");
                assert_eq!(
                    last.code as u32,
                    libc::BPF_RET | libc::BPF_K,
                    "ends in a verdict"
                );
            }
        }
    }

    #[test]
    fn calls_newer_than_the_policy_get_enosys() {
        let program = Filter::docker_default(0).program;
        let at = program
            .iter()
            .position(|insn| {
                insn.code as u32 == libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K
                    && insn.k == LAST_KNOWN_SYSCALL
            })
            .expect("the newest-call check");
        assert_eq!(program[at + 1].k, RET_ERRNO | libc::ENOSYS as u32);
    }

    #[test]
    fn capabilities_lift_their_groups() {
        let refused = |caps: u64, nr: libc::c_long| {
            Filter::docker_default(caps).program.windows(2).any(|w| {
                w[0].code as u32 == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K
                    && w[0].k == nr as u32
                    && w[0].jf == 1
                    && w[1].k == RET_ERRNO | libc::EPERM as u32
            })
        };
        assert!(refused(0, libc::SYS_mount));
        assert!(!refused(CAP_SYS_ADMIN, libc::SYS_mount));
        assert!(refused(CAP_SYS_ADMIN, libc::SYS_keyctl), "always refused");
        assert!(refused(0, libc::SYS_clock_settime));
        assert!(!refused(CAP_SYS_TIME, libc::SYS_clock_settime));
        // Docker's default set holds SYS_CHROOT: chroot passes.
        assert!(!refused(CAP_SYS_CHROOT, libc::SYS_chroot));
    }
}
