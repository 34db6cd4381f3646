"""Files already read, per workspace and Slack file id: a follow-up in the thread finds a file's
text or downscaled image here instead of downloading and decoding it again.

    cache = FileCache(guard, KeySchema(), ttl_s=72 * 3600, max_entry_bytes=1_000_000)
    await cache.put("T1", attachment)        # False: too big to keep, or the store is down
    await cache.get("T1", "F0123")           # None: not kept (or the store is down)
    await cache.forget("T1", "F0123")        # the file was deleted in Slack

Entries live ``ttl_s`` (FILE_CACHE_TTL_HOURS, far shorter than thread history) from their last
read: a file a conversation keeps using stays, the rest expire, so the cache holds about the
files of the last ``ttl_s`` (README, "Redis memory"). Redis runs with noeviction, where a full
memory fails every write. An entry over ``max_entry_bytes`` is not kept, except that a document
keeps its text without the PDF bytes it carries for models that read PDFs. A file deleted in
Slack is forgotten (``file_deleted``); a miss reads it from Slack again, which says it is gone.
While Redis is unavailable every lookup is a miss (the file is downloaded again) and nothing is
kept.
"""

from __future__ import annotations

from dataclasses import replace

import redis.asyncio as aioredis

from bot.files.attachment import Attachment
from bot.store.guard import Guard
from bot.store.keys import KeySchema

MAX_ENTRY_BYTES = 1_000_000


class FileCache:
    """Read files (``Attachment``s) by workspace and file id, each kept ``ttl_s`` from its last
    read."""

    def __init__(
        self,
        guard: Guard,
        keys: KeySchema,
        *,
        ttl_s: float,
        max_entry_bytes: int = MAX_ENTRY_BYTES,
    ) -> None:
        self._guard = guard
        self._keys = keys
        self._ttl_ms = int(ttl_s * 1000)
        self._max_entry_bytes = max_entry_bytes
        self._put = guard.redis.register_script(_PUT_LUA)
        self._forget = guard.redis.register_script(_FORGET_LUA)
        self._get = guard.redis.register_script(_GET_LUA)

    async def get(self, team: str, file_id: str) -> Attachment | None:
        """The file as read, its TTL refreshed (None: not kept, or the store is down)."""
        name = self._keys.file(team, file_id)

        async def read(r: aioredis.Redis) -> list[object]:
            found = await self._get(keys=[name], args=[self._ttl_ms], client=r)
            return list(found) if isinstance(found, list) else [None, None]

        found = await self._guard.attempt(read, "files", None)
        if found is None:
            return None
        meta, data = found
        if not isinstance(meta, bytes):
            return None
        return Attachment.from_record(meta, data if isinstance(data, bytes) else b"")

    async def put(self, team: str, attachment: Attachment) -> bool:
        """Keep ``attachment`` (an unnamed note, e.g. "too many files", is not kept)."""
        if not attachment.file_id:
            return False
        meta, data = attachment.to_record()
        if len(meta) + len(data) > self._max_entry_bytes and attachment.kind == "document":
            meta, data = replace(attachment, data=b"", data_mime="").to_record()
        if len(meta) + len(data) > self._max_entry_bytes:
            return False
        name = self._keys.file(team, attachment.file_id)

        async def write(r: aioredis.Redis) -> bool:
            # One script, not a MULTI (redis-py's cluster client runs a transaction's commands
            # on threads of their own, bench/README.md, issue 14): as atomic — a reader finds
            # the old entry or the new one, never none between, never one without its TTL.
            gone = self._keys.file_gone(team, attachment.file_id)
            return bool(
                await self._put(keys=[name, gone], args=[meta, data, self._ttl_ms], client=r)
            )

        return await self._guard.attempt(write, "files", False)

    async def forget(self, team: str, file_id: str) -> bool:
        """Drop the file's entry (it was deleted or unshared in Slack); False while the store
        is down."""
        name, gone = self._keys.file(team, file_id), self._keys.file_gone(team, file_id)

        async def drop(r: aioredis.Redis) -> bool:
            # A read of the file still under way (a download, a PDF: up to a minute) must not
            # put it back: the mark refuses its put for a while.
            await self._forget(keys=[name, gone], args=[_GONE_FOR_MS], client=r)
            return True

        return await self._guard.attempt(drop, "files", False)


# KEYS: the file's entry.  ARGV: its TTL (ms).  Its meta and data; a hit's TTL starts again
# (one script: a reader never finds an entry whose TTL it could not refresh).
_GET_LUA = """
local found = redis.call('HMGET', KEYS[1], 'meta', 'data')
if found[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return found
"""

# How long a forgotten file may not be cached again (longer than any read of it takes).
_GONE_FOR_MS = 10 * 60 * 1000

# KEYS: the file's entry, its "gone" mark.  ARGV: how long the mark lasts (ms).
_FORGET_LUA = """
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
return 1
"""

# KEYS: the file's entry, its "gone" mark.  ARGV: its meta (JSON), its data (bytes), its TTL
# (ms).  Replaces the entry whole; nothing while the file is marked gone (returns 0).
_PUT_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'meta', ARGV[1], 'data', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
