"""A PDF's text read in a child process of its own.

    text, note = await read_pdf(data, name="report.pdf", max_chars=200_000, time_limit=20.0)

pypdf is pure Python: in a worker thread it holds the GIL and stalls the event loop, and a
hostile page can run far past the time limit ``pdf_text`` checks between pages. A child is
killed at ``time_limit`` (the pages it read by three quarters of it are kept), cannot allocate
more than ``MEMORY_LIMIT``, and gets none of the bot's environment (no token for a parser
exploit to find). Raises what ``pdf_text`` raises (``Unreadable``, ``ScannedPdf``); a child
that runs out of time or dies is ``Unreadable`` too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from bot.files.attachment import Unreadable
from bot.files.documents import ScannedPdf, pdf_text

log = logging.getLogger(__name__)

MEMORY_LIMIT = 1024 * 1024 * 1024  # the child's address space
_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])


async def read_pdf(data: bytes, *, name: str, max_chars: int, time_limit: float) -> tuple[str, str]:
    """The PDF's text and what was left out (see ``pdf_text``), read in a child process."""
    job = {
        "name": name,
        "max_chars": max_chars,
        "max_seconds": time_limit * 0.75,
        "cpu_seconds": math.ceil(time_limit) + 1,
    }
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",  # no PYTHON* variables, no user site, not the working directory's modules
        "-c",
        f"import sys; sys.path.append(sys.argv[1]); from {__name__} import _main; _main()",
        _SOURCE_ROOT,  # (where this package is, installed or not)
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.defpath},
    )
    try:
        async with asyncio.timeout(time_limit):
            out, err = await child.communicate(json.dumps(job).encode() + b"\n" + data)
    except TimeoutError:
        log.info("reading PDF %s took over %g s: stopped", name, time_limit)
        raise Unreadable(f"Reading {name} took too long, so I stopped.") from None
    finally:
        if child.returncode is None:
            child.kill()
            await child.communicate()  # (reaps it and closes its pipes)
    try:
        result = json.loads(out) if child.returncode == 0 else None
    except ValueError:
        result = None
    if not isinstance(result, dict):
        last = err.decode(errors="replace").strip().rsplit("\n", 1)[-1][:200]
        log.info("reading PDF %s failed (exit %s): %s", name, child.returncode, last)
        raise Unreadable(f"I couldn't read {name}; it may be damaged.")
    return _outcome(result)


def _outcome(result: dict[str, Any]) -> tuple[str, str]:
    if "scanned" in result:
        raise ScannedPdf(str(result["scanned"]), pages=int(result.get("pages", 0)))
    if "unreadable" in result:
        raise Unreadable(str(result["unreadable"]), lasting=bool(result.get("lasting", True)))
    return str(result.get("text", "")), str(result.get("note", ""))


def _main() -> None:
    """The child: a JSON line (name, max_chars, max_seconds) and the PDF on stdin, a JSON
    object on stdout."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ImportError, ValueError, OSError):
        pass  # (not every platform limits address space)
    job = json.loads(sys.stdin.buffer.readline())
    try:
        import resource

        # Its own end, too: a child left behind by a parent killed outright (SIGKILL after the
        # shutdown grace) stops once it has used its time.
        cpu = int(job.get("cpu_seconds", 30))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    except (ImportError, ValueError, OSError):
        pass
    data = sys.stdin.buffer.read()
    result: dict[str, Any]
    try:
        text, note = pdf_text(
            data, name=job["name"], max_chars=job["max_chars"], max_seconds=job["max_seconds"]
        )
        result = {"text": text, "note": note}
    except ScannedPdf as scanned:
        result = {"scanned": scanned.note, "pages": scanned.pages}
    except Unreadable as exc:
        result = {"unreadable": exc.note, "lasting": exc.lasting}
    sys.stdout.write(json.dumps(result))
