"""The installed size of agentd without its dev extras: the runtime dependency closure.

Offline: it walks the requirements of the installed `agentd` distribution (no extras)
through importlib.metadata and sums the files each distribution's RECORD lists, so it
measures exactly what `pip install agentd-*.whl` puts in a fresh venv (plus pip itself,
which a venv brings; listed apart). Also prints the dev extras' own size, for contrast.
"""

from __future__ import annotations

import contextlib
import re
from importlib import metadata

MB = 1024 * 1024


def _name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _size(dist: metadata.Distribution) -> int:
    total = 0
    for f in dist.files or ():
        with contextlib.suppress(OSError):
            total += f.locate().stat().st_size
    return total


def closure(root: str, extra: str | None = None) -> dict[str, int]:
    """Every distribution `root` needs (with `extra`, only what that extra adds), by size."""
    seen: dict[str, int] = {}
    todo = []
    for req in metadata.requires(root) or ():
        marker = req.split(";", 1)[1] if ";" in req else ""
        wanted = f'extra == "{extra}"' in marker if extra else "extra ==" not in marker
        if wanted:
            todo.append(_name(req))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = _size(dist)
        todo += [_name(r) for r in dist.requires or () if "extra ==" not in r]
    return seen


def main() -> None:
    runtime = closure("agentd")
    dev = {k: v for k, v in closure("agentd", "dev").items() if k not in runtime}
    pip = _size(metadata.distribution("pip"))
    total = sum(runtime.values())
    print(f"runtime dependencies: {len(runtime)} distributions, {total / MB:.1f} MiB "
          f"(+ pip {pip / MB:.1f} MiB in any venv) = {(total + pip) / MB:.1f} MiB")
    for name, size in sorted(runtime.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {name:24} {size / MB:6.1f} MiB")
    print(f"dev extras add: {len(dev)} distributions, {sum(dev.values()) / MB:.1f} MiB "
          "(not installed by `pip install agentd`)")


if __name__ == "__main__":
    main()
