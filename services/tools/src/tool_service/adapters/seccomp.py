"""Adapter: the seccomp filter every sandboxed program runs under.

The sandbox runner hands `seccomp_program()` to bubblewrap (`bwrap --seccomp FD`), which loads
it just before it executes the untrusted program; from then on the kernel checks every system
call that program and its children make. Namespaces already hide the host's files, processes
and network; the filter shrinks the kernel surface the program can reach, so a kernel bug in a
rarely used syscall is out of its range.

The policy is an allowlist modelled on Docker's default profile (moby/profiles,
`seccomp/default.json`) for a container with no added capabilities: what Docker allows
unconditionally is allowed, what it gates on a capability is not, and anything else fails
with EPERM. It is tighter than Docker where Docker trusts a container more than we trust an
agent's code: no ptrace or cross-process memory access, no `name_to_handle_at`, no clock
adjustment, no `modify_ldt` (`BEYOND_DOCKER`); sockets only for AF_UNIX, AF_INET, AF_INET6 and
AF_NETLINK (AF_VSOCK is not namespaced and reaches the VM host); no TIOCSTI or TIOCLINUX ioctl
(they inject input into the controlling terminal, which may be outside the sandbox). `clone`
may not create namespaces, and `clone3` fails with ENOSYS, as in Docker, so that libc falls
back to `clone`, whose flags a filter can read (clone3 passes them in memory, out of reach).

The program is classic BPF, little-endian, for x86_64 and aarch64. It kills the process on a
foreign architecture (i386 or arm32 compat calls) and on x32 syscall numbers, then compares the
syscall number with each rule in turn. That linear layout needs no jump longer than a rule;
its cost is moot, since the kernel (5.11+) caches the verdict for every syscall a filter
allows whatever its arguments, and skips the filter for them.
"""

from __future__ import annotations

import errno
import platform
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from tool_service.adapters import syscalls


class SeccompUnsupported(ValueError):
    """No filter exists for this architecture: the sandbox cannot run here."""


ALLOWED: Final = frozenset(
    # What Docker's default allows a container without capabilities on amd64 or arm64, minus
    # BEYOND_DOCKER and the argument-checked ioctl; 32-bit-only names (`mmap2`, `socketcall`)
    # are left out. A name missing from an architecture's table (`open` on aarch64) is skipped.
    {
        "accept",
        "accept4",
        "access",
        "alarm",
        "arch_prctl",
        "bind",
        "brk",
        "cachestat",
        "capget",
        "capset",
        "chdir",
        "chmod",
        "chown",
        "clock_getres",
        "clock_gettime",
        "clock_nanosleep",
        "close",
        "close_range",
        "connect",
        "copy_file_range",
        "creat",
        "dup",
        "dup2",
        "dup3",
        "epoll_create",
        "epoll_create1",
        "epoll_ctl",
        "epoll_ctl_old",
        "epoll_pwait",
        "epoll_pwait2",
        "epoll_wait",
        "epoll_wait_old",
        "eventfd",
        "eventfd2",
        "execve",
        "execveat",
        "exit",
        "exit_group",
        "faccessat",
        "faccessat2",
        "fadvise64",
        "fallocate",
        "fanotify_mark",
        "fchdir",
        "fchmod",
        "fchmodat",
        "fchmodat2",
        "fchown",
        "fchownat",
        "fcntl",
        "fdatasync",
        "fgetxattr",
        "flistxattr",
        "flock",
        "fork",
        "fremovexattr",
        "fsetxattr",
        "fstat",
        "fstatfs",
        "fsync",
        "ftruncate",
        "futex",
        "futex_requeue",
        "futex_wait",
        "futex_waitv",
        "futex_wake",
        "futimesat",
        "get_robust_list",
        "get_thread_area",
        "getcpu",
        "getcwd",
        "getdents",
        "getdents64",
        "getegid",
        "geteuid",
        "getgid",
        "getgroups",
        "getitimer",
        "getpeername",
        "getpgid",
        "getpgrp",
        "getpid",
        "getppid",
        "getpriority",
        "getrandom",
        "getresgid",
        "getresuid",
        "getrlimit",
        "getrusage",
        "getsid",
        "getsockname",
        "getsockopt",
        "gettid",
        "gettimeofday",
        "getuid",
        "getxattr",
        "getxattrat",
        "inotify_add_watch",
        "inotify_init",
        "inotify_init1",
        "inotify_rm_watch",
        "io_cancel",
        "io_destroy",
        "io_getevents",
        "io_pgetevents",
        "io_setup",
        "io_submit",
        "ioprio_get",
        "ioprio_set",
        "kill",
        "landlock_add_rule",
        "landlock_create_ruleset",
        "landlock_restrict_self",
        "lchown",
        "lgetxattr",
        "link",
        "linkat",
        "listen",
        "listmount",
        "listxattr",
        "listxattrat",
        "llistxattr",
        "lremovexattr",
        "lseek",
        "lsetxattr",
        "lstat",
        "madvise",
        "map_shadow_stack",
        "membarrier",
        "memfd_secret",
        "mincore",
        "mkdir",
        "mkdirat",
        "mknod",
        "mknodat",
        "mlock",
        "mlock2",
        "mlockall",
        "mmap",
        "mprotect",
        "mq_getsetattr",
        "mq_notify",
        "mq_open",
        "mq_timedreceive",
        "mq_timedsend",
        "mq_unlink",
        "mremap",
        "mseal",
        "msgctl",
        "msgrcv",
        "msgsnd",
        "msync",
        "munlock",
        "munlockall",
        "munmap",
        "nanosleep",
        "newfstatat",
        "open",
        "openat",
        "openat2",
        "pause",
        "pidfd_open",
        "pidfd_send_signal",
        "pipe",
        "pipe2",
        "pkey_alloc",
        "pkey_free",
        "pkey_mprotect",
        "poll",
        "ppoll",
        "prctl",
        "pread64",
        "preadv",
        "preadv2",
        "prlimit64",
        "process_mrelease",
        "pselect6",
        "pwrite64",
        "pwritev",
        "pwritev2",
        "read",
        "readahead",
        "readlink",
        "readlinkat",
        "readv",
        "recvfrom",
        "recvmmsg",
        "recvmsg",
        "remap_file_pages",
        "removexattr",
        "removexattrat",
        "rename",
        "renameat",
        "renameat2",
        "restart_syscall",
        "rmdir",
        "rseq",
        "rt_sigaction",
        "rt_sigpending",
        "rt_sigprocmask",
        "rt_sigqueueinfo",
        "rt_sigreturn",
        "rt_sigsuspend",
        "rt_sigtimedwait",
        "rt_tgsigqueueinfo",
        "sched_get_priority_max",
        "sched_get_priority_min",
        "sched_getaffinity",
        "sched_getattr",
        "sched_getparam",
        "sched_getscheduler",
        "sched_rr_get_interval",
        "sched_setaffinity",
        "sched_setattr",
        "sched_setparam",
        "sched_setscheduler",
        "sched_yield",
        "seccomp",
        "select",
        "semctl",
        "semget",
        "semop",
        "semtimedop",
        "sendfile",
        "sendmmsg",
        "sendmsg",
        "sendto",
        "set_robust_list",
        "set_thread_area",
        "set_tid_address",
        "setfsgid",
        "setfsuid",
        "setgid",
        "setgroups",
        "setitimer",
        "setpgid",
        "setpriority",
        "setregid",
        "setresgid",
        "setresuid",
        "setreuid",
        "setrlimit",
        "setsid",
        "setsockopt",
        "setuid",
        "setxattr",
        "setxattrat",
        "shmat",
        "shmctl",
        "shmdt",
        "shutdown",
        "sigaltstack",
        "signalfd",
        "signalfd4",
        "socketpair",
        "splice",
        "stat",
        "statfs",
        "statmount",
        "statx",
        "symlink",
        "symlinkat",
        "sync",
        "sync_file_range",
        "syncfs",
        "sysinfo",
        "tee",
        "tgkill",
        "time",
        "timer_create",
        "timer_delete",
        "timer_getoverrun",
        "timer_gettime",
        "timer_settime",
        "timerfd_create",
        "timerfd_gettime",
        "timerfd_settime",
        "times",
        "tkill",
        "truncate",
        "umask",
        "uname",
        "unlink",
        "unlinkat",
        "uretprobe",
        "utime",
        "utimensat",
        "utimes",
        "vfork",
        "vmsplice",
        "wait4",
        "waitid",
        "write",
        "writev",
    }
)
"""Syscalls allowed whatever their arguments."""

SOCKET_FAMILIES: Final = MappingProxyType(
    {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16}
)
PERSONALITIES: Final = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
"""PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query; Docker's values."""
CLONE_NAMESPACE_FLAGS: Final = (
    0x00000080  # CLONE_NEWTIME (clone reads this bit as the exit signal; denied all the same)
    | 0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)
DENIED_IOCTLS: Final = MappingProxyType({"TIOCSTI": 0x5412, "TIOCLINUX": 0x541C})

ARGUMENT_CHECKED: Final = MappingProxyType(
    {
        "clone": "without namespace flags (CLONE_NEW*)",
        "ioctl": "except TIOCSTI and TIOCLINUX",
        "personality": "only Docker's values: 0x0, 0x8, 0x20000, 0x20008, 0xffffffff",
        "socket": "only AF_UNIX, AF_INET, AF_INET6, AF_NETLINK",
    }
)
"""Syscalls allowed only for some arguments, with the condition in words."""

ENOSYS: Final = frozenset({"clone3"})
"""Syscalls that fail with ENOSYS, so that libc falls back to an older, filterable one."""

BEYOND_DOCKER: Final = frozenset(
    {
        "adjtimex",  # reads the clock discipline; nothing a program needs
        "clock_adjtime",
        # Anonymous files: written (not mapped) they hold kernel memory no rlimit bounds
        # beyond open files x file size; without a cgroup that is gigabytes per sandbox.
        "memfd_create",
        # SysV shared memory and message queues: segments detached after use and queued
        # messages stay in the kernel, outside every rlimit; POSIX shm (/dev/shm, a bounded
        # tmpfs) serves programs instead.
        "msgget",
        "shmget",
        "modify_ldt",  # only 16-bit code needs it; a history of kernel info leaks (Flatpak)
        "name_to_handle_at",  # makes the file handles that open_by_handle_at escapes with
        "process_vm_readv",  # cross-process memory access, like ptrace
        "process_vm_writev",
        "ptrace",
    }
)
"""Allowed by Docker's default for a container without capabilities; denied here."""

DENIED: Final = BEYOND_DOCKER | frozenset(
    # Denied by Docker too (capability-gated or absent); named so docs and tests can list them.
    {
        "acct",
        "add_key",
        "bpf",
        "chroot",
        "clock_settime",
        "delete_module",
        "finit_module",
        "fsconfig",
        "fsmount",
        "fsopen",
        "fspick",
        "init_module",
        "io_uring_enter",
        "io_uring_register",
        "io_uring_setup",
        "ioperm",
        "iopl",
        "kcmp",
        "kexec_file_load",
        "kexec_load",
        "keyctl",
        "lookup_dcookie",
        "mount",
        "mount_setattr",
        "move_mount",
        "open_by_handle_at",
        "open_tree",
        "open_tree_attr",
        "perf_event_open",
        "pivot_root",
        "quotactl",
        "quotactl_fd",
        "reboot",
        "request_key",
        "setdomainname",
        "sethostname",
        "setns",
        "settimeofday",
        "swapoff",
        "swapon",
        "syslog",
        "umount2",
        "unshare",
        "userfaultfd",
        "vhangup",
    }
)
"""Notable syscalls that fail with EPERM (as does everything not allowed)."""

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6] (little-endian).
_NR_OFFSET, _ARCH_OFFSET = 0, 4
_X32_SYSCALL_BIT = 0x40000000

# Classic BPF opcodes (linux/bpf_common.h) and seccomp return values (linux/seccomp.h).
_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ, _JGE, _JSET = 0x15, 0x35, 0x45  # BPF_JMP | BPF_JEQ/JGE/JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K
_KILL_PROCESS = 0x80000000
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
_EPERM = _ERRNO | errno.EPERM
_ENOSYS = _ERRNO | errno.ENOSYS
_MAX_INSNS = 4096  # BPF_MAXINSNS


@dataclass(frozen=True)
class _Arch:
    audit: int  # AUDIT_ARCH_* (linux/audit.h)
    numbers: Mapping[str, int]
    has_x32: bool


_ARCHES: Final = MappingProxyType(
    {
        "x86_64": _Arch(0xC000003E, syscalls.X86_64, has_x32=True),
        "aarch64": _Arch(0xC00000B7, syscalls.AARCH64, has_x32=False),
    }
)


def _low(arg: int) -> int:
    return 16 + 8 * arg


def _high(arg: int) -> int:
    return 16 + 8 * arg + 4


class _Assembler:
    """Classic BPF with forward jumps to named labels; refuses a jump that does not fit a u8."""

    def __init__(self) -> None:
        self._insns: list[tuple[int, str | None, str | None, int]] = []
        self._labels: dict[str, int] = {}
        self._fresh = 0

    def label(self, name: str) -> None:
        assert name not in self._labels, name
        self._labels[name] = len(self._insns)

    def fresh(self, stem: str) -> str:
        self._fresh += 1
        return f"{stem}.{self._fresh}"

    def load(self, offset: int) -> None:
        self._insns.append((_LD_ABS, None, None, offset))

    def jump(self, op: int, k: int, true: str | None = None, false: str | None = None) -> None:
        """Compare the accumulator with `k`; None as a target means the next instruction."""
        self._insns.append((op, true, false, k))

    def ret(self, action: int) -> None:
        self._insns.append((_RET, None, None, action))

    def assemble(self) -> bytes:
        out = bytearray()
        for index, (code, true, false, k) in enumerate(self._insns):
            jt, jf = self._offset(index, true), self._offset(index, false)
            out += struct.pack("<HBBI", code, jt, jf, k)
        if len(self._insns) > _MAX_INSNS:
            raise AssertionError(f"{len(self._insns)} instructions, over BPF_MAXINSNS")
        return bytes(out)

    def _offset(self, index: int, label: str | None) -> int:
        if label is None:
            return 0
        offset = self._labels[label] - index - 1
        if not 0 <= offset <= 0xFF:
            raise AssertionError(f"jump to {label} from {index} does not fit a u8")
        return offset


def _allow_if_equal(asm: _Assembler, arg: int, values: tuple[int, ...]) -> None:
    """Allow when the 64-bit argument equals one of `values` (all below 2**32)."""
    deny, allow = asm.fresh("deny"), asm.fresh("allow")
    asm.load(_high(arg))
    asm.jump(_JEQ, 0, false=deny)
    asm.load(_low(arg))
    for value in values:
        asm.jump(_JEQ, value, true=allow)
    asm.label(deny)
    asm.ret(_EPERM)
    asm.label(allow)
    asm.ret(_ALLOW)


def _socket(asm: _Assembler) -> None:
    _allow_if_equal(asm, 0, tuple(SOCKET_FAMILIES.values()))


def _personality(asm: _Assembler) -> None:
    _allow_if_equal(asm, 0, PERSONALITIES)


def _clone(asm: _Assembler) -> None:
    # clone's flags are arg 0 on x86_64 and aarch64 (arg 1 only on s390). The kernel reads the
    # low 32 bits alone (lower_32_bits in kernel/fork.c), and so does this check.
    deny = asm.fresh("deny")
    asm.load(_low(0))
    asm.jump(_JSET, CLONE_NAMESPACE_FLAGS, true=deny)
    asm.ret(_ALLOW)
    asm.label(deny)
    asm.ret(_EPERM)


def _ioctl(asm: _Assembler) -> None:
    # The request is an unsigned int to the kernel: compare the low word only, so that high
    # bits set by the caller cannot dodge the check.
    deny = asm.fresh("deny")
    asm.load(_low(1))
    for request in DENIED_IOCTLS.values():
        asm.jump(_JEQ, request, true=deny)
    asm.ret(_ALLOW)
    asm.label(deny)
    asm.ret(_EPERM)


def _enosys(asm: _Assembler) -> None:
    asm.ret(_ENOSYS)


def _allow(asm: _Assembler) -> None:
    asm.ret(_ALLOW)


_CHECKS: Final[Mapping[str, Callable[[_Assembler], None]]] = MappingProxyType(
    {"clone": _clone, "ioctl": _ioctl, "personality": _personality, "socket": _socket}
)


def _arch(machine: str | None) -> tuple[str, _Arch]:
    name = platform.machine() if machine is None else machine
    try:
        return name, _ARCHES[name]
    except KeyError:
        raise SeccompUnsupported(
            f"no seccomp filter for architecture {name!r} (supported: {', '.join(_ARCHES)})"
        ) from None


def _rules(arch: _Arch) -> list[tuple[int, Callable[[_Assembler], None]]]:
    checks = {name: _CHECKS[name] for name in ARGUMENT_CHECKED}
    rules = dict.fromkeys(ALLOWED, _allow) | checks | dict.fromkeys(ENOSYS, _enosys)
    numbered = [(arch.numbers[name], emit) for name, emit in rules.items() if name in arch.numbers]
    return sorted(numbered, key=lambda rule: rule[0])


def seccomp_program(machine: str | None = None) -> bytes:
    """The filter as a raw classic-BPF program, ready for `bwrap --seccomp FD`.

    Args:
        machine: a `platform.machine()` value ("x86_64" or "aarch64"); None for this machine.

    Returns:
        An array of `struct sock_filter` (u16 code, u8 jt, u8 jf, u32 k), little-endian, with
        no header.

    Raises:
        SeccompUnsupported: no filter exists for that architecture.
    """
    _, arch = _arch(machine)
    asm = _Assembler()
    asm.load(_ARCH_OFFSET)
    asm.jump(_JEQ, arch.audit, true="native")
    asm.ret(_KILL_PROCESS)
    asm.label("native")
    asm.load(_NR_OFFSET)
    if arch.has_x32:
        # x32 numbers carry bit 30; numbers from 2**31 up are negative (-1 is what a tracer
        # writes to skip a call) and fall through to EPERM like any unknown number.
        asm.jump(_JGE, _X32_SYSCALL_BIT, false="dispatch")
        asm.jump(_JGE, 0x80000000, true="dispatch")
        asm.ret(_KILL_PROCESS)
    asm.label("dispatch")
    for number, emit in _rules(arch):
        skip = asm.fresh("next")
        asm.jump(_JEQ, number, false=skip)
        emit(asm)
        asm.label(skip)
    asm.ret(_EPERM)
    return asm.assemble()


def allowed_names(machine: str | None = None) -> frozenset[str]:
    """Every syscall the filter can let through on that architecture.

    Some only for some arguments: see `ARGUMENT_CHECKED`.

    Raises:
        SeccompUnsupported: no filter exists for that architecture.
    """
    _, arch = _arch(machine)
    return frozenset(name for name in ALLOWED | ARGUMENT_CHECKED.keys() if name in arch.numbers)


def describe(machine: str | None = None) -> str:
    """A one-line summary of the filter for the logs.

    Raises:
        SeccompUnsupported: no filter exists for that architecture.
    """
    name, _ = _arch(machine)
    return (
        f"seccomp ({name}): allowlist of {len(allowed_names(machine))} syscalls "
        f"(Docker default minus {', '.join(sorted(BEYOND_DOCKER))}; "
        f"{', '.join(sorted(ARGUMENT_CHECKED))} argument-checked; "
        f"{', '.join(sorted(ENOSYS))} ENOSYS), default EPERM"
    )
