"""Confined file access for agentd's own code on trees the agent can write.

Everything under the home's writable parts, the workdir and scratch folders is hostile input
to agentd itself: the agent controls every byte, every inode type (symlinks, FIFOs, devices,
set-id files, hard links) and every name there. agentd runs on the host, often as root, so
its own reads and writes of those trees go through this package and nowhere else:

- A path is opened beneath a directory fd that the runtime chose (a `Root`) and never
  escapes it: `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` where the kernel has it
  (Linux 5.6+, called through ctypes: Python has no wrapper), otherwise a component-by-
  component walk with `O_NOFOLLOW` that refuses every symlink.
- Files the runtime owns (memory files, day logs, cron files, skills, inbox/outbox entries)
  are opened with `follow=False`: a symlink anywhere on the way is refused (`Refused`), so a
  `MEMORY.md -> /proc/self/environ` never reaches a prompt and a `daily/today.md -> /etc/x`
  is never appended to. The file tools pass `follow=True`: symlinks are resolved, but only
  beneath the root.
- Only regular files are read: the path is opened `O_PATH` first and checked with fstat, so
  a FIFO (which would hang the host) or a device is never opened for I/O. Reads are capped.
- Writes go to an exclusive temp file in the same directory fd, then `renameat` over the
  name: a symlink, FIFO or hard link at the name is replaced, never written through. No
  set-uid, set-gid or sticky bit is ever written or kept.

The layers, one module each: `beneath` (openat2 or the walk, renameat2: a path resolved
beneath a held fd), `fileio` (capped decoding, the atomic replace) and `root` (`Root`, what
the rest of agentd calls).
"""

from agentd.homefs.beneath import Refused, fd_path, open_beneath
from agentd.homefs.root import Root

__all__ = ["Refused", "Root", "fd_path", "open_beneath"]
