"""What a shared file became once read: an image for the model, a document's text, or a note for
the person saying why it could not be read.

    Attachment.image_of(file, data=jpeg, mime="image/jpeg").data_url   # 'data:image/jpeg;base64,…'
    Attachment.document_of(file, text="a,b\\n1,2", mimetype="text/csv")
    Attachment.unread(file, "report.zip is a ZIP archive; I can't open those.")

An attachment is what the store caches per file (``to_record`` / ``from_record``), so a follow-up
in the thread does not download the file again.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from typing import Literal

from bot.events import SlackFile

Kind = Literal["image", "document", "note"]
_RECORD_VERSION = 1


def human_size(size: int) -> str:
    """A byte count as people read it: ``"812 bytes"``, ``"12.3 KB"``, ``"4.0 MB"``."""
    if size < 1000:
        return f"{size} bytes"
    value, unit = size / 1000, "KB"
    for bigger in ("MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{value:.1f} {unit}"


class Unreadable(Exception):
    """Raised inside bot/files while reading a file: ``note`` tells the person why, in one
    short sentence (never an exception's text). ``lasting``: reading it again would fail the
    same way (the note may be cached)."""

    def __init__(self, note: str, *, lasting: bool = True) -> None:
        super().__init__(note)
        self.note = note
        self.lasting = lasting


@dataclass(frozen=True, slots=True)
class Attachment:
    """One file of a message, read.

    ``kind``: ``image`` (``data`` is the downscaled image, ``data_mime`` image/jpeg or
    image/png), ``document`` (``text``; with ``FILE_INPUT=native`` a PDF's own bytes in
    ``data``), ``note`` (not read: ``note`` says why). A document's ``note`` says what reading
    left out ("Only the first 300 pages … were read"). ``mimetype`` is what the content turned
    out to be (sniffed), ``size`` the file's size in Slack.
    """

    kind: Kind
    file_id: str
    name: str
    mimetype: str
    size: int
    text: str = ""
    data: bytes = b""
    data_mime: str = ""
    note: str = ""

    @property
    def data_url(self) -> str:
        """``data`` as a data URL (Chat Completions ``image_url``, Responses ``input_image``)."""
        return f"data:{self.data_mime};base64,{base64.b64encode(self.data).decode('ascii')}"

    @property
    def readable(self) -> bool:
        return self.kind != "note"

    @classmethod
    def image_of(cls, file: SlackFile, *, data: bytes, mime: str, note: str = "") -> Attachment:
        return cls(
            "image", file.id, file.label, mime, file.size, data=data, data_mime=mime, note=note
        )

    @classmethod
    def document_of(
        cls,
        file: SlackFile,
        *,
        text: str,
        mimetype: str,
        note: str = "",
        pdf: bytes = b"",
    ) -> Attachment:
        return cls(
            "document",
            file.id,
            file.label,
            mimetype,
            file.size,
            text=text,
            data=pdf,
            data_mime="application/pdf" if pdf else "",
            note=note,
        )

    @classmethod
    def unread(cls, file: SlackFile, note: str, *, mimetype: str = "") -> Attachment:
        return cls("note", file.id, file.label, mimetype or file.mimetype, file.size, note=note)

    def unseen(self) -> Attachment:
        """This image as a note, for a model that cannot see images (MODEL_VISION=off, or it
        refused them): the model is told the image was there, the person why it was not seen."""
        if self.kind != "image":
            return self
        note = f"{self.name} is an image, and the model I use can't see images."
        return replace(self, kind="note", data=b"", data_mime="", note=note)

    # -- the store's record ------------------------------------------------------------------

    def to_record(self) -> tuple[bytes, bytes]:
        """(JSON header, ``data``): what the store keeps of this attachment."""
        meta = {
            "v": _RECORD_VERSION,
            "kind": self.kind,
            "file_id": self.file_id,
            "name": self.name,
            "mimetype": self.mimetype,
            "size": self.size,
            "text": self.text,
            "data_mime": self.data_mime,
            "note": self.note,
        }
        return json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode(), self.data

    @classmethod
    def from_record(cls, meta: bytes, data: bytes) -> Attachment | None:
        """The attachment a record holds; None when it is not one this version reads."""
        try:
            raw = json.loads(meta)
        except ValueError:
            return None
        if not isinstance(raw, dict) or raw.get("v") != _RECORD_VERSION:
            return None
        kind = raw.get("kind")
        if kind not in ("image", "document", "note"):
            return None
        size = raw.get("size")
        return cls(
            kind=kind,
            file_id=str(raw.get("file_id", "")),
            name=str(raw.get("name", "")),
            mimetype=str(raw.get("mimetype", "")),
            size=size if isinstance(size, int) else 0,
            text=str(raw.get("text", "")),
            data=data,
            data_mime=str(raw.get("data_mime", "")),
            note=str(raw.get("note", "")),
        )
