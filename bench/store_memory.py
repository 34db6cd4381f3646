"""What the embedded store holds after many answered messages, and after their TTLs have passed.

    .venv/bin/python -m bench.store_memory                     # 20,000 messages, 2,000 threads
    .venv/bin/python -m bench.store_memory --messages 2000 --threads 200 --ttl 10

Starts the bot's private Valkey server (``EmbeddedServer``) in a temp directory, opens the store
on it as the bot does (``connect_redis(server.url)``, ``Store.open``, the epoch), and writes per
message what an answered turn writes (bot/turn.py): the dedupe markers of the message and its
event, the user's rate counter, the thread's engagement, the history read, the reply's in-flight
record (final) and its removal, the day's token usage, and the question and answer appended with
``keep`` as the bot computes it. Thread memory, dedupe markers and rate windows get ``--ttl``
seconds instead of days and minutes, so the run can wait them out; then the size of each kind of
key is measured with the bot's real TTLs. Prints tables; the figures are in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from bot.conversation import ThreadKey, Turn, newest_within
from bot.store import Dedupe, KeySchema, Store, connect_redis
from bot.store.embedded import EmbeddedServer, find_server_binary

PROMPT_TOKEN_BUDGET = 8000  # the bot's default: what keep and a stored turn are cut to
_WORDS = "the a reply thread store answer model token slack memory server when which their".split()
_EPOCH = 1_760_000_000  # thread timestamps start here (any past time)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The server's memory and data at one moment."""

    label: str
    used_memory: int
    used_memory_rss: int
    used_memory_dataset: int
    dbsize: int
    aof_bytes: int
    aof_rewrites: int


@dataclass(frozen=True, slots=True)
class Load:
    messages: int
    threads: int
    channels: int
    users: int
    question_chars: int
    answer_chars: int
    ttl_s: float
    concurrency: int
    settle_s: float


async def main(load: Load, binary: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="store-memory-") as tmp:
        data_dir = Path(tmp) / "data"
        async with EmbeddedServer(data_dir, binary=binary) as server:
            redis = connect_redis(server.url)
            info = await redis.info("server")
            version = info.get("valkey_version") or info.get("redis_version")
            allocator = (await redis.info("memory")).get("mem_allocator")
            print(f"server: {binary or find_server_binary()} {version}, allocator {allocator}")
            store = Store.open(
                redis,
                history_ttl_s=load.ttl_s,
                turn_tokens=PROMPT_TOKEN_BUDGET,
            )
            try:
                await _measure(store, data_dir, load)
                await _sizes(server.url)
            finally:
                await store.aclose()


async def _measure(store: Store, data_dir: Path, load: Load) -> None:
    redis = store.guard.redis
    await store.history.begin_epoch()  # as the bot does at start-up
    dedupe = Dedupe(store.guard, KeySchema(), ttl_s=load.ttl_s)
    snapshots = [await _snapshot(redis, data_dir, "empty (epoch only)")]

    started = time.monotonic()
    await write_messages(store, dedupe, load)
    wrote_s = time.monotonic() - started
    if wrote_s >= load.ttl_s:
        sys.exit(f"writing took {wrote_s:.1f} s, longer than --ttl {load.ttl_s:g} s: raise --ttl")
    snapshots.append(await _snapshot(redis, data_dir, f"after {load.messages:,} messages"))

    # Valkey removes expired keys in the background (10 times a second it samples keys with a
    # TTL and removes the expired ones), so the count falls without anyone reading them.
    lasting, deadline = await _expiry_scan(redis)

    async def expired() -> bool:
        return await redis.dbsize() <= lasting

    async def rewritten() -> bool:
        info = await redis.info("persistence")
        return not (info.get("aof_rewrite_in_progress") or info.get("aof_rewrite_scheduled"))

    if not await _poll(expired, deadline + 300 - time.monotonic()):
        sys.exit("expired keys were not removed within 300 s of their TTL")
    cleared = time.monotonic()
    snapshots.append(await _snapshot(redis, data_dir, "after every TTL"))
    await redis.bgrewriteaof()
    await _poll(rewritten, 60)
    snapshots.append(await _snapshot(redis, data_dir, "after BGREWRITEAOF"))
    # The allocator keeps freed pages for a while; whether it hands them back by itself:
    await asyncio.sleep(load.settle_s)
    snapshots.append(await _snapshot(redis, data_dir, f"{load.settle_s:g} s later"))
    await redis.memory_purge()
    snapshots.append(await _snapshot(redis, data_dir, "after MEMORY PURGE"))

    print(
        f"{load.messages:,} messages over {load.threads:,} threads ({load.channels} channels, "
        f"{load.users} users), questions {load.question_chars} and answers "
        f"{load.answer_chars} characters, TTL {load.ttl_s:g} s, {load.concurrency} at a time"
    )
    print(
        f"written in {wrote_s:.1f} s ({load.messages / wrote_s:,.0f} messages/s); keys down to "
        f"the {lasting} that outlive the run (epoch, the day's usage hash) "
        f"{cleared - started - wrote_s:.1f} s after the last write, "
        f"{cleared - deadline:.2f} s after the last TTL ran out"
    )
    _print_table(
        ["state", "used_memory", "used_memory_rss", "used_memory_dataset", "DBSIZE", "AOF", "rw"],
        [
            [
                s.label,
                _mib(s.used_memory),
                _mib(s.used_memory_rss),
                _mib(s.used_memory_dataset),
                f"{s.dbsize:,}",
                _mib(s.aof_bytes),
                str(s.aof_rewrites),
            ]
            for s in snapshots
        ],
    )
    grown = snapshots[1].used_memory - snapshots[0].used_memory
    aof = snapshots[1].aof_bytes - snapshots[0].aof_bytes
    print(
        f"per message: used_memory {grown / load.messages:,.0f} bytes, "
        f"AOF {aof / load.messages:,.0f} bytes"
    )


async def write_messages(store: Store, dedupe: Dedupe, load: Load) -> None:
    """Write what ``load.messages`` answered messages leave in ``store`` (also used by
    bench/startup.py to give a data directory something to load)."""
    texts = _Texts(load.question_chars, load.answer_chars)
    for first in range(0, load.messages, load.concurrency):
        batch = range(first, min(first + load.concurrency, load.messages))
        # A batch never holds two messages of one thread: each thread's turns stay in order,
        # as the thread lock keeps them in the bot.
        await asyncio.gather(*(_answer(store, dedupe, load, texts, i) for i in batch))


async def _answer(store: Store, dedupe: Dedupe, load: Load, texts: _Texts, i: int) -> None:
    """What one answered message leaves in the store, in the order bot/turn.py writes it."""
    thread, turn = i % load.threads, i // load.threads
    team, channel = "T0000001", f"C{thread % load.channels:010d}"
    key = ThreadKey(team, channel, f"{_EPOCH + thread}.000100")
    ts, user = f"{_EPOCH + thread}.{turn + 2:06d}", f"U{(i * 7919) % load.users:010d}"
    await dedupe.first_sighting(team, channel, ts, f"Ev{i:010X}")
    await store.usage.hit_rate(team, user, limit=60, window_s=load.ttl_s)
    await store.history.engage(key)
    history = await store.history.history(key) or []
    reply_id = f"{i:016x}"
    answer, answer_ts = texts.answer(i), f"{_EPOCH + thread}.{turn + 2:06d}9"
    record = {
        "native": True,
        "owner": "host-0a1b2c3d",
        "team": team,
        "channel": channel,
        "thread_ts": key.thread_ts,
        "ts": answer_ts,
        "text": answer,
        "final": True,
    }
    await store.inflight.track(reply_id, record)
    await store.usage.record(
        team, channel, user, {"prompt_tokens": 900, "completion_tokens": 380, "total_tokens": 1280}
    )
    await store.inflight.untrack(reply_id)
    turns = [
        Turn("user", texts.question(i), author=user, ts=ts),
        Turn("assistant", answer, ts=answer_ts),
    ]
    keep = newest_within([*history, *turns], PROMPT_TOKEN_BUDGET)
    await store.history.append(key, turns, keep=keep)


async def _sizes(url: str) -> None:
    """MEMORY USAGE of each kind of key, written with the bot's real TTLs (Store.open's
    defaults: 30 days of thread memory, 15 min dedupe markers, a 1 h rate window): one thread
    of 10 turns in workspace T0000002, its markers, counters and a reply in flight."""
    store = Store.open(connect_redis(url), turn_tokens=PROMPT_TOKEN_BUDGET)
    redis = store.guard.redis
    texts = _Texts(200, 1500)
    team, channel, user = "T0000002", "C0000000002", "U0000000002"
    key = ThreadKey(team, channel, f"{_EPOCH}.000100")
    try:
        await store.dedupe.first_sighting(team, channel, f"{_EPOCH}.000100", "Ev0000000002")
        await store.usage.hit_rate(team, user, limit=60, window_s=3600)
        await store.history.engage(key)
        await store.usage.record(team, channel, user, {"total_tokens": 1280})
        for n in range(5):  # 10 turns: five questions and five answers
            turns = [
                Turn("user", texts.question(n), author=user, ts=f"{_EPOCH}.{n + 2:06d}"),
                Turn("assistant", texts.answer(n), ts=f"{_EPOCH}.{n + 2:06d}9"),
            ]
            await store.history.append(key, turns)
        record = {"native": True, "owner": "host-0a1b2c3d", "team": team, "channel": channel}
        await store.inflight.track("r1", {**record, "text": texts.answer(0), "final": False})
        # Found by listing, not named here: the key schema is bot/store/keys.py's alone.
        rows = []
        for name in sorted([n.decode() async for n in redis.scan_iter(count=1000)]):
            size = await redis.memory_usage(name, samples=0)
            rows.append([name, f"{size:,}" if size else "–", _duration(await redis.ttl(name))])
        await store.inflight.untrack("r1")
    finally:
        await store.aclose()
    print(
        "\nEvery key after one more thread (T0000002: 10 turns, 5 × 200 + 5 × 1,500 chars, "
        "and a 1,500-char reply in flight), written with the bot's TTLs; T0000001's usage hash "
        "holds the load above (MEMORY USAGE … SAMPLES 0):"
    )
    _print_table(["key", "bytes", "TTL"], rows)


class _Texts:
    """Questions and answers of the configured lengths, different for every message."""

    def __init__(self, question_chars: int, answer_chars: int) -> None:
        rng = random.Random(7)
        words = " ".join(rng.choice(_WORDS) for _ in range(4 * answer_chars))
        self._pool, self._q, self._a = words, question_chars, answer_chars

    def question(self, i: int) -> str:
        start = (i * 31) % (len(self._pool) - self._q)
        return self._pool[start : start + self._q]

    def answer(self, i: int) -> str:
        start = (i * 17) % (len(self._pool) - self._a)
        return self._pool[start : start + self._a]


async def _snapshot(redis: aioredis.Redis, data_dir: Path, label: str) -> Snapshot:
    info = await redis.info("memory")
    aof = sum(f.stat().st_size for f in (data_dir / "appendonlydir").iterdir())
    rewrites = (await redis.info("persistence")).get("aof_rewrites", 0)
    return Snapshot(
        label,
        int(info["used_memory"]),
        int(info["used_memory_rss"]),
        int(info["used_memory_dataset"]),
        int(await redis.dbsize()),
        aof,
        int(rewrites),
    )


async def _expiry_scan(redis: aioredis.Redis) -> tuple[int, float]:
    """How many keys outlive the run (no TTL, or over an hour: the epoch, the day's usage
    hash), and when (``time.monotonic``) the last of the others runs out."""
    now, lasting, longest = time.monotonic(), 0, 0
    names = [name async for name in redis.scan_iter(count=1000)]
    for first in range(0, len(names), 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for name in names[first : first + 1000]:
                pipe.pttl(name)
            ttls = await pipe.execute()
        lasting += sum(1 for t in ttls if t == -1 or t > 3_600_000)
        longest = max([longest, *(t for t in ttls if 0 < t <= 3_600_000)])
    return lasting, now + longest / 1000


async def _poll(done: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    """Wait until ``done()``; False if it is not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await done():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"


def _duration(ttl: int) -> str:
    if ttl == -1:
        return "none"
    if ttl >= 86400:
        return f"{ttl / 86400:.0f} d"
    return f"{ttl / 60:.0f} min" if ttl >= 60 else f"{ttl} s"


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")


def _parse(argv: list[str] | None = None) -> tuple[Load, Path | None]:
    parser = argparse.ArgumentParser(prog="python -m bench.store_memory", description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=2_000)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--question-chars", type=int, default=200)
    parser.add_argument("--answer-chars", type=int, default=1500)
    parser.add_argument(
        "--ttl", type=float, default=60.0, help="seconds of thread memory, dedupe and rate keys"
    )
    parser.add_argument(
        "--settle", type=float, default=30.0, help="seconds to watch RSS after the rewrite"
    )
    parser.add_argument(
        "--server", type=Path, default=None, help="another server binary (default: the bot's)"
    )
    parser.add_argument("--concurrency", type=int, default=100, help="turns at once (≤ threads)")
    args = parser.parse_args(argv)
    load = Load(
        messages=args.messages,
        threads=args.threads,
        channels=args.channels,
        users=args.users,
        question_chars=args.question_chars,
        answer_chars=args.answer_chars,
        ttl_s=args.ttl,
        concurrency=min(args.concurrency, args.threads),
        settle_s=args.settle,
    )
    return load, args.server


if __name__ == "__main__":
    asyncio.run(main(*_parse()))
