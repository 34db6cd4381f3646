"""Files shared in a conversation, made something a model can take: images downscaled, documents
as text, everything else a short note for the person.

    reader.py      FileReader      download (or cache) → recognise → read, per message
    attachment.py  Attachment      what a file became: image | document | note
    sniff.py       sniff           what the bytes are (magic numbers, not the name)
    images.py      downscale       Pillow: upright, first frame, within vision models' size
    documents.py   pdf_text, plain_text   pypdf; UTF-8 with fallbacks
    prompt.py      render_attachment      a delimited block for the prompt, cut with a note

    reader = FileReader(slack, store.files, limits=FileLimits(max_bytes=20_000_000))
    for attachment in await reader.read(inbound.team, inbound.files):
        if attachment.kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": attachment.data_url}})
        text_blocks.append(render_attachment(attachment, max_chars=8000))
"""

from __future__ import annotations

from bot.files.attachment import Attachment, Kind, human_size
from bot.files.prompt import render_attachment
from bot.files.reader import (
    AttachmentCache,
    FileLimits,
    FileReader,
    NoTranscriber,
    Transcriber,
)

__all__ = [
    "Attachment",
    "AttachmentCache",
    "FileLimits",
    "FileReader",
    "Kind",
    "NoTranscriber",
    "Transcriber",
    "human_size",
    "render_attachment",
]
