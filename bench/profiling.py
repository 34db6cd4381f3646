"""Where the bot spends its CPU under load: py-spy samples the bot process while the benchmark
runs, and the samples are summed by function and by package.

    profiler = Profiler(pid, Path("bench/out/profile-N1000.txt"))
    await profiler.start(); ...; await profiler.stop()
    summarize_profile(profiler.out)   # {"samples", "idle_share", "by_owner", "self", "bot"}

py-spy is optional (``pip install py-spy``); the raw file (collapsed stacks) also feeds
flame-graph tools such as ``flamegraph.pl`` or speedscope.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Leaf frames that mean "waiting", not working: the event loop's poll and idle pool threads.
_IDLE_LEAVES = ("EpollSelector.select ", "_worker (concurrent/futures/thread.py)")


class Profiler:
    """py-spy recording the bot in its "raw" (collapsed stack) format until ``stop``."""

    def __init__(self, pid: int, out: Path, rate: int = 100, subprocesses: bool = False) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.subprocesses = subprocesses  # its child processes too (a supervisor's workers)
        self._proc: asyncio.subprocess.Process | None = None
        self.error: str | None = None

    async def start(self) -> None:
        beside = Path(sys.executable).with_name("py-spy")  # the bench extra, in this venv
        exe = str(beside) if beside.exists() else shutil.which("py-spy")
        if exe is None:
            self.error = "py-spy not installed (pip install py-spy)"
            return
        self._proc = await asyncio.create_subprocess_exec(
            exe,
            "record",
            "--format",
            "raw",
            "--rate",
            str(self.rate),
            "--nonblocking",
            "--output",
            str(self.out),
            "--pid",
            str(self.pid),
            *(["--subprocesses"] if self.subprocesses else []),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            self.error = "py-spy did not stop within 30 s"
            return
        if not self.out.exists():
            self.error = (err or b"").decode(errors="replace").strip()[-500:] or "no output"


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """The busy samples of a py-spy raw profile, summed: by owner (see ``_owner``), by
    function (own time), and by ``bot/`` function (inclusive). Shares are of busy samples."""
    own: dict[str, int] = {}
    packages: dict[str, int] = {}
    bot: dict[str, int] = {}
    busy = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short_frame(frame) for frame in stack.split(";")]
        leaf = frames[-1]
        if leaf.startswith(_IDLE_LEAVES):
            idle += count
            continue
        busy += count
        own[leaf] = own.get(leaf, 0) + count
        owner = _owner(frames)
        packages[owner] = packages.get(owner, 0) + count
        for frame in {f for f in frames if "(bot/" in f}:
            bot[frame] = bot.get(frame, 0) + count

    def ranked(table: dict[str, int], limit: int = top) -> list[dict[str, Any]]:
        best = sorted(table.items(), key=lambda item: -item[1])[:limit]
        return [
            {"function": name, "samples": n, "share": round(n / busy, 4) if busy else 0.0}
            for name, n in best
        ]

    return {
        "samples": busy + idle,
        "idle_share": round(idle / (busy + idle), 4) if busy + idle else None,
        "by_owner": {
            name: round(n / busy, 4) for name, n in sorted(packages.items(), key=lambda i: -i[1])
        },
        "self": ranked(own),
        "bot": ranked(bot),
    }


def _short_frame(frame: str) -> str:
    """``func (/long/path/site-packages/pkg/mod.py:12)`` → ``func (pkg/mod.py)``: one entry
    per function, whatever line was executing."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


def _owner(frames: list[str]) -> str:
    """Who a sample's work is for: the innermost frame outside the standard library (a
    ``bot/`` module, else a third-party package), so event-loop and timer work is charged to
    the code that asked for it."""
    for frame in reversed(frames):
        _, _, where = frame.partition(" (")
        path = where.rstrip(")")
        first = path.split("/", 1)[0]
        if first == "bot":
            if path == "bot/__main__.py":
                break  # below it only the event loop runs
            return path
        if "/" in path and first not in _STDLIB and not first.startswith("<"):
            return first
    return "stdlib / event loop"


_STDLIB = frozenset(
    {
        "asyncio",
        "json",
        "concurrent",
        "email",
        "http",
        "importlib",
        "logging",
        "urllib",
        "encodings",
        "collections",
        "re",
    }
)
