"""Text out of documents: a PDF's text layer (pypdf), and text files decoded (UTF-8, else the
encoding a BOM names, else Windows-1252).

    text, note = pdf_text(data, name="report.pdf", max_chars=200_000)
    text, note = plain_text(data, name="notes.md", max_chars=200_000)

Each stops at ``max_chars`` and says so in ``note`` ("" when nothing was left out). A PDF that is
password-protected, damaged, or only scanned pictures of pages raises ``Unreadable`` (the last
``ScannedPdf``, saying how many pages: a model that reads PDFs may still take it as it is).
"""

from __future__ import annotations

import codecs
import io
import time

from pypdf import PdfReader
from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError, PyPdfError

from bot.files.attachment import Unreadable

MAX_PAGES = 300
PDF_SECONDS = 15.0  # checked between pages (bot/files/pdf_process.py kills a page that runs on)
# What pypdf raises on a malformed file: its own errors, and as often plain Python ones.
_MALFORMED = (
    PdfReadError,
    PyPdfError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    RecursionError,
)


class ScannedPdf(Unreadable):
    """A PDF whose pages are only pictures (no text layer); ``pages``: how many."""

    def __init__(self, note: str, *, pages: int) -> None:
        super().__init__(note)
        self.pages = pages


def page_marks(pages: int) -> str:
    """The text of a PDF of ``pages`` pages without words: only its page marks."""
    return "\n\n".join(f"--- page {n} ---" for n in range(1, pages + 1))


def pdf_text(
    data: bytes,
    *,
    name: str,
    max_chars: int,
    max_pages: int = MAX_PAGES,
    max_seconds: float = PDF_SECONDS,
) -> tuple[str, str]:
    """The PDF's text, page by page (``--- page N ---`` between pages), and what was left out."""
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not _opens_without_password(reader):
            raise Unreadable(f"{name} is password-protected, so I couldn't read it.")
        pages = reader.pages
        total = len(pages)
        parts: list[str] = []
        length = read = failed = 0
        started = time.monotonic()
        for page in pages:
            if read >= max_pages or length >= max_chars:
                break
            if time.monotonic() - started > max_seconds:
                break
            read += 1
            try:
                text = (page.extract_text() or "").strip()
            except _MALFORMED:
                failed += 1  # one broken page need not cost the others
                continue
            if text:
                marked = f"--- page {read} ---\n{text}" if total > 1 else text
                parts.append(marked)
                length += len(marked) + 2
    except Unreadable:
        raise
    except (FileNotDecryptedError, DependencyError):
        raise Unreadable(f"{name} is password-protected, so I couldn't read it.") from None
    except _MALFORMED:
        raise Unreadable(f"{name} looks damaged; I couldn't read it.") from None
    if total == 0 or (failed and failed == read):
        raise Unreadable(f"{name} looks damaged; I couldn't read it.")
    if not parts:
        raise ScannedPdf(
            f"{name} is a scanned PDF with no text layer, so I couldn't read its text.",
            pages=total,
        )
    text, cut = _within("\n\n".join(parts), max_chars)
    note = ""
    if read < total:
        note = f"Only the first {read} of {total} pages of {name} were read."
    elif cut:
        note = f"Only the first {max_chars:,} characters of {name} were read."
    return text, note


def plain_text(data: bytes, *, name: str, max_chars: int) -> tuple[str, str]:
    """A text file's contents (line ends made ``\\n``) and what was left out. Only the bytes
    that can hold ``max_chars`` characters are decoded (UTF-8 takes at most 4 a character), so
    a 20 MB log costs what its first characters do, not ten times its size."""
    limit = 4 * max_chars
    whole = len(data) <= limit
    text = decode(data[:limit], final=whole).replace("\r\n", "\n").replace("\r", "\n")
    text, cut = _within(text, max_chars)
    cut = cut or not whole
    note = f"Only the first {max_chars:,} characters of {name} were read." if cut else ""
    return text, note


def decode(data: bytes, *, final: bool = True) -> str:
    """``data`` as text: UTF-8, else the encoding a BOM names, else Windows-1252. ``final``
    False: ``data`` is the beginning of a longer file, and a character cut in two at its end is
    left out rather than taken for an error."""
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return codecs.getincrementaldecoder(encoding)("replace").decode(data, final)
    try:
        return codecs.getincrementaldecoder("utf-8")("strict").decode(data, final)
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _within(text: str, max_chars: int) -> tuple[str, bool]:
    if len(text) <= max_chars:
        return text, False
    return text[:max_chars], True


def _opens_without_password(reader: PdfReader) -> bool:
    """Many PDFs are encrypted with an owner password only (printing or copying restricted):
    they open with an empty user password."""
    return bool(reader.decrypt(""))
