"""The one way agentd runs git on a home: a confined environment, always, and bubblewrap
around it unless the sandbox is off.

The agent can write any byte, name and inode type under the home (but not `.git`,
`agentd.toml` or `.agentd/`), and agentd's git then runs on that tree, often as root. So:

- git reads no config but the home's `.git/config` (which only the owner can write; an
  `[include]` in it is refused, since it could pull in a file the agent writes) and ours:
  no system or global file, `HOME` pointing nowhere, and our settings passed as
  command-line config (`GIT_CONFIG_COUNT`), which outranks the repository's. They switch
  off hooks, fsmonitor, pagers, signing, protocols, auto-maintenance and submodule
  recursion, and turn on the NTFS/HFS name protections. `GIT_DIR` and `GIT_WORK_TREE` are
  explicit, so git never discovers a repository by walking up from anywhere, and never
  reads a nested one's config.
- Filters and textconv cannot be switched off by config, only left undefined; agentd's own
  `.git/info/attributes` (write_info), which outranks every `.gitattributes`, unsets them
  for every path, and diff, show and log run with `--no-ext-diff --no-textconv`.
- `GIT_LITERAL_PATHSPECS=1`: a file named `:(glob)**` is a file, not pathspec magic.
- The environment is built from nothing (never inherited), so no `GIT_*` variable of
  agentd's own environment (GIT_EXTERNAL_DIFF, GIT_DIR, GIT_INDEX_FILE, …) reaches git.
- git itself runs in bubblewrap like bash does (agentd.tools.sandbox): no network, no
  capabilities, the seccomp filter, every tmpfs mask, the home read-only and only
  `<home>/.git` writable. A git feature nobody thought of still runs confined. Without
  `CAP_DAC_OVERRIDE`, a file the agent made unreadable can't be read: agentd.gitscreen holds
  such files back instead of failing.
- With `[sandbox] mode = "off"` in agentd.toml, or no bubblewrap installed, git runs on the
  host with the same confined environment (bash is then unsandboxed too, or refuses).
  Only `agentd init`, before any agent code ran, runs git unsandboxed on purpose.
- A stale `.git/index.lock` (or ref lock) left by a killed git is removed only when no git
  process works in the home (clear_stale_locks; agentd.history calls it under its git lock).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from agentd.config import CONFIG_NAME, Settings, load_settings
from agentd.errors import AgentdError
from agentd.homefs import Root
from agentd.tools import sandbox as sb
from agentd.tools.bwrap import MASKED_DIRS, SANE_PATH

GIT = "git"
AUTHOR_NAME = "agentd"
AUTHOR_EMAIL = "agentd@localhost"
NOWHERE = "/nonexistent"  # HOME and XDG_CONFIG_HOME: no ~/.gitconfig, no ~/.config/git
TIMEOUT = 300.0  # seconds; sizes are capped before git sees a file, so this is generous
TMP_BYTES = 16 * 1024 * 1024  # each tmpfs in git's sandbox (/tmp, /dev/shm, the masks)

# Command-line scope config: it outranks the home's .git/config, and git reads no other.
CONFIG: tuple[tuple[str, str], ...] = (
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("core.attributesFile", "/dev/null"),
    ("core.excludesFile", "/dev/null"),
    ("core.pager", "cat"),
    ("core.protectNTFS", "true"),
    ("core.protectHFS", "true"),
    ("safe.bareRepository", "explicit"),
    ("submodule.recurse", "false"),
    ("diff.ignoreSubmodules", "all"),
    ("status.submoduleSummary", "false"),
    ("protocol.allow", "never"),
    ("credential.helper", ""),
    ("commit.gpgSign", "false"),
    ("tag.gpgSign", "false"),
    ("log.showSignature", "false"),
    ("color.ui", "false"),
    ("diff.noprefix", "false"),
    ("diff.mnemonicPrefix", "false"),
    ("apply.whitespace", "nowarn"),
    ("gc.autoDetach", "false"),  # auto-gc in the foreground, not a daemon the sandbox kills
    ("maintenance.auto", "false"),  # agentd.history runs gc itself, only when it is due
)

# agentd's blocks in .git/info (the agent cannot write .git): excludes keep git status
# quiet (agentd.gitscreen enforces them), attributes unset every filter and textconv.
EXCLUDE_MARK = "# agentd: runtime files, never committed (agentd keeps this block)"
EXCLUDE = (f"{EXCLUDE_MARK}\n/.agentd/\n.env*\n*.pem\n/inbox/*\n!/inbox/.gitkeep\n")
ATTRIBUTES_MARK = "# agentd: no filter, textconv, ident or encoding runs on agent files"
ATTRIBUTES = f"{ATTRIBUTES_MARK}\n* !filter !diff !merge !ident !working-tree-encoding\n"

INCLUDE = re.compile(rb"^\s*\[\s*include(if)?\b", re.I | re.M)
STALE_LOCK_AGE = 5.0  # seconds; a younger lock may belong to a git that is just starting

# The fixed environment; git_env() adds the repository and the config above.
ENV: dict[str, str] = {
    "PATH": SANE_PATH,
    "HOME": NOWHERE,
    "XDG_CONFIG_HOME": NOWHERE,
    "LC_ALL": "C",
    "LANG": "C",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_ATTR_NOSYSTEM": "1",
    "GIT_LITERAL_PATHSPECS": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_PROTOCOL_FROM_USER": "0",
    "GIT_ALLOW_PROTOCOL": "",
    "GIT_PAGER": "cat",
    "PAGER": "cat",
    "GIT_AUTHOR_NAME": AUTHOR_NAME,
    "GIT_AUTHOR_EMAIL": AUTHOR_EMAIL,
    "GIT_COMMITTER_NAME": AUTHOR_NAME,
    "GIT_COMMITTER_EMAIL": AUTHOR_EMAIL,
}


def git_env(home: Path) -> dict[str, str]:
    """The whole environment git runs with, for `home`; nothing is inherited but TZ (commit
    dates in the owner's zone)."""
    env = dict(ENV)
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    env["GIT_DIR"] = str(home / ".git")
    env["GIT_WORK_TREE"] = str(home)
    return env | config_env()


def config_env() -> dict[str, str]:
    """CONFIG as git's GIT_CONFIG_COUNT/KEY_n/VALUE_n variables (command-line config that
    no repository's own config can override): for git_env and for the fleet's mirror
    (agentd.fleet.workspace), which runs git outside the sandbox with other variables."""
    env = {"GIT_CONFIG_COUNT": str(len(CONFIG))}
    for i, (key, value) in enumerate(CONFIG):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def git_argv(home: Path, command: list[str], *, bwrap: str, seccomp_fd: int,
             env: dict[str, str]) -> list[str]:
    """The bwrap command line running `command` (git, or the fixed commit script) on `home`.

    Pure. Shaped like bash's (agentd.tools.bwrap.bwrap_argv) minus everything writable:
    the home is bound read-only and only `<home>/.git` writable on top. git never writes the
    worktree: undo's reverted files are written through agentd.homefs (agentd.gitundo).
    """
    h, dotgit = str(home), str(home / ".git")
    argv = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session", "--cap-drop", "ALL", "--clearenv"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    size = ["--size", str(TMP_BYTES)]  # for the next --tmpfs only
    argv += ["--ro-bind", "/", "/", "--dev", "/dev", "--remount-ro", "/dev",
             *size, "--tmpfs", "/dev/shm", "--proc", "/proc"]
    for masked in (*MASKED_DIRS, "/tmp"):
        argv += [*size, "--tmpfs", masked]
    argv += ["--ro-bind", h, h, "--bind", dotgit, dotgit, "--seccomp", str(seccomp_fd),
             "--chdir", h, "--", *command]
    return argv


@dataclass
class Result:
    """What one git run returned."""

    code: int
    out: bytes
    err: bytes

    @property
    def ok(self) -> bool:
        return self.code == 0

    def text(self) -> str:
        return self.out.decode("utf-8", errors="replace")

    def why(self) -> str:
        """git's last stderr line: its reason, for a one-line error."""
        lines = self.err.decode("utf-8", errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit {self.code}"


_settings_cache: dict[Path, tuple[tuple[int, int, int], Settings]] = {}


def home_settings(home: Path) -> Settings:
    """The home's settings, re-read only when agentd.toml changes (git runs several times per
    turn). agentd.toml is read-only to the agent, so it may choose how git runs. A file that
    does not parse, or that load_settings refuses (a symlink, FIFO or device: homefs never
    follows or opens those), gives the defaults: the strictest choice (sandboxed, default
    limits). The cache key is the name's own lstat, which never opens or follows it."""
    path = home / CONFIG_NAME
    try:
        st = path.lstat()
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        key = (0, 0, 0)
    cached = _settings_cache.get(home)
    if cached and cached[0] == key:
        return cached[1]
    try:
        settings = load_settings(home)
    except AgentdError:
        settings = Settings()
    _settings_cache[home] = (key, settings)
    return settings


def bwrap_for(home: Path) -> str | None:
    """bubblewrap's path when git on `home` runs sandboxed; None for `[sandbox] mode = "off"`
    or when bubblewrap is missing (git then runs with the confined environment only, and
    `agentd doctor` reports the missing sandbox)."""
    if home_settings(home).sandbox.mode == "off":
        return None
    return sb.find_bwrap()


_config_ok: dict[Path, tuple[int, int, int]] = {}


def check_config(home: Path) -> None:
    """Refuse a repository whose config includes other files. Git takes filters, textconv
    and other commands only from config, and the only config it reads is the home's own
    `.git/config` (and `config.worktree`), which the agent cannot write; an
    `[include]`/`[includeIf]` could bring in a file it can. Re-read only when changed."""
    for name in ("config", "config.worktree"):
        path = home / ".git" / name
        try:
            st = path.stat()
        except OSError:
            continue
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if _config_ok.get(path) == key:
            continue
        if INCLUDE.search(path.read_bytes()):
            raise AgentdError(f"{path} includes other config files ([include] or "
                              "[includeIf]); agentd runs no git there, since an included file "
                              "could be one the agent writes: move its settings into "
                              f".git/{name} itself")
        _config_ok[path] = key


def run(home: Path, *args: str, stdin: bytes | None = None, sandbox: bool = True,
        timeout: float = TIMEOUT) -> Result:
    """Run `git ARGS` on `home`, confined. Raises AgentdError only when git could not run
    at all (no git, the sandbox failed, a timeout); git's own failures are in the Result."""
    return run_command(home, [GIT, *args], stdin=stdin, sandbox=sandbox, timeout=timeout)


def run_command(home: Path, command: list[str], *, stdin: bytes | None = None,
                sandbox: bool = True, timeout: float = TIMEOUT) -> Result:
    """Like run(), for a fixed command line made of git calls (history's commit script)."""
    check_config(home)
    env = git_env(home)
    bwrap = bwrap_for(home) if sandbox else None
    if bwrap is None:
        return _spawn(command, env, str(home), (), stdin, timeout)
    fd = sb.seccomp_memfd()
    try:
        argv = git_argv(home, command, bwrap=bwrap, seccomp_fd=fd, env=env)
        result = _spawn(argv, sb.launcher_env(), None, (fd,), stdin, timeout)
    finally:
        os.close(fd)
    if result.code != 0 and result.err.startswith(b"bwrap:"):
        raise AgentdError(f"git could not start in the sandbox ({result.why()}); fix "
                          "bubblewrap, or set [sandbox] mode = \"off\" in agentd.toml")
    return result


def _spawn(argv: list[str], env: dict[str, str], cwd: str | None, fds: tuple[int, ...],
           stdin: bytes | None, timeout: float) -> Result:
    """One process in its own session, killed with its group on a timeout."""
    try:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, pass_fds=fds, start_new_session=True,
                                stdin=subprocess.PIPE if stdin is not None else
                                subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except OSError as e:
        raise AgentdError(f"cannot run git ({e}): `apt-get install git`") from None
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AgentdError(f"git took longer than {timeout:.0f}s and was stopped") from None
    return Result(proc.returncode, out, err)


def _ensure_block(root: Root, rel: str, mark: str, block: str) -> None:
    """Append agentd's block to a file in .git/info unless it is there already. Through
    agentd.homefs: `.git/` is read-only in the sandbox, but bash can write it with the
    sandbox off, and a link planted at the file must not have the host append to its
    target (nor a FIFO hang every commit): such a thing is not read, and is replaced."""
    try:
        text = root.read_bytes(rel).decode("utf-8", errors="replace")
    except OSError:  # missing, or refused (a link, a FIFO): append_text replaces it
        text = ""
    if mark not in text:
        root.append_text(rel, ("\n" if text and not text.endswith("\n") else "") + block)


def write_info(home: Path) -> None:
    """agentd's `.git/info/exclude` and `.git/info/attributes` blocks (a home made before
    them gets them at its next commit). Cheap: two small reads when they are present."""
    info = home / ".git" / "info"
    info.mkdir(parents=True, exist_ok=True)
    with Root(info) as root:  # the folder as git finds it (a worktree's .git may be a link)
        _ensure_block(root, "exclude", EXCLUDE_MARK, EXCLUDE)
        _ensure_block(root, "attributes", ATTRIBUTES_MARK, ATTRIBUTES)


def git_running_in(home: Path) -> bool:
    """Whether a git process works in `home` (its cwd, or the home on its command line)."""
    root = str(home)
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if not os.path.basename(argv[0].decode(errors="replace")).startswith("git"):
                continue
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if cwd == root or cwd.startswith(root + "/") or any(root.encode() in a for a in argv):
            return True
    return False


def _lock_files(home: Path) -> list[Path]:
    """The locks a git killed mid-commit leaves: the index, HEAD, packed refs, branches."""
    dotgit = home / ".git"
    found = [p for p in (dotgit / "index.lock", dotgit / "HEAD.lock",
                         dotgit / "packed-refs.lock") if p.exists()]
    heads = dotgit / "refs" / "heads"
    if heads.is_dir():
        found += sorted(heads.rglob("*.lock"))
    return found


def clear_stale_locks(home: Path, min_age: float = STALE_LOCK_AGE) -> list[str]:
    """Remove lock files left by a dead git; returns what was removed (relative to .git).

    The caller holds the git lock, so no agentd process is mid-commit. A lock is left alone
    while a git process works in the home (the owner's, in a terminal); a younger one is
    looked at again once it is `min_age` old, in case its git was just starting.
    """
    locks = _lock_files(home)
    if not locks or git_running_in(home):
        return []
    youngest = min(_age(p) for p in locks)
    if youngest < min_age:
        time.sleep(min_age - youngest)
        if git_running_in(home):
            return []
    removed = []
    for lock in locks:
        if lock.exists():
            lock.unlink(missing_ok=True)
            removed.append(str(lock.relative_to(home / ".git")))
    return removed


def _age(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except FileNotFoundError:
        return float("inf")
