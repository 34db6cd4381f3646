"""The context step's files: what people shared in the conversation, read (bot/files) and written
into the prompt, and what the person is told about files that could not be read.

    attachments = await files.read(inbound.team, inbound.files)      # the question's files
    shown = await files.shown(team, [*history, question], attachments, room_tokens=7000)
    prompt_window(system, shown.turns, budget)     # documents in the text, images as parts
    shown.notes                                    # for the person: "report.zip is an archive …"

A turn keeps only its files' ids (``Turn.files``); a follow-up reads them again from the
store's cache (bot/store/files.py), not from Slack. Documents go into their turn's text as
delimited blocks, the newest turn's first: each turn with documents gets at most half of the
prompt room still left, so earlier documents stay in the context as long as there is room and a
long file is cut with a note saying so. Images travel as image parts, the question's own and
those of the ``image_turns`` questions before it, while there is room; older ones are only
named. With
``FILE_INPUT=native`` a PDF read whole that fits its room goes as itself (a file part), else as
its text.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from bot.conversation import IMAGE_TOKENS, Enclosure, Turn, estimate_tokens
from bot.events import SlackFile
from bot.files import Attachment, render_attachment
from bot.files.prompt import render_enclosed
from bot.metrics import Metrics

# UTF-8 bytes per prompt token for a document's text: estimate_tokens counts 4 bytes a token
# (a Japanese character is 3, an emoji 4: documents are measured and cut in bytes, as it counts
# them); a little less leaves room for JSON escaping when several people speak in the thread.
_BYTES_PER_TOKEN = 3.2
# Room a turn's own words keep before its images take the rest.
_TEXT_RESERVE = 1000
# A PDF page sent as itself: models that read PDFs take each page's text and an image of it.
PDF_PAGE_TOKENS = 1000
_PAGE_MARK = re.compile(r"^--- page (\d+) ---$", re.MULTILINE)  # bot/files/documents.py
# A document gets at least this much room, however little is left (the prompt window then
# decides whether its turn fits at all).
_MIN_DOC_TOKENS = 200


class FileSource(Protocol):
    """What the step needs of a reader (bot/files/reader.py ``FileReader``)."""

    async def read(self, team: str, files: Sequence[SlackFile]) -> list[Attachment]: ...


class NoFiles:
    """The reader when files are turned off: every file gets the same note."""

    async def read(self, team: str, files: Sequence[SlackFile]) -> list[Attachment]:
        return [
            Attachment.unread(file, f"I don't read files here, so I didn't open {file.label}.")
            for file in files
        ]


@dataclass(frozen=True, slots=True)
class Shown:
    """The turns as the prompt shows them, and what the person is told about the question's
    files (one short sentence each)."""

    turns: list[Turn]
    notes: tuple[str, ...] = ()
    # The names of the question's images sent (told to the person if the model refuses them;
    # images of earlier questions sent again are not: the person was told then).
    images: tuple[str, ...] = ()


class SharedFiles:
    """Reads the files of a conversation into its prompt; see the module docstring."""

    def __init__(self, reader: FileSource, metrics: Metrics, *, image_turns: int = 3) -> None:
        self._reader = reader
        self._metrics = metrics
        self._image_turns = image_turns

    async def read(self, team: str, files: Sequence[SlackFile]) -> list[Attachment]:
        """The question's files, read (never raises: a bad file becomes a note)."""
        if not files:
            return []
        read = await self._reader.read(team, files)
        for attachment in read:
            self._metrics.files.labels(kind=attachment.kind).inc()
        return read

    async def shown(
        self,
        team: str,
        turns: Sequence[Turn],
        fresh: Sequence[Attachment],
        *,
        room_tokens: int,
    ) -> Shown:
        """``turns`` (the question last, whose files are ``fresh``) with their files in them;
        ``room_tokens``: the prompt's budget less the system prompt."""
        if not turns:
            return Shown([])
        earlier = await self._earlier_files(team, turns[:-1], room_tokens)
        remaining = room_tokens
        out: list[Turn] = []
        notes: list[str] = []
        images: tuple[str, ...] = ()
        earlier_questions = 0
        for index in range(len(turns) - 1, -1, -1):
            turn = turns[index]
            newest = index == len(turns) - 1
            earlier_questions += turn.role == "user" and not newest
            attachments = list(fresh) if newest else earlier.get(index, [])
            if newest:  # told even when the question alone fills the prompt
                notes += [a.note for a in attachments if a.note]
            remaining -= estimate_tokens(turn.text) + 4
            if not attachments or remaining <= 0:
                out.append(turn)
                continue
            # Images first (the turn's words keep _TEXT_RESERVE), then documents.
            recent = earlier_questions <= self._image_turns  # the question's own: always
            room_for_images = max(0, (remaining - _TEXT_RESERVE) // IMAGE_TOKENS)
            attached = _images(attachments)[: room_for_images if recent else 0]
            remaining -= IMAGE_TOKENS * len(attached)
            shown_turn, told = _with_files(turn, attachments, remaining, attached)
            remaining -= estimate_tokens(shown_turn.text) - estimate_tokens(turn.text)
            remaining -= sum(e.tokens for e in shown_turn.enclosures if not e.is_image)
            out.append(shown_turn)
            if newest:
                images = tuple(a.name for a in attached)
                notes += told
                left_out = [a.name for a in _images(attachments)[len(attached) :]]
                if left_out:
                    notes.append(
                        f"I could look at only {len(attached)} of the images at once; "
                        f"{', '.join(left_out)} didn't fit."
                    )
        out.reverse()
        return Shown(out, tuple(notes), images)

    async def _earlier_files(
        self, team: str, turns: Sequence[Turn], room_tokens: int
    ) -> dict[int, list[Attachment]]:
        """The files of the earlier turns a prompt may still hold, from the cache (a miss reads
        them from Slack again). The images of questions before the last ``image_turns`` are not
        sent: they are named from the stored turn, not read."""
        wanted: dict[int, list[str]] = {}
        remaining = room_tokens
        questions = 0
        for index in range(len(turns) - 1, -1, -1):
            turn = turns[index]
            remaining -= estimate_tokens(turn.text) + 4
            if remaining <= 0:
                break
            questions += turn.role == "user"
            unsent = {i for i, _ in turn.images} if questions > self._image_turns else set()
            if turn.files:
                wanted[index] = [i for i in turn.files if i not in unsent]
        read = await asyncio.gather(
            *(
                self._reader.read(team, [SlackFile.by_id(i) for i in ids]) if ids else _none()
                for ids in wanted.values()
            )
        )
        return {
            index: _in_order(turns[index], ids, attachments)
            for (index, ids), attachments in zip(wanted.items(), read, strict=True)
        }


async def _none() -> list[Attachment]:
    return []


def _in_order(turn: Turn, read_ids: Sequence[str], read: Sequence[Attachment]) -> list[Attachment]:
    """The turn's files in order: those read, and its images not read named from the turn."""
    by_id = dict(zip(read_ids, read, strict=False))  # (a "too many files" note has no id)
    names = dict(turn.images)
    return [
        by_id[file_id] if file_id in by_id else Attachment("image", file_id, names[file_id], "", 0)
        for file_id in turn.files
        if file_id in by_id or file_id in names
    ]


def _images(attachments: Sequence[Attachment]) -> list[Attachment]:
    """The images that can be sent (read, with their data), in order."""
    return [a for a in attachments if a.kind == "image" and a.data]


def _with_files(
    turn: Turn,
    attachments: Sequence[Attachment],
    remaining_tokens: int,
    attached: Sequence[Attachment],
) -> tuple[Turn, list[str]]:
    """``turn`` with its attachments' blocks after its text and the ``attached`` images as
    parts (a PDF kept for a model that reads PDFs goes as itself when it fits whole); and what
    the person is told: a note for each document cut to fit (or a scan too long to send)."""
    documents = [a for a in attachments if a.kind == "document"]
    room = int(max(remaining_tokens // 2, _MIN_DOC_TOKENS * len(documents)) * _BYTES_PER_TOKEN)
    rooms = _shares(documents, room)
    blocks: list[str] = []
    told: list[str] = []
    enclosures = [Enclosure(a.data_url, a.name) for a in attached]
    for attachment in attachments:
        pdf = _native_pdf_tokens(attachment)
        if pdf and pdf <= room / len(documents) / _BYTES_PER_TOKEN:  # its even share
            blocks.append(render_enclosed(attachment))
            enclosures.append(Enclosure(attachment.data_url, attachment.name, pdf))
        elif pdf and _wordless(attachment):  # a scan, too long to send as itself
            pages = len(_PAGE_MARK.findall(attachment.text))
            note = (
                f"{attachment.name} is a scanned PDF too long to send as it is "
                f"({pages} pages), so I couldn't read it."
            )
            blocks.append(
                render_attachment(replace(attachment, kind="note", note=note), max_chars=0)
            )
            told.append(note)
        elif attachment.kind == "document":
            block = _block_within(attachment, rooms[id(attachment)])
            blocks.append(block)
            whole = _size(attachment.text)
            if _size(block) < whole:  # whole, a block is longer than the text
                read = max(1, min(99, round(100 * _size(block) / whole)))
                told.append(
                    f"{attachment.name} is long: only about {read}% of it fits in what "
                    "I can read at once."
                )
        else:
            sent = any(attachment is image for image in attached)
            blocks.append(render_attachment(attachment, max_chars=0, attached=sent))
    text = "\n\n".join([turn.text, *blocks] if turn.text else blocks)
    return replace(turn, text=text, enclosures=tuple(enclosures)), told


def _native_pdf_tokens(attachment: Attachment) -> int:
    """What a PDF kept as itself (``FILE_INPUT=native``) costs sent whole, about (0: not one,
    or not read whole): its text and an image of each page, as models that read PDFs take
    them."""
    if attachment.data_mime != "application/pdf" or not attachment.data or attachment.note:
        return 0
    numbers = _PAGE_MARK.findall(attachment.text)
    pages = int(numbers[-1]) if numbers else 1
    return estimate_tokens(attachment.text) + PDF_PAGE_TOKENS * pages


def _wordless(attachment: Attachment) -> bool:
    """A document with nothing but page marks (a scanned PDF kept as itself)."""
    return not _PAGE_MARK.sub("", attachment.text).strip()


def _size(text: str) -> int:
    """What ``text`` weighs in a prompt: its UTF-8 bytes (``estimate_tokens``' unit)."""
    return len(text.encode("utf-8"))


def _block_within(attachment: Attachment, room: int) -> str:
    """The document's block in at most ``room`` bytes (its header and cut note always: the
    smallest block when even that is over): the longest ``render_attachment`` cut that fits,
    found by halving, as a cut's characters weigh 1 to 4 bytes each."""
    block = render_attachment(attachment, max_chars=room)
    if _size(block) <= room:
        return block  # ASCII, or it fits whole
    fits, over = 0, room  # max_chars: over is too long; fits fits (or is the smallest, 0)
    best = render_attachment(attachment, max_chars=0)
    while over - fits > 1:
        middle = (fits + over) // 2
        block = render_attachment(attachment, max_chars=middle)
        if _size(block) <= room:
            fits, best = middle, block
        else:
            over = middle
    return best


def _shares(documents: Sequence[Attachment], room: int) -> dict[int, int]:
    """``room`` bytes shared among ``documents``: evenly, what a short one leaves over going to
    the longer ones."""
    shares: dict[int, int] = {}
    left = room
    by_length = sorted(documents, key=lambda a: _size(a.text))
    for n, document in enumerate(by_length):
        fair = left // (len(by_length) - n)
        # The block's header and cut note take room of their own.
        share = min(fair, _size(document.text) + 300)
        shares[id(document)] = share
        left -= share
    return shares
