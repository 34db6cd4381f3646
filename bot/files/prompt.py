"""Attachments written into the prompt's text: each one a clearly delimited block naming the file,
its type and size, cut to the room it is given with a note saying how much was left out.

    render_attachment(doc, max_chars=4000)
    # <attachment name="notes.md" type="text/markdown" size="12.3 KB">
    # …the text…
    # [cut here: 8,415 more characters (68% of the text) not shown]
    # </attachment>

An image's block only names it (its pixels travel as an image part); a file that could not be
read says why, so the model neither ignores nor invents it. The file's own text cannot close
the block early or open another: tags inside it are escaped.
"""

from __future__ import annotations

import re

from bot.files.attachment import Attachment, human_size

_TAG = re.compile(r"<(/?attachment)", re.IGNORECASE)
_CLOSE = "\n</attachment>"
_CUT_ROOM = 96  # the cut note's length, at most
_LINE_SLACK = 0.2  # a cut may end up to this share of the room early, at a line end


def render_attachment(attachment: Attachment, *, max_chars: int, attached: bool = True) -> str:
    """``attachment`` as prompt text of at most about ``max_chars`` characters (a header and
    the cut note always fit, whatever the room). ``attached=False``: an image not sent with
    this prompt (shared long ago, or no room), only named."""
    header = _header(attachment)
    if attachment.kind == "image":
        if not attached:
            return f"{header}\n(an image; not attached this time)" + _CLOSE
        return f"{header}\n(an image; it is attached)" + _CLOSE
    if attachment.kind == "note":
        return f"{header}\n(not read) {_escaped(attachment.note)}" + _CLOSE
    lines = [header]
    if attachment.note:
        lines.append(f"[{_escaped(attachment.note)}]")
    fixed = sum(len(line) + 1 for line in lines) + len(_CLOSE)
    body, cut_note = cut(_escaped(attachment.text), max_chars - fixed - _CUT_ROOM)
    lines.append(body)
    if cut_note:
        lines.append(cut_note)
    return "\n".join(lines) + _CLOSE


def render_enclosed(attachment: Attachment) -> str:
    """The block naming a file sent with the message as itself (a PDF for a model that reads
    PDFs): its content is in the file part, not here."""
    return f"{_header(attachment)}\n(the file itself is attached)" + _CLOSE


def cut(text: str, room: int) -> tuple[str, str]:
    """``text`` within ``room`` characters (ending at a line end when one is near) and a note
    of what was left out ("" when it all fits)."""
    if len(text) <= room:
        return text, ""
    room = max(room, 0)
    end = room
    newline = text.rfind("\n", 0, room + 1)
    if newline >= room * (1 - _LINE_SLACK):
        end = newline
    kept = text[:end].rstrip("\n")
    left = len(text) - len(kept)
    share = max(1, round(100 * left / len(text)))
    if not kept:
        return "", f"[the text ({len(text):,} characters) was left out: no room for it here]"
    return kept, f"[cut here: {left:,} more characters ({share}% of the text) not shown]"


def _header(attachment: Attachment) -> str:
    kind = attachment.mimetype or "unknown"
    size = f' size="{human_size(attachment.size)}"' if attachment.size else ""
    return (
        f'<attachment name="{_attribute(attachment.name or "unnamed")}" '
        f'type="{_attribute(kind)}"{size}>'
    )


def _attribute(value: str) -> str:
    return (
        value.replace("&", "&amp;")
        .replace('"', "&quot;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("\n", " ")
    )


def _escaped(text: str) -> str:
    return _TAG.sub(r"&lt;\1", text)
