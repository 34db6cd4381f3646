"""Worker processes: ``WORKERS=N`` runs N bot processes under a small supervisor.

    python -m bot                # WORKERS=3: this process supervises three workers, each
                                 # `python -m bot --worker I --supervisor PID --ops-fd FD …`

The supervisor opens no Slack, Redis or model client. Before any worker starts it checks the
settings (``load_settings`` already did; here the channels file too), so a problem is reported
once; it runs the embedded store's server when there is no ``REDIS_URL`` (the workers join it, so
N workers starting at once never race to start it, and it stays up while a worker restarts); and
it binds every listener, which the workers inherit:

* the Events API socket (HTTP mode, ``HTTP_HOST:HTTP_PORT``): one listening socket, every worker
  accepts on it. Port 0 resolves once; a worker restarted gets the same socket, and connections
  waiting while it starts are kept. (SO_REUSEPORT would give each worker a queue of its own, and
  lose the connections queued at a worker that dies or hangs.)
* one loopback ops listener per worker (its own /healthz, /readyz, /metrics), asked by the
  supervisor's ops listener on ``OPS_HOST:OPS_PORT``:

  GET /healthz   200 while the supervisor runs (it restarts workers itself), with each worker's
                 state
  GET /readyz    200 when every worker answers its own /readyz with 200; else 503, naming them
  GET /metrics   every worker's metrics, each series labelled ``worker="I"``, plus
                 ``slackbot_worker_up`` and ``slackbot_worker_restarts_total``

Worker 0 starts first, the others once it serves (a problem only a started bot finds, e.g. a plain
URL to a Redis Cluster node, is then reported once). A worker that dies is started again after a
backoff (``RestartPolicy``); one that keeps dying soon after its start, or refuses its settings
(exit code 2), stops the supervisor. SIGTERM or SIGINT to the supervisor is passed to every
worker, which drains as a single process does (``SHUTDOWN_GRACE``); the supervisor exits 0 when
they all did. A worker whose supervisor is gone (SIGKILL) drains and exits by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from bot import runtime
from bot.config import Settings
from bot.errors import ConfigError
from bot.metrics import CONTENT_TYPE
from bot.policy import Profile, load_policy
from bot.server import InheritedSockets, is_loopback, serve
from bot.store.embedded import embedded_server

log = logging.getLogger(__name__)

_WORKER_HOST = "127.0.0.1"  # the workers' own ops listeners: only the supervisor asks them
_STOP_MARGIN_S = 30.0  # past SHUTDOWN_GRACE, for the final edits and closing the clients
_FIRST_START_S = 60.0  # the others start then even if worker 0 is not serving yet


# -- in a worker --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSeat:
    """What the supervisor tells the worker it starts (its command-line options)."""

    index: int
    supervisor: int  # the supervisor's pid
    ops_fd: int
    events_fd: int | None = None

    def sockets(self) -> InheritedSockets:
        """The listening sockets the supervisor bound for this worker."""
        try:
            ops = socket.socket(fileno=self.ops_fd)
            events = None if self.events_fd is None else socket.socket(fileno=self.events_fd)
        except OSError as exc:
            raise ConfigError(
                [
                    f"--ops-fd / --events-fd: not a socket ({exc.strerror}); these options are "
                    "for the supervisor's workers (WORKERS > 1), not for starting the bot by hand"
                ]
            ) from None
        return InheritedSockets(ops=ops, events=events)

    async def stop_when_orphaned(self, stopped: asyncio.Event, interval_s: float = 1.0) -> None:
        """Set ``stopped`` (drain, exit) once the supervisor is gone."""
        # Polled: a parent's death sends its children no signal (prctl's PDEATHSIG is Linux-only
        # and not in the standard library).
        while True:
            if os.getppid() != self.supervisor:
                break
            await asyncio.sleep(interval_s)
        log.warning("the supervisor (pid %d) is gone; stopping", self.supervisor)
        stopped.set()


def worker_seat(argv: Sequence[str]) -> WorkerSeat | None:
    """The seat named by ``python -m bot``'s options; None without them (not a worker)."""
    if not argv:
        return None
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="Options the supervisor (WORKERS > 1) starts its workers with.",
        allow_abbrev=False,
    )
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--supervisor", type=int, required=True)
    parser.add_argument("--ops-fd", type=int, required=True)
    parser.add_argument("--events-fd", type=int)
    args = parser.parse_args(argv)
    return WorkerSeat(args.worker, args.supervisor, args.ops_fd, args.events_fd)


def label_log_lines(index: int, *, json_lines: bool) -> None:
    """Every line this process logs names its worker: ``[worker 1] …`` in text, a ``worker``
    field in JSON lines. Call it after ``bot.logs.configure`` (redaction happens before this)."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(
            _WorkerLines(handler.formatter or logging.Formatter(), index, json_lines)
        )


class _WorkerLines(logging.Formatter):
    def __init__(self, inner: logging.Formatter, index: int, json_lines: bool) -> None:
        super().__init__()
        self._inner = inner
        self._index = index
        self._json = json_lines

    def format(self, record: logging.LogRecord) -> str:
        line = self._inner.format(record)
        if self._json:
            return json.dumps({**json.loads(line), "worker": self._index}, ensure_ascii=False)
        return f"[worker {self._index}] {line}"


# -- the supervisor -----------------------------------------------------------------------------


def supervise(settings: Settings) -> int:
    """Run ``settings.workers`` workers until SIGTERM/SIGINT; the process's exit code."""
    # The standard event loop: the supervisor does little, and asyncio's subprocess support
    # (inherited descriptors, process groups) is the reference one.
    return runtime.run(Supervisor(settings).run(), loop="asyncio")


@dataclass(frozen=True)
class RestartPolicy:
    """When a worker that died is started again.

    A death within ``stable_after_s`` of the worker's start is a quick one; after the n-th quick
    death in a row the worker is started again in ``first_delay_s * 2**(n-1)`` seconds (at most
    ``max_delay_s``), and the ``give_up_after``-th stops the supervisor. A worker that ran longer
    starts its count again.

        RestartPolicy().delay(1), RestartPolicy().delay(3)   # 0.5, 2.0
    """

    first_delay_s: float = 0.5
    max_delay_s: float = 10.0
    stable_after_s: float = 60.0
    give_up_after: int = 5

    def delay(self, quick_deaths: int) -> float:
        return float(min(self.max_delay_s, self.first_delay_s * 2 ** max(quick_deaths - 1, 0)))


@dataclass
class _Slot:
    """One of the N workers, over its successive processes."""

    index: int
    ops: socket.socket  # its ops listener, kept across restarts
    proc: asyncio.subprocess.Process | None = None
    ended: int = 0  # processes that have exited
    quick_deaths: int = 0
    restarts: int = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def port(self) -> int:
        return int(self.ops.getsockname()[1])


class Supervisor:
    """Starts, watches, restarts and drains the worker processes (see the module docstring).

        exit_code = await Supervisor(settings).run()   # returns after SIGTERM/SIGINT or stop()

    ``program`` is the command a worker runs, before its options (tests swap it).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        policy: RestartPolicy | None = None,
        program: Sequence[str] = (sys.executable, "-m", "bot"),
        probe_timeout_s: float = 2.0,
    ) -> None:
        self._settings = settings
        self._policy = policy or RestartPolicy()
        self._program = list(program)
        self._probe_timeout_s = probe_timeout_s
        self._stopping = asyncio.Event()
        self._exit_code = 0
        self._slots: list[_Slot] = []
        self._events: socket.socket | None = None
        self._session: aiohttp.ClientSession | None = None
        self.ops_port: int | None = None  # once run() serves it

    def stop(self) -> None:
        """Drain every worker and return from ``run`` (what SIGTERM and SIGINT do)."""
        if not self._stopping.is_set():
            log.info("stopping: draining %d worker(s)", sum(s.running for s in self._slots))
            self._stopping.set()

    async def run(self) -> int:
        """Serve until stopped; 0 when every worker drained cleanly. Raises ``ConfigError``
        for a settings problem, before any worker starts."""
        settings = self._settings
        load_policy(  # a malformed channels file: one report here, not one per worker
            settings.channels_file,
            default=Profile(
                settings.system_prompt, settings.openai_model, settings.openai_temperature
            ),
        )
        loop = asyncio.get_running_loop()
        async with AsyncExitStack() as stack:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
                stack.callback(loop.remove_signal_handler, sig)
            if settings.redis_url is None:
                # Every worker joins this server; it stops after the last of them has left.
                await stack.enter_async_context(embedded_server(settings.data_dir))
            if settings.slack_mode == "http":
                self._events = _listening_socket(settings.http_host, settings.http_port, "HTTP")
                stack.callback(self._events.close)
                log.info(
                    "serving Slack events on port %d at /slack/events (shared by %d workers)",
                    self._events.getsockname()[1],
                    settings.workers,
                )
            for index in range(settings.workers):
                slot = _Slot(index, _listening_socket(_WORKER_HOST, 0, "OPS"))
                stack.callback(slot.ops.close)
                self._slots.append(slot)
            self._session = await stack.enter_async_context(
                aiohttp.ClientSession(
                    # A connection per question: a kept one may lead to a worker that died.
                    connector=aiohttp.TCPConnector(force_close=True),
                    timeout=aiohttp.ClientTimeout(total=self._probe_timeout_s),
                )
            )
            await self._serve_ops(stack)
            await self._run_workers()
        return self._exit_code

    # -- the workers ---------------------------------------------------------------------------

    async def _run_workers(self) -> None:
        log.info("starting %d workers (WORKERS=%d)", len(self._slots), self._settings.workers)
        first, *others = self._slots
        keepers = [self._keeper(first)]
        try:
            await asyncio.wait_for(self._until_serving(first), _FIRST_START_S)
        except TimeoutError:
            log.warning("worker 0 is not serving after %g s; starting the others", _FIRST_START_S)
        keepers += [self._keeper(slot) for slot in others]
        await self._stopping.wait()
        if self._events is not None:
            self._events.close()  # the port closes once every worker has stopped taking events
        for slot in self._slots:
            _signal(slot, signal.SIGTERM)
        timeout = self._settings.shutdown_grace + _STOP_MARGIN_S
        _, late = await asyncio.wait(keepers, timeout=timeout)
        if late:
            stuck = [slot.index for slot in self._slots if slot.running]
            log.error("worker(s) %s did not stop within %g s of SIGTERM; killed", stuck, timeout)
            for slot in self._slots:
                _signal(slot, signal.SIGKILL)
            await asyncio.wait(late)
            self._fail(1)
        if self._exit_code == 0:
            log.info("every worker has stopped")

    def _keeper(self, slot: _Slot) -> asyncio.Task[None]:
        task = asyncio.create_task(self._keep(slot), name=f"worker-{slot.index}")

        def done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                log.critical(
                    "supervising worker %d failed; stopping", slot.index, exc_info=task.exception()
                )
                self._fail(1)

        task.add_done_callback(done)
        return task

    async def _keep(self, slot: _Slot) -> None:
        """Run ``slot``'s worker, and start it again when it dies, until stopping."""
        while not self._stopping.is_set():
            started = time.monotonic()
            proc = await self._spawn(slot)
            code = await proc.wait()
            slot.ended += 1
            lived = time.monotonic() - started
            if self._stopping.is_set():
                if code not in (0, -signal.SIGTERM):  # -SIGTERM: stopped before it had started
                    log.error("worker %d %s while stopping", slot.index, _exit_text(code))
                    self._fail(1)
                return
            if code == 2:
                log.error(
                    "worker %d could not start (exit code 2; its lines above say why); stopping",
                    slot.index,
                )
                self._fail(2)
                return
            slot.quick_deaths = slot.quick_deaths + 1 if lived < self._policy.stable_after_s else 1
            if slot.quick_deaths >= self._policy.give_up_after:
                log.error(
                    "worker %d keeps dying: %d times in a row within %g s of its start (the "
                    "last one %s); stopping the bot",
                    slot.index,
                    slot.quick_deaths,
                    self._policy.stable_after_s,
                    _exit_text(code),
                )
                self._fail(1)
                return
            delay = self._policy.delay(slot.quick_deaths)
            slot.restarts += 1
            log.warning(
                "worker %d (pid %d) %s after %.1f s; starting it again in %.1f s",
                slot.index,
                proc.pid,
                _exit_text(code),
                lived,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        options = ["--worker", str(slot.index), "--supervisor", str(os.getpid())]
        options += ["--ops-fd", str(slot.ops.fileno())]
        fds = [slot.ops.fileno()]
        if self._events is not None:
            options += ["--events-fd", str(self._events.fileno())]
            fds.append(self._events.fileno())
        proc = await asyncio.create_subprocess_exec(
            *self._program,
            *options,
            stdin=asyncio.subprocess.DEVNULL,  # stdout and stderr: the supervisor's own
            pass_fds=fds,
            # A process group of its own: a Ctrl-C in the terminal reaches the supervisor only,
            # which then stops the workers in order.
            process_group=0,
        )
        slot.proc = proc
        log.info("worker %d started (pid %d)", slot.index, proc.pid)
        if self._stopping.is_set():
            _signal(slot, signal.SIGTERM)
        return proc

    async def _until_serving(self, slot: _Slot) -> None:
        """Until ``slot``'s first process answers on its ops listener or exits, or stopping."""
        while not self._stopping.is_set() and slot.ended == 0:
            if slot.running and (await self._ask(slot, "/healthz"))[0] == 200:
                return
            await asyncio.sleep(0.05)

    def _fail(self, code: int) -> None:
        if self._exit_code == 0:
            self._exit_code = code
        self.stop()

    # -- the ops listener ----------------------------------------------------------------------

    async def _serve_ops(self, stack: AsyncExitStack) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        host, port = self._settings.ops_host, self._settings.ops_port
        try:
            runner, self.ops_port = await serve(app, host, port)
        except OSError as exc:
            problem = f"OPS_HOST / OPS_PORT: cannot listen on {host} port {port}"
            raise ConfigError([f"{problem} ({exc.strerror})"]) from None
        stack.push_async_callback(runner.cleanup)
        log.info(
            "ops endpoints (/healthz, /readyz, /metrics) of %d workers on %s port %d",
            len(self._slots),
            host,
            self.ops_port,
        )
        if not is_loopback(host):
            log.warning(
                "OPS_HOST=%s: /metrics and /readyz answer anyone who can reach port %d; "
                "keep it off public networks",
                host,
                self.ops_port,
            )

    async def _healthz(self, _: web.Request) -> web.Response:
        states = {str(s.index): "running" if s.running else "down" for s in self._slots}
        return web.json_response({"ok": True, "workers": states})

    async def _readyz(self, _: web.Request) -> web.Response:
        reasons = await asyncio.gather(*(self._unready(slot) for slot in self._slots))
        failing = [f"worker {s.index}: {r}" for s, r in zip(self._slots, reasons, strict=True) if r]
        if self._stopping.is_set():
            failing.insert(0, "stopping")
        body = {"ok": not failing, "failing": failing}
        return web.json_response(body, status=503 if failing else 200)

    async def _unready(self, slot: _Slot) -> str | None:
        """Why ``slot`` is not ready (None: it is)."""
        if not slot.running:
            return "not running"
        status, body = await self._ask(slot, "/readyz")
        if status == 200:
            return None
        if status == 503:
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                return ", ".join(map(str, json.loads(body).get("failing"))) or "not ready"
        return "no answer"

    async def _metrics(self, _: web.Request) -> web.Response:
        running = [slot for slot in self._slots if slot.running]
        answers = await asyncio.gather(*(self._ask(slot, "/metrics") for slot in running))
        texts = {
            s.index: body
            for s, (status, body) in zip(running, answers, strict=True)
            if status == 200
        }
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Gathered(self._slots, texts))
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    async def _ask(self, slot: _Slot, path: str) -> tuple[int, bytes]:
        """A worker's answer on its ops listener: (status, body); (0, b'') when none came in
        time."""
        assert self._session is not None
        try:
            async with self._session.get(f"http://{_WORKER_HOST}:{slot.port}{path}") as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return 0, b""


class _Gathered(Collector):
    """The workers' metrics, each series labelled with its worker, and the supervisor's own."""

    def __init__(self, slots: Iterable[_Slot], texts: dict[int, bytes]) -> None:
        self._slots = list(slots)
        self._texts = texts

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        up = GaugeMetricFamily(
            "slackbot_worker_up",
            "1 when the worker's own metrics were read for this scrape, else 0.",
            labels=["worker"],
        )
        restarts = CounterMetricFamily(
            "slackbot_worker_restarts",
            "Times the supervisor started a worker again after it died.",
            labels=["worker"],
        )
        for slot in self._slots:
            worker = str(slot.index)
            text = self._texts.get(slot.index)
            families = _parsed(text, slot.index) if text is not None else None
            up.add_metric([worker], 0.0 if families is None else 1.0)
            restarts.add_metric([worker], float(slot.restarts))
            for family in families or ():
                family.samples = [
                    s._replace(labels={**s.labels, "worker": worker}) for s in family.samples
                ]
                if family.name in merged:
                    merged[family.name].samples += family.samples
                else:
                    merged[family.name] = family
        return [*merged.values(), up, restarts]


def _parsed(text: bytes, index: int) -> list[Metric] | None:
    try:
        return list(text_string_to_metric_families(text.decode()))
    except ValueError:
        log.warning("worker %d answered /metrics with something unreadable", index)
        return None


def _listening_socket(host: str, port: int, setting: str) -> socket.socket:
    """A socket listening on ``host:port`` for the workers to inherit; a host or port it cannot
    listen on is a settings problem, named as one."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        return socket.create_server(address, family=family, backlog=128)
    except OSError as exc:
        problem = f"{setting}_HOST / {setting}_PORT: cannot listen on {host} port {port}"
        raise ConfigError([f"{problem} ({exc.strerror})"]) from None


def _signal(slot: _Slot, sig: int) -> None:
    if slot.running and slot.proc is not None:
        with contextlib.suppress(ProcessLookupError):
            slot.proc.send_signal(sig)


def _exit_text(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"
