"""The bash tool: run one command in the sandbox, bounded in time and output.

The tool never raises; refusals, timeouts and failures come back as error results the
model can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess

from agentd.tools import ToolContext, ToolResult, netproxy, sandbox

DEFAULT_TIMEOUT = 120.0
HARD_CAP_BYTES = 8 * 1024 * 1024  # stop reading and kill beyond this, so `yes` ends fast
CHUNK = 64 * 1024


def format_output(raw: bytes, limit: int) -> str:
    """Decode output for the model and keep its head and tail within `limit` characters.

    Non-UTF-8 bytes become U+FFFD instead of crashing. The middle goes, because errors and
    summaries tend to sit at the start and the end; the marker says exactly how many bytes
    and lines were dropped (surrogateescape keeps the byte count exact for invalid input).
    """
    limit = max(limit, 0)
    text = raw.decode("utf-8", "surrogateescape")
    if len(text) > limit:
        head_n = limit // 2
        tail_n = limit - head_n
        head, middle = text[:head_n], text[head_n : len(text) - tail_n]
        tail = text[len(text) - tail_n :] if tail_n else ""
        cut_bytes = len(middle.encode("utf-8", "surrogateescape"))
        marker = f"[... {cut_bytes} bytes ({middle.count(chr(10))} lines) cut ...]\n"
        if head and not head.endswith("\n"):
            marker = "\n" + marker
        text = head + marker + tail
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def effective_timeout(ctx: ToolContext, timeout: float | None) -> float:
    """The model may ask for less time than the configured ceiling, never more."""
    ceiling = ctx.sandbox.timeout if ctx.sandbox.timeout > 0 else DEFAULT_TIMEOUT
    if timeout is None or timeout <= 0:
        return ceiling
    return min(timeout, ceiling)


async def run_bash(ctx: ToolContext, command: str, timeout: float | None = None) -> ToolResult:
    """Run `command` with bash in the sandbox (or directly when mode is explicitly "off").
    The first command of a turn first hands the writable folders to the sandbox's uid
    (when agentd is root), and says so if the workdir stays read-only."""
    try:
        handed = await asyncio.to_thread(sandbox.hand_over, ctx)
    except (ValueError, OSError) as exc:
        return ToolResult(f"bash refused to run: cannot hand the writable folders to the "
                          f"sandbox's user: {exc}", is_error=True)
    reason = await asyncio.to_thread(sandbox.check_sandbox, ctx)
    if reason is not None:
        return ToolResult(f"bash refused to run: {reason}", is_error=True)
    try:
        launch = sandbox.prepare(ctx, command)
    except ValueError as exc:  # changed since the check: still refuse, never downgrade
        return ToolResult(f"bash refused to run: {exc}", is_error=True)
    except OSError as exc:
        return ToolResult(f"bash refused to run: cannot set up the sandbox: {exc}",
                          is_error=True)
    limit = effective_timeout(ctx, timeout)
    proxy = None
    try:
        if launch.netns is not None and launch.netns.listener is not None:
            proxy = proxy_for(ctx)
            await proxy.start(launch.netns.listener)
        raw, outcome, code = await _execute(launch, limit)
    except (OSError, subprocess.SubprocessError) as exc:
        return ToolResult(f"bash could not start: {exc}", is_error=True)
    finally:
        if proxy is not None:
            await proxy.stop()
        await asyncio.to_thread(launch.cleanup)
    text = format_output(raw, ctx.sandbox.output_limit) or "(no output)"
    notes = [f"[{note}]" for note in handed]
    if proxy is not None and proxy.refusals:
        more = len(proxy.refusals) - 3
        notes += [f"[network refused {r}]" for r in proxy.refusals[:3]]
        notes += [f"[... {more} more network refusals]"] if more > 0 else []
    if outcome == "overflow":
        notes.append(
            f"[output exceeded {HARD_CAP_BYTES // (1024 * 1024)} MiB: truncated, "
            "the command was killed]"
        )
    elif outcome == "timeout":
        notes.append(f"[timed out after {limit:g} s: the command was killed]")
    elif code < 0:
        notes.append(f"[killed by signal {-code}]")
    elif code != 0:
        notes.append(f"[exit code {code}]")
    content = "\n".join([text.rstrip("\n") if notes else text, *notes])
    return ToolResult(content, is_error=outcome != "done" or code != 0)


def proxy_for(ctx: ToolContext) -> netproxy.Proxy:
    """The proxy serving one command of network = "allowlist" (tests replace this)."""
    return netproxy.Proxy(tuple(ctx.sandbox.allow_domains))


async def _execute(launch: sandbox.Launch, limit: float) -> tuple[bytes, str, int]:
    """Run argv in its own process group; return (output, "done"|"timeout"|"overflow", code).

    We own the pipe (not asyncio's PIPE) so `proc.wait()` returns when the process exits even
    if a stray grandchild still holds the write end (with Python 3.11's PIPE it waits for EOF).
    """
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *launch.argv, stdin=subprocess.DEVNULL, stdout=write_fd, stderr=write_fd,
            env=launch.env, cwd=launch.cwd, start_new_session=True,
            pass_fds=launch.pass_fds, preexec_fn=launch.preexec,
        )  # fmt: skip
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
        launch.spawned()
    reader = asyncio.StreamReader(limit=CHUNK)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    buf = bytearray()
    try:
        outcome = await asyncio.wait_for(_collect(proc, reader, buf), limit)
    except TimeoutError:
        outcome = "timeout"
    except BaseException:  # cancelled by the caller: don't leave the command running
        _kill_group(proc.pid)
        raise
    finally:
        transport.close()
    if outcome != "done":
        _kill_group(proc.pid)
    code = await proc.wait()
    return bytes(buf), outcome, code


async def _collect(
    proc: asyncio.subprocess.Process, reader: asyncio.StreamReader, buf: bytearray
) -> str:
    """Read into buf until EOF and exit, or until the hard byte cap is passed."""
    while chunk := await reader.read(CHUNK):
        buf += chunk
        if len(buf) > HARD_CAP_BYTES:
            del buf[HARD_CAP_BYTES:]
            return "overflow"
    await proc.wait()
    return "done"


def _kill_group(pgid: int) -> None:
    """SIGKILL the whole process group: bwrap dies, and --die-with-parent plus the pid
    namespace take every process inside with it. With the sandbox off, a `setsid` child
    has left the group and survives: mode "off" promises no containment."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
