"""Run agentd the way the system unit does, without a systemd-booted test machine.

`Systemd` boots a throwaway /lib/systemd/systemd as PID 1 of fresh user, mount, pid, cgroup,
uts and ipc namespaces and starts one unit in it. The user namespace maps 0-65535 to host
uids 100000+, so nothing in there is the host's root: systemd's own writes to global
sysctls fail harmlessly, and the unit's dedicated user is host uid 100990. Unit files come
from SYSTEMD_UNIT_PATH only, so none of the host's units (udev, sysctl, getty…) start.
Why go this far: `systemd-analyze` only reads a unit, and only a real manager applies
PrivateUsers=, ProtectSystem=, SystemCallFilter= and friends, which bwrap has to survive
(ProcSubset=pid and ProtectKernelTunables= were found to break it this way).

`Unprivileged` is the lighter check: agentd as a plain uid under `setpriv --no-new-privs`
with every capability dropped.

Both need agentd's code where an unprivileged user can reach it and the unit does not hide
it (ProtectHome=, PrivateTmp=): paths that fail that are bound read-only under /mnt in a
private mount namespace, set up as the real root before anything is dropped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import site
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agentd.daemon.units import HOME_ROOTS, TMP_ROOTS

SUBUID = 100000  # host uid of the namespace's root
SERVICE_UID = 990  # the dedicated user inside the namespace
SYSTEMD = Path("/lib/systemd/systemd")
REPO = Path(__file__).resolve().parent.parent
MOUNTS = Path("/mnt/agentd-test")
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
STUB_UNITS = ("sysinit.target", "basic.target", "shutdown.target", "network-online.target",
              "multi-user.target", "system.slice")


def _reachable(path: Path) -> bool:
    """Can any user get to `path`, and does the system unit leave it visible?"""
    if any(path == r or r in path.parents for r in HOME_ROOTS + TMP_ROOTS):
        return False
    with contextlib.suppress(OSError):
        return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])
    return False


class Code:
    """agentd's interpreter and import path as others can run them (`python`, `env`), and
    the bind mounts (`mounts()`, run as root in a private mount namespace) that make them
    so."""

    def __init__(self) -> None:
        self.binds: list[tuple[Path, Path]] = []
        self.env: dict[str, str] = {}
        self.python = self._python()
        paths = [REPO, *(Path(p) for p in site.getsitepackages([sys.prefix]))]
        self.env["PYTHONPATH"] = ":".join(str(self._expose(p)) for p in paths if p.is_dir())

    def _expose(self, path: Path) -> Path:
        if _reachable(path):
            return path
        target = MOUNTS / str(len(self.binds))
        self.binds.append((path, target))
        return target

    def _python(self) -> str:
        real = Path(os.path.realpath(sys.executable))
        if _reachable(real):
            return str(real)
        v = sys.version_info
        system = Path(f"/usr/bin/python{v.major}.{v.minor}")
        if system.exists() and _reachable(system):
            return str(system)
        prefix = self._expose(Path(sys.base_prefix))
        self.env["LD_LIBRARY_PATH"] = str(prefix / "lib")  # a --enable-shared build's rpath
        return str(prefix / real.relative_to(sys.base_prefix))

    def mounts(self) -> str:
        """Shell commands for the bind mounts (none when everything is reachable)."""
        if not self.binds:
            return ""
        out = [f"mount -t tmpfs -o mode=755 tmpfs {MOUNTS.parent}"]
        for src, dst in self.binds:
            out += [f"mkdir -p {dst}", f"mount --bind -o ro {src} {dst}"]
        return "\n".join(out) + "\n"


def boot_problem() -> str | None:
    """Why a throwaway systemd can't boot here, or None."""
    if os.geteuid() != 0:
        return "root"
    if not SYSTEMD.exists() or not shutil.which("unshare"):
        return "systemd (apt-get install systemd) and unshare"
    base = cgroup2_dir()
    if base is None:
        return "a cgroup2 mount"
    probe = base / f"agentd-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        return f"a writable cgroup2 hierarchy ({e.strerror}: {base})"
    return None


def cgroup2_dir() -> Path | None:
    """Our own cgroup in the cgroup2 hierarchy (pure or hybrid), where systemd gets a child."""
    own = next((line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines()
                if line.startswith("0::")), None)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup2"] and own is not None:
            return Path(left.split()[4]) / own.lstrip("/")
    return None


def unit_files(service: str, unit_text: str, dropin: str) -> dict[str, str]:
    """The unit, a drop-in for it, a target that wants it, and empty stand-ins for what a
    service's default dependencies name."""
    files = {name: f"[Unit]\nDescription={name}\n" for name in STUB_UNITS}
    files["agentd-test.target"] = f"[Unit]\nDescription=test\nWants={service}\n"
    files[service] = unit_text
    files[f"{service}.d/test.conf"] = dropin
    return files


class Systemd:
    """A throwaway systemd running `files` (see unit_files); a context manager."""

    def __init__(self, files: dict[str, str], scratch: Path, code: Code):
        self.scratch = scratch
        self.units = scratch / "units"
        for name, text in files.items():
            (self.units / name).parent.mkdir(parents=True, exist_ok=True)
            (self.units / name).write_text(text)
        for path in [self.units, *self.units.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.code = code
        self.cgroup = cgroup2_dir() / f"agentd-systemd-test-{os.getpid()}"  # type: ignore[operator]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Systemd:
        self.cgroup.mkdir()
        for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
            os.chown(self.cgroup / name, SUBUID, SUBUID)
        log = (self.scratch / "systemd.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.cgroup), self._inner_script(),
             self.code.mounts()],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        return self

    def _inner_script(self) -> str:
        """Run as root of the namespaces (pid 1 until it execs systemd)."""
        return f"""set -e
mount -t tmpfs -o mode=755 tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir /run/etc
cp /etc/passwd /etc/group /run/etc/
echo "agentd:x:{SERVICE_UID}:{SERVICE_UID}::/nonexistent:/usr/sbin/nologin" >> /run/etc/passwd
echo "agentd:x:{SERVICE_UID}:" >> /run/etc/group
mount --bind /run/etc/passwd /etc/passwd
mount --bind /run/etc/group /etc/group
exec env -i container=agentd-test SYSTEMD_UNIT_PATH={self.units} PATH=/usr/bin:/bin \
  {SYSTEMD} --system --unit=agentd-test.target --show-status=no --log-target=console
"""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __exit__(self, exc_type: object, *exc: object) -> None:
        """Kill it all (systemd dies with unshare) and remove the cgroup systemd filled."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # unshare's child dies with it
            self.proc.wait(10)
        deadline = time.monotonic() + 10
        while (self.cgroup / "cgroup.procs").exists():
            with contextlib.suppress(OSError):
                for d in sorted(self.cgroup.rglob("*"), key=lambda p: -len(p.parts)):
                    if d.is_dir():
                        d.rmdir()
                self.cgroup.rmdir()
            if time.monotonic() > deadline:
                if exc_type is None:  # never hide the test's own failure behind this one
                    raise AssertionError(f"{self.cgroup} is still busy")
                return
            time.sleep(0.05)


def own_scratch() -> Path:
    """A folder every user can traverse (pytest's tmp_path is under a 0700 one)."""
    scratch = Path(tempfile.mkdtemp(prefix="agentd-systemd-"))
    scratch.chmod(0o755)
    return scratch


def _launch(cgroup: str, inner: str, code_mounts: str) -> None:
    """The process Systemd starts, as the real root: join the cgroup, make the private
    mounts, enter a new user namespace (its maps written by a helper child, since a
    process can't map itself to other uids), then unshare the rest and run `inner`."""
    Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    if code_mounts:
        subprocess.run(["sh", "-ec", code_mounts], check=True)
    me, (r, w) = os.getpid(), os.pipe()
    helper = os.fork()
    if helper == 0:
        os.close(w)
        os.read(r, 1)  # the parent has unshared
        for name in ("uid_map", "gid_map"):
            Path(f"/proc/{me}/{name}").write_text(f"0 {SUBUID} 65536\n")
        os._exit(0)
    os.close(r)
    if libc.unshare(CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
    os.write(w, b"x")
    if os.waitpid(helper, 0)[1] != 0:
        raise SystemExit("writing the uid map failed")
    os.setresgid(0, 0, 0)
    os.setgroups([])
    os.setresuid(0, 0, 0)
    os.execvp("unshare", ["unshare", "--mount", "--pid", "--fork", "--cgroup", "--uts",
                          "--ipc", "--kill-child", "--mount-proc", "--", "sh", "-c", inner])


if __name__ == "__main__":
    _launch(*sys.argv[1:4])
