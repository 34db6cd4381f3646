"""Reading the files of a message: each one downloaded once (or found in the store's cache),
recognised by its bytes, and turned into an ``Attachment`` — an image the size vision models
use, a document's text, or a short note for the person saying why it could not be read.

    reader = FileReader(slack, store.files, limits=FileLimits(max_bytes=20_000_000))
    attachments = await reader.read("T1", inbound.files)

Never raises for a bad file: too big, too many, deleted, a download that fails or times out,
an encrypted, damaged or scanned PDF, an archive or other binary — each becomes a note and the
rest of the message is read. Notes that reading again would repeat (a ZIP stays a ZIP) are
cached with the readable files; failures that may pass (a timeout, a missing scope) are not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from bot.errors import (
    FileMissing,
    FileNotAuthorized,
    FileTimedOut,
    FileTooLarge,
    ModelError,
    SlackError,
)
from bot.events import DOWNLOADABLE_MODES, SlackFile
from bot.files.attachment import Attachment, Unreadable, human_size
from bot.files.documents import ScannedPdf, page_marks, plain_text
from bot.files.images import MAX_PIXELS, MAX_SIDE, decode_pixels, downscale
from bot.files.pdf_process import read_pdf
from bot.files.sniff import Sniffed, sniff
from bot.slack import SlackGateway

log = logging.getLogger(__name__)

_READABLE = "I read images, PDFs and text files"


@dataclass(frozen=True, slots=True)
class FileLimits:
    """How much of which files is read (the settings in brackets)."""

    max_bytes: int = 20 * 1024 * 1024  # one file's download cap (FILE_MAX_BYTES)
    per_message: int = 5  # files read per message; the rest get one note (FILES_PER_MESSAGE)
    download_s: float = 30.0  # one download's time limit
    max_text_chars: int = 200_000  # a document's text kept; the prompt takes what fits of it
    pdf_s: float = 20.0  # a PDF's time limit (its reading process is killed)
    native_pdf: bool = False  # keep a PDF's own bytes for models that read PDFs (FILE_INPUT)
    images: bool = True  # False: images become notes without a download (MODEL_VISION=off)
    image_max_side: int = MAX_SIDE
    image_max_pixels: int = MAX_PIXELS
    concurrency: int = 4  # files this process downloads and decodes at once
    # Image pixels this process decodes at once (about 4 bytes each, and a band more); a
    # larger image waits to be decoded alone.
    decode_pixels: int = 40_000_000


class PixelBudget:
    """At most ``capacity`` pixels being decoded at once, across all messages; an image larger
    than that waits until nothing else is decoded, then goes alone.

        async with budget.held(decode_pixels(data)):
            shrunk = await asyncio.to_thread(downscale, data)
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._used = 0
        self._changed = asyncio.Condition()

    @property
    def used(self) -> int:
        return self._used

    @asynccontextmanager
    async def held(self, pixels: int) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._used == 0 or self._used + pixels <= self._capacity
            )
            self._used += pixels
        try:
            yield
        finally:
            self._used -= pixels
            async with self._changed:
                self._changed.notify_all()


class AttachmentCache(Protocol):
    """Where read files are kept for follow-ups (bot/store/files.py ``FileCache``)."""

    async def get(self, team: str, file_id: str) -> Attachment | None: ...

    async def put(self, team: str, attachment: Attachment) -> bool: ...


class Transcriber(Protocol):
    """Speech to text for voice clips and audio files (``/audio/transcriptions``)."""

    async def transcribe(self, audio: bytes, *, filename: str, mimetype: str) -> str: ...


class NoTranscriber:
    """The transcriber when none is set up (no ``TRANSCRIBE_MODEL``): audio gets a note (not
    cached: once a transcriber is set up the clip is read)."""

    async def transcribe(self, audio: bytes, *, filename: str, mimetype: str) -> str:
        raise Unreadable(
            f"{filename} is an audio clip, and I can't listen to those.", lasting=False
        )


class FileReader:
    """Reads the files of messages for the model (see the module docstring)."""

    def __init__(
        self,
        slack: SlackGateway,
        cache: AttachmentCache,
        *,
        limits: FileLimits | None = None,
        transcriber: Transcriber | None = None,
    ) -> None:
        self._slack = slack
        self._cache = cache
        self._limits = limits or FileLimits()
        self._transcriber: Transcriber = transcriber or NoTranscriber()
        self._slots = asyncio.Semaphore(self._limits.concurrency)
        self._pixels = PixelBudget(self._limits.decode_pixels)

    @property
    def limits(self) -> FileLimits:
        return self._limits

    async def read(self, team: str, files: Sequence[SlackFile]) -> list[Attachment]:
        """The files of one message in workspace ``team``, in order: the first
        ``per_message`` read, then one note naming how many more were left out."""
        taken = list(files[: self._limits.per_message])
        read = list(await asyncio.gather(*(self._one(team, file) for file in taken)))
        left = len(files) - len(taken)
        if left > 0:
            names = ", ".join(f.label for f in files[len(taken) :][:5])
            more = "" if left <= 5 else f" and {left - 5} more"
            were = "was" if left == 1 else "were"
            note = (
                f"I read the first {len(taken)} files of a message and no more; "
                f"{left} {were} left out ({names}{more})."
            )
            read.append(Attachment("note", "", "", "", 0, note=note))
        return read

    async def _one(self, team: str, file: SlackFile) -> Attachment:
        try:
            return await self._read_one(team, file)
        except Exception:
            # Not the file's fault but a defect here (the expected failures are notes already):
            # logged with its traceback; the person gets a short note, not a failed answer,
            # and it is not cached.
            log.exception("reading file %s failed unexpectedly", file.id)
            return Attachment.unread(file, f"I couldn't read {file.label} just now.")

    async def _read_one(self, team: str, file: SlackFile) -> Attachment:
        refused = self._refusal(file)
        if refused is not None:
            return refused
        cached = await self._cache.get(team, file.id)
        if cached is not None and self._usable(cached):
            return cached if self._limits.images else cached.unseen()
        lasting = True
        async with self._slots:
            try:
                if file.needs_info:
                    file = await self._slack.file_info(file.id)
                    refused = self._refusal(file)
                    if refused is not None:
                        return refused
                attachment = await self._fetch(file)
            except Unreadable as exc:
                attachment, lasting = Attachment.unread(file, exc.note), exc.lasting
            except SlackError as exc:
                # Only a file too big stays so; a timeout, a missing scope or a deletion
                # Slack has not finished may read fine next time.
                attachment = Attachment.unread(file, _download_note(file, exc))
                lasting = isinstance(exc, FileTooLarge)
                log.info("could not fetch file %s: %s", file.id, exc)
        if lasting:
            await self._cache.put(team, attachment)
        return attachment

    def _refusal(self, file: SlackFile) -> Attachment | None:
        """A note for a file that is not worth a download (or cannot be downloaded)."""
        name = file.label
        note = ""
        if file.deleted:
            note = f"{name} was deleted before I could read it."
        elif file.needs_info:
            return None  # files.info tells the rest
        elif file.mode == "hidden_by_limit":
            note = f"Slack hides {name} from me (the workspace's plan limits file history)."
        elif file.mode == "external":
            note = f"{name} is stored outside Slack, where I can't open it."
        elif file.mode not in DOWNLOADABLE_MODES:
            note = f"{name} is a Slack {file.mode}, which I can't read; {_READABLE}."
        elif file.size > self._limits.max_bytes:
            note = _too_big(name, file.size, self._limits.max_bytes)
        elif not file.download_url:
            note = f"Slack gave me no way to download {name}."
        elif not self._limits.images and file.mimetype.startswith("image/"):
            note = f"{name} is an image, and the model I use can't see images."
        elif file.mimetype.startswith("video/"):
            note = f"{name} is a video, and I can't watch those."  # (not worth its download)
        return Attachment.unread(file, note) if note else None

    def _usable(self, cached: Attachment) -> bool:
        # A PDF cached without its bytes (too big for the cache) is read again for a model
        # that takes PDFs as they are.
        return not (
            self._limits.native_pdf
            and cached.kind == "document"
            and cached.mimetype == "application/pdf"
            and not cached.data
        )

    async def _fetch(self, file: SlackFile) -> Attachment:
        limits = self._limits
        html = file.mimetype == "text/html" or file.filetype == "html"
        data = await self._slack.download(
            file.download_url,
            max_bytes=limits.max_bytes,
            time_limit=limits.download_s,
            html_expected=html,
        )
        kind = sniff(data, name=file.name, mimetype=file.mimetype, filetype=file.filetype)
        if kind.family == "audio":
            return await self._transcribed(file, data, kind)
        if kind.family == "image" and not limits.images:
            # Not kept: a reader for a model that sees images will want it.
            raise Unreadable(
                f"{file.label} is an image, and the model I use can't see images.", lasting=False
            )
        if kind.family == "pdf":
            return await self._pdf(file, data, kind)
        pixels = 0
        if kind.family == "image":
            pixels = decode_pixels(
                data, max_side=limits.image_max_side, max_pixels=limits.image_max_pixels
            )
        try:
            async with self._pixels.held(pixels):
                return await asyncio.to_thread(self._extract, file, data, kind)
        except Unreadable:
            raise
        except Exception as exc:
            # Image and PDF parsers meeting a hostile or broken file may raise anything; the
            # person gets a note and the rest of the message is still answered.
            log.info("could not read file %s (%s): %s", file.id, kind.mimetype, type(exc).__name__)
            raise Unreadable(f"I couldn't read {file.label}; it may be damaged.") from None

    def _extract(self, file: SlackFile, data: bytes, kind: Sniffed) -> Attachment:
        """Bytes → attachment (runs in a worker thread: decoding is CPU work)."""
        limits, name = self._limits, file.label
        if kind.family == "image":
            shrunk = downscale(
                data,
                name=name,
                max_side=limits.image_max_side,
                max_pixels=limits.image_max_pixels,
            )
            return Attachment.image_of(file, data=shrunk.data, mime=shrunk.mime)
        if kind.family == "text":
            text, note = plain_text(data, name=name, max_chars=limits.max_text_chars)
            return Attachment.document_of(file, text=text, mimetype=kind.mimetype, note=note)
        raise Unreadable(_unsupported(name, kind))

    async def _pdf(self, file: SlackFile, data: bytes, kind: Sniffed) -> Attachment:
        """A PDF's text, read in a process of its own (bot/files/pdf_process.py)."""
        limits = self._limits
        try:
            text, note = await read_pdf(
                data, name=file.label, max_chars=limits.max_text_chars, time_limit=limits.pdf_s
            )
        except ScannedPdf as scanned:
            if not limits.native_pdf:
                raise
            # A model that reads PDFs sees the pages themselves (bot/turn/files.py sends it
            # whole, or notes it when it does not fit).
            text, note = page_marks(scanned.pages), ""
        pdf = data if limits.native_pdf else b""
        return Attachment.document_of(file, text=text, mimetype=kind.mimetype, note=note, pdf=pdf)

    async def _transcribed(self, file: SlackFile, data: bytes, kind: Sniffed) -> Attachment:
        try:
            text = await self._transcriber.transcribe(
                data, filename=file.name or f"{file.id}.audio", mimetype=kind.mimetype
            )
        except ModelError as exc:
            log.info("could not transcribe file %s: %s", file.id, exc)
            raise Unreadable(
                f"I couldn't transcribe {file.label} just now.", lasting=False
            ) from None
        if not text.strip():
            raise Unreadable(f"I heard no speech in {file.label}.")
        return Attachment.document_of(file, text=text.strip(), mimetype=kind.mimetype)


def _unsupported(name: str, kind: Sniffed) -> str:
    if kind.family == "office":
        return f"{name} is an Office document, which I can't open yet; {_READABLE} (a PDF works)."
    if kind.family == "archive":
        return f"{name} is an archive (ZIP or similar), which I can't open; {_READABLE}."
    if kind.family == "heic":
        return f"{name} is a HEIC photo, which I can't open; a JPEG or PNG works."
    if kind.family == "video":
        return f"{name} is a video, and I can't watch those."
    return f"{name} isn't a kind of file I can read; {_READABLE}."


def _too_big(name: str, size: int, limit: int) -> str:
    if size > limit:
        return f"{name} is too big for me to read ({human_size(size)}; my limit is {human_size(limit)})."
    return f"{name} is too big for me to read (my limit is {human_size(limit)})."


def _download_note(file: SlackFile, exc: SlackError) -> str:
    name = file.label
    if isinstance(exc, FileMissing):
        return f"{name} was deleted or is no longer shared with me, so I couldn't read it."
    if isinstance(exc, FileTooLarge):
        return _too_big(name, file.size, exc.limit)
    if isinstance(exc, FileNotAuthorized):
        return f"I'm not allowed to open {name}: the app needs Slack's files:read permission."
    if isinstance(exc, FileTimedOut):
        return f"Downloading {name} took too long, so I couldn't read it."
    return f"I couldn't download {name} just now."
