"""What a file's bytes are, from their first bytes (magic numbers), not from its name: a PNG named
``notes.txt`` is an image, a ZIP named ``report.pdf`` is an archive.

    sniff(b"%PDF-1.7 …", name="a.pdf", mimetype="application/pdf")   # Sniffed('pdf', …)

The name and Slack's mimetype only break ties the bytes leave open (an MP4 container holds
audio or video; a ZIP may be a Word document) and name text types (CSV, JSON, Markdown …).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["image", "pdf", "text", "audio", "video", "office", "archive", "heic", "binary"]

_IMAGES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_ARCHIVES = (
    b"\x1f\x8b",  # gzip
    b"BZh",  # bzip2
    b"\xfd7zXZ\x00",  # xz
    b"7z\xbc\xaf\x27\x1c",  # 7-Zip
    b"Rar!\x1a\x07",  # RAR
    b"\x28\xb5\x2f\xfd",  # zstd
)
_ZIP = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_OFFICE_SUFFIXES = (".docx", ".xlsx", ".pptx", ".odt", ".ods", ".odp", ".pages", ".key", ".numbers")
_AUDIO_MAGIC = (b"ID3", b"OggS", b"fLaC", b"#!AMR")
_HEIC_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"avif")
_AUDIO_BRANDS = (b"M4A ", b"M4B ", b"F4A ")
_TEXT_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")

# Slack's filetype and common suffixes → the mimetype a text attachment is labelled with.
_TEXT_TYPES = {
    "csv": "text/csv",
    "tsv": "text/tab-separated-values",
    "json": "application/json",
    "md": "text/markdown",
    "markdown": "text/markdown",
    "html": "text/html",
    "htm": "text/html",
    "xml": "application/xml",
    "yaml": "application/yaml",
    "yml": "application/yaml",
    "log": "text/plain",
    "txt": "text/plain",
    "text": "text/plain",
}


@dataclass(frozen=True, slots=True)
class Sniffed:
    """A file's family and the mimetype its content is labelled with."""

    family: Family
    mimetype: str


def sniff(data: bytes, *, name: str = "", mimetype: str = "", filetype: str = "") -> Sniffed:
    head = data[:64]
    for magic, mime in _IMAGES:
        if head.startswith(magic):
            return Sniffed("image", mime)
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return Sniffed("image", "image/webp")
    if head.startswith(_TEXT_BOMS):
        return Sniffed("text", text_type(name=name, mimetype=mimetype, filetype=filetype))
    if head.startswith(b"%PDF-") or (b"%PDF-" in data[:1024] and looks_binary(data[:1024])):
        # (the header may follow a little binary junk; a text that mentions %PDF- stays text)
        return Sniffed("pdf", "application/pdf")
    if head.startswith(_ZIP):
        lowered = name.lower()
        office = lowered.endswith(_OFFICE_SUFFIXES) or "officedocument" in mimetype
        return Sniffed("office" if office else "archive", mimetype or "application/zip")
    if head.startswith(_ARCHIVES):
        return Sniffed("archive", mimetype or "application/octet-stream")
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIC_BRANDS:
            return Sniffed("heic", "image/heic")
        audio = brand in _AUDIO_BRANDS or mimetype.startswith("audio/")
        return Sniffed("audio" if audio else "video", mimetype or "video/mp4")
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # Matroska / WebM
        audio = mimetype.startswith("audio/")
        return Sniffed("audio" if audio else "video", mimetype or "video/webm")
    if head.startswith(_AUDIO_MAGIC) or (head.startswith(b"RIFF") and head[8:12] == b"WAVE"):
        return Sniffed("audio", mimetype if mimetype.startswith("audio/") else "audio/mpeg")
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # an MPEG audio frame
        return Sniffed("audio", mimetype if mimetype.startswith("audio/") else "audio/mpeg")
    if looks_binary(data):
        return Sniffed("binary", mimetype or "application/octet-stream")
    return Sniffed("text", text_type(name=name, mimetype=mimetype, filetype=filetype))


def looks_binary(data: bytes) -> bool:
    """NUL bytes, or many control characters, in the first 8 KiB (UTF-16 has a BOM)."""
    sample = data[:8192]
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        return False
    if b"\x00" in sample:
        return True
    controls = sum(1 for byte in sample if byte < 32 and byte not in (9, 10, 12, 13, 27))
    return controls > len(sample) // 20


def text_type(*, name: str = "", mimetype: str = "", filetype: str = "") -> str:
    """The mimetype a text attachment is labelled with (``text/plain`` when nothing says)."""
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    for hint in (filetype.lower(), suffix):
        if hint in _TEXT_TYPES:
            return _TEXT_TYPES[hint]
    if mimetype.startswith("text/") or mimetype in ("application/json", "application/xml"):
        return mimetype
    return "text/plain"
