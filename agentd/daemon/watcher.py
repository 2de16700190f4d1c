"""File watching: which of the home's files changed, as batches on the event loop.

watchdog's inotify observer (one watch per folder) on exactly the folders the daemon reads:
the home itself (for agentd.toml, not recursive), memory/ (HEARTBEAT.md), cron/, inbox/
and skills/ (recursive). Never .git/ or .agentd/, so our own commits and bookkeeping do not
wake us. If inotify cannot start (watch or instance limits: ENOSPC, EMFILE) or `[daemon]
watch = "poll"`, a polling observer (an lstat scan every 0.5 s) takes over; network
filesystems and VM bind mounts need it, since their changes never reach inotify. The
folders are the agent's: a symlinked one is not watched and nothing is followed (inotify's
IN_DONT_FOLLOW, lstat when polling), so a `skills/x -> /` never walks the host.

Editors save in odd ways: vim writes a new file and renames it over the old one (after
probing with a file named 4913), gedit renames from .goutputstream-*. So moves count by
their destination, temporaries are ignored (inbox.ignored), and only events that change
content count: opening or reading a file (inotify's open/close-nowrite) is not a change,
or reading HEARTBEAT.md would wake the reader. Events are batched per topic until a short
quiet spell (0.1 s) and handed over with call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentd.config import CONFIG_NAME
from agentd.daemon.inbox import ignored
from agentd.homefs import Root

CHANGES = {"created", "modified", "moved", "deleted", "closed"}
DEBOUNCE = 0.1
POLL_INTERVAL = 0.5
Batch = dict[str, set[str]]  # topic -> names (inbox file names; other topics: rel paths)


def topic_of(home: Path, path: str) -> tuple[str, str] | None:
    """("config" | "heartbeat" | "cron" | "skills" | "inbox", name) or None (not ours)."""
    try:
        parts = Path(path).relative_to(home).parts
    except ValueError:
        return None
    if not parts or any(ignored(p) and p != CONFIG_NAME for p in parts):
        return None
    if parts == (CONFIG_NAME,):
        return "config", CONFIG_NAME
    if parts == ("memory", "HEARTBEAT.md"):
        return "heartbeat", "memory/HEARTBEAT.md"
    if len(parts) == 2 and parts[0] == "cron" and parts[1].endswith(".md"):
        return "cron", "/".join(parts)
    if parts[0] == "skills" and len(parts) > 1:
        return "skills", "/".join(parts)
    if len(parts) == 2 and parts[0] == "inbox":
        return "inbox", parts[1]
    return None


class Watcher:
    def __init__(self, home: Path, on_batch: Callable[[Batch], None], mode: str = "auto",
                 warn: Callable[[str], None] = lambda msg: None):
        self.home, self.on_batch, self.mode, self.warn = home, on_batch, mode, warn
        self.kind = ""
        self._observer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: Batch = {}
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> str:
        """Start watching; returns "inotify" or "polling"."""
        self._loop = asyncio.get_running_loop()
        with Root(self.home) as root:  # the agent's folders: a symlink there is not followed
            for d in ("memory", "cron", "inbox", "skills"):
                try:
                    root.makedirs(d)
                except OSError as e:
                    self.warn(f"{d}/ not watched as a folder: {e}")
        if self.mode != "poll":
            from watchdog.observers import Observer

            try:
                self._observer = self._run(Observer())
                self.kind = "inotify"
                return self.kind
            except OSError as e:
                self.warn(f"inotify unavailable ({e}); polling every {POLL_INTERVAL:g}s instead "
                          "(raise fs.inotify.max_user_watches/max_user_instances to fix)")
        from watchdog.observers.polling import PollingObserverVFS

        # lstat: a symlinked folder under skills/ is never walked (it could be / or a loop)
        self._observer = self._run(PollingObserverVFS(os.lstat, os.scandir,
                                                      polling_interval=POLL_INTERVAL))
        self.kind = "polling"
        return self.kind

    def _run(self, observer: Any) -> Any:
        from watchdog.events import FileSystemEventHandler

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if event.event_type in CHANGES:
                    watcher._from_thread(event.src_path, getattr(event, "dest_path", ""))

        handler = Handler()
        try:
            observer.schedule(handler, str(self.home), recursive=False)
            for d in ("memory", "cron", "inbox", "skills"):
                if self._real_dir(d):  # a symlinked one is not watched (nor read: homefs)
                    observer.schedule(handler, str(self.home / d), recursive=d == "skills")
            observer.start()
        except OSError:
            observer.stop()
            raise
        return observer

    def _real_dir(self, rel: str) -> bool:
        try:
            with Root(self.home) as root:
                return stat.S_ISDIR(root.lstat(rel).st_mode)
        except OSError:
            return False

    def _from_thread(self, *paths: str) -> None:
        hits = [t for p in paths if p and (t := topic_of(self.home, str(p)))]
        if hits and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(self._add, hits)

    def _add(self, hits: list[tuple[str, str]]) -> None:
        for topic, name in hits:
            self._pending.setdefault(topic, set()).add(name)
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer = self._loop.call_later(DEBOUNCE, self._flush)

    def _flush(self) -> None:
        batch, self._pending, self._timer = self._pending, {}, None
        if batch:
            self.on_batch(batch)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
            self._observer = None
