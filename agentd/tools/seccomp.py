"""A seccomp filter for the sandbox, as a classic-BPF program built in pure Python.

bwrap installs it (`--seccomp FD`, reading the raw `struct sock_filter` array from FD) right
before it execs the command, after setting no-new-privileges, so it binds the command and
everything it starts. Why a filter on top of namespaces and dropped capabilities: those stop
most of these calls already, but the kernel's attack surface behind them (io_uring, bpf,
userfaultfd, perf, keyrings, the new mount API) is where sandbox escapes come from, and
AF_UNIX sockets are the one thing a read-only bind of `/` leaves reachable (docker.sock,
dbus, ssh-agent in a host directory the agent can see).

Policy: allow by default; EPERM for the calls below; EPERM for `clone` asking for any new
namespace; ENOSYS for `clone3` and `openat2` (their flags and mode sit behind a pointer BPF
can't read; libc falls back to `clone`/`openat` on ENOSYS, as under Docker).
Sockets: an allow-list of families. AF_INET and AF_INET6 are allowed (the network namespace
decides where they reach); AF_UNIX gets EPERM (host sockets such as docker.sock, dbus or
ssh-agent sit in folders the sandbox can see); every other family gets EAFNOSUPPORT, the
kernel's own answer for a family it lacks, so programs fall back quietly. That covers
AF_VSOCK (vsock has no network namespace: on a VM it reaches the hypervisor's ports),
AF_PACKET, AF_ALG, AF_BLUETOOTH and AF_NETLINK: nothing an agent runs needs netlink inside
a namespace that holds only `lo` (glibc's getaddrinfo copes without it; `ip` does not, and
has nothing to show there), and netlink is a large kernel attack surface.
No set-id file can be made: EPERM for the chmod family setting setuid/setgid bits, for
`open`/`openat`/`creat` whose mode has them (a new file takes those bits from the mode),
and for `mknod`/`mknodat` of a character or block device or with set-id bits (FIFOs,
sockets and plain files stay allowed: `mkfifo` is ordinary, and a device node would be a
way to raw disks or kernel memory if the sandbox ever held CAP_MKNOD). A set-id file left
in the home is dangerous even when made as an unprivileged uid: host-side code running as
root that copies a file's mode would make it a set-uid *root* binary.
Fail closed on ABI confusion: a syscall made through another ABI than the host's (i386
`int 0x80` on x86_64, arm32 on aarch64) or the x32 range (nr >= 0x40000000) gets EPERM for
everything, because its numbers would mean other calls. An unsupported host architecture
makes `program()` raise, so bash refuses rather than running unfiltered.
"""

from __future__ import annotations

import errno
import os
import struct

# Offsets in struct seccomp_data: int nr; u32 arch; u64 ip; u64 args[6].
NR, ARCH, ARG0_LO = 0, 4, 16  # args are little-endian on both supported hosts: the low
# 32 bits of args[i] are at ARG0_LO + 8 * i

# Classic BPF opcodes (linux/filter.h).
LD_W_ABS = 0x20
JEQ_K = 0x15
JGE_K = 0x35
JSET_K = 0x45
AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K: acc &= k
RET_K = 0x06

RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
DENY = RET_ERRNO | errno.EPERM
NOSYS = RET_ERRNO | errno.ENOSYS
NOFAMILY = RET_ERRNO | errno.EAFNOSUPPORT

AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
SOCKET_FAMILIES = (AF_INET, AF_INET6)  # the only families socket()/socketpair() may open
S_ISUID_ISGID = 0o6000
S_IFMT, S_IFCHR, S_IFBLK = 0o170000, 0o020000, 0o060000
# Calls whose mode argument (by index) must not carry set-id bits: the chmod family, and
# the calls that create a file with that mode.
CHMODS = {"chmod": 1, "fchmod": 1, "fchmodat": 2, "fchmodat2": 2,
          "open": 2, "openat": 3, "creat": 1}
# mknod-like calls and the index of their mode argument: no devices, no set-id bits.
MKNODS = {"mknod": 1, "mknodat": 2}
# ENOSYS: arguments behind a pointer (clone3's flags, openat2's mode); libc falls back.
NOSYS_CALLS = ("clone3", "openat2")
X32_SYSCALL_BIT = 0x40000000
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET. (CLONE_NEWTIME is
# 0x80, which clone() reads as part of the exit signal; it only works via clone3/unshare.)
CLONE_NS_FLAGS = 0x7E020000

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

# Refused outright (EPERM), grouped by why.
DENIED = (
    # debugging / reading other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    # mounts and namespaces (cap-drop already blocks them; belt and braces)
    "mount", "umount2", "pivot_root", "unshare", "setns", "mount_setattr",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
    # kernel attack surface an agent never needs
    "bpf", "io_uring_setup", "io_uring_enter", "io_uring_register", "perf_event_open",
    "userfaultfd", "keyctl", "add_key", "request_key",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    # file handles bypass path-based checks (the "shocker" container escape)
    "open_by_handle_at", "name_to_handle_at",
)  # fmt: skip

# Numbers from <asm/unistd_64.h> (x86_64) and <asm-generic/unistd.h> (aarch64).
SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "socket": 41, "socketpair": 53, "clone": 56, "clone3": 435,
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
        "mount": 165, "umount2": 166, "pivot_root": 155, "unshare": 272, "setns": 308,
        "mount_setattr": 442, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "bpf": 321, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250, "add_key": 248,
        "request_key": 249, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175,
        "finit_module": 313, "delete_module": 176,
        "open_by_handle_at": 304, "name_to_handle_at": 303,
        "chmod": 90, "fchmod": 91, "fchmodat": 268, "fchmodat2": 452,
        "open": 2, "openat": 257, "creat": 85, "openat2": 437, "mknod": 133, "mknodat": 259,
    },
    "aarch64": {
        "socket": 198, "socketpair": 199, "clone": 220, "clone3": 435,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
        "mount": 40, "umount2": 39, "pivot_root": 41, "unshare": 97, "setns": 268,
        "mount_setattr": 442, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "bpf": 280, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "perf_event_open": 241, "userfaultfd": 282, "keyctl": 219, "add_key": 217,
        "request_key": 218, "kexec_load": 104, "kexec_file_load": 294, "init_module": 105,
        "finit_module": 273, "delete_module": 106,
        "open_by_handle_at": 265, "name_to_handle_at": 264,
        "fchmod": 52, "fchmodat": 53, "fchmodat2": 452,  # no plain chmod on aarch64
        "openat": 56, "openat2": 437, "mknodat": 33,  # nor open, creat or mknod
    },
}  # fmt: skip

Insn = tuple[int, int, int, int]  # code, jt, jf, k


class _Asm:
    """A tiny assembler: forward jumps to named labels, resolved into 8-bit offsets."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int, jt: str | int = 0, jf: str | int = 0) -> None:
        self.code.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> list[Insn]:
        out: list[Insn] = []
        for i, (code, jt, jf, k) in enumerate(self.code):
            offs = []
            for target in (jt, jf):
                off = target if isinstance(target, int) else self.labels[target] - i - 1
                if not 0 <= off <= 255:
                    raise ValueError(f"seccomp jump out of range at {i}")
                offs.append(off)
            out.append((code, offs[0], offs[1], k))
        return out


def instructions(arch: str) -> list[Insn]:
    """The filter for `arch` as (code, jt, jf, k) tuples."""
    if arch not in SYSCALLS:
        raise ValueError(f"no seccomp filter for architecture {arch!r} (supported: "
                         f"{', '.join(SYSCALLS)})")
    nr = SYSCALLS[arch]
    a = _Asm()
    a.op(LD_W_ABS, ARCH)
    a.op(JEQ_K, AUDIT_ARCH[arch], 0, "deny")
    a.op(LD_W_ABS, NR)
    if arch == "x86_64":
        a.op(JGE_K, X32_SYSCALL_BIT, "deny", 0)
    for name in DENIED:
        a.op(JEQ_K, nr[name], "deny", 0)
    a.op(JEQ_K, nr["socket"], "socket", 0)
    a.op(JEQ_K, nr["socketpair"], "socket", 0)
    a.op(JEQ_K, nr["clone"], "clone", 0)
    for name in NOSYS_CALLS:
        a.op(JEQ_K, nr[name], "nosys", 0)
    for table, prefix in ((CHMODS, "mode"), (MKNODS, "mknod")):
        for name, arg in table.items():
            if name in nr:
                a.op(JEQ_K, nr[name], f"{prefix}{arg}", 0)
    a.op(RET_K, RET_ALLOW)
    for arg in sorted(set(CHMODS.values())):
        a.label(f"mode{arg}")
        a.op(LD_W_ABS, ARG0_LO + 8 * arg)  # mode_t is 32 bits: the low word is all of it
        a.op(JSET_K, S_ISUID_ISGID, "deny", "allow")
    for arg in sorted(set(MKNODS.values())):
        a.label(f"mknod{arg}")
        a.op(LD_W_ABS, ARG0_LO + 8 * arg)
        a.op(JSET_K, S_ISUID_ISGID, "deny", 0)
        a.op(AND_K, S_IFMT)
        a.op(JEQ_K, S_IFCHR, "deny", 0)
        a.op(JEQ_K, S_IFBLK, "deny", "allow")
    a.label("socket")
    a.op(LD_W_ABS, ARG0_LO)  # the domain is an int: the kernel reads the low 32 bits only
    for family in SOCKET_FAMILIES:
        a.op(JEQ_K, family, "allow", 0)
    a.op(JEQ_K, AF_UNIX, "deny", 0)
    a.op(RET_K, NOFAMILY)
    a.label("clone")
    a.op(LD_W_ABS, ARG0_LO)  # every namespace flag is in the low 32 bits
    a.op(JSET_K, CLONE_NS_FLAGS, "deny", "allow")
    a.label("allow")  # BPF jumps only forward: the shared verdicts come last
    a.op(RET_K, RET_ALLOW)
    a.label("nosys")
    a.op(RET_K, NOSYS)
    a.label("deny")
    a.op(RET_K, DENY)
    return a.assemble()


def host_arch() -> str:
    machine = os.uname().machine.lower()  # not `platform`: 1 ms of import for one string
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


_cache: dict[str, bytes] = {}


def program(arch: str | None = None) -> bytes:
    """The filter as the bytes bwrap reads: `struct sock_filter` (u16, u8, u8, u32) each."""
    arch = arch or host_arch()
    if arch not in _cache:
        _cache[arch] = b"".join(struct.pack("<HBBI", *insn) for insn in instructions(arch))
    return _cache[arch]


def decode(blob: bytes) -> list[Insn]:
    """Back from bytes to tuples: for tests and for anyone auditing the filter."""
    return [struct.unpack_from("<HBBI", blob, i) for i in range(0, len(blob), 8)]


def run(blob: bytes, arch: int, nr: int, *args: int) -> int:
    """Interpret the program for one syscall: what the kernel would return. Only the
    opcodes emitted above are supported; tests use it to check every decision."""
    padded = [*args, 0, 0, 0, 0, 0, 0][:6]
    data = struct.pack("<iIQ6Q", nr, arch, 0, *padded)
    prog = decode(blob)
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == LD_W_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == RET_K:
            return k
        elif code == AND_K:
            acc &= k
            pc += 1
        elif code in (JEQ_K, JGE_K, JSET_K):
            hit = {JEQ_K: acc == k, JGE_K: acc >= k, JSET_K: bool(acc & k)}[code]
            pc += 1 + (jt if hit else jf)
        else:
            raise ValueError(f"unexpected opcode {code:#x} at {pc}")
