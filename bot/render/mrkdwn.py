"""Markdown → Slack mrkdwn: owns how the model's Markdown looks in a message's ``text`` field.

The model writes CommonMark plus GFM tables, strikethrough and task lists; Slack's ``text``
field speaks mrkdwn, which has bold/italic/strike, links, code and quotes but no headings, lists
or tables. :func:`to_mrkdwn` parses with markdown-it-py and walks the syntax tree, so Markdown
is never taken apart with regular expressions.

>>> to_mrkdwn("# Plan\\n\\n**Bold**, *it* and ~~gone~~ — see [docs](https://x.io/?a=1&b=2).")
'*Plan*\\n\\n*Bold*, _it_ and ~gone~ — see <https://x.io/?a=1&amp;b=2|docs>.'
>>> print(to_mrkdwn("- one\\n  - two\\n- three"))
• one
    ◦ two
• three

Choices (each is pinned by a test):

* **Escaping.** Only ``&``, ``<`` and ``>`` are escaped, everywhere, including inside code, so
  text from the model can never form ``<!here>``, ``<@U…>``, ``<#C…>`` or ``<!subteam^…>``.
  The only ``<`` in the output opens a link this module writes: ``<url|label>`` for links,
  ``<url>`` for autolinks and bare URLs, ``<url|alt>`` for images. Only ``http(s)://`` and
  ``mailto:`` destinations become links (percent-encoded, so no ``|``, ``<`` or ``>``); any
  other destination shows as ``label (destination)``. Labels are plain text.
* **Links that cannot lie.** A link or image whose label names another place than its target
  (a URL, domain or address of another host, see :func:`disguised`) shows as
  ``label (<target>)``: the label as plain text, then the real target as a bare ``<url>``,
  which Slack displays as the URL itself — the one thing the model cannot dress up. (Rather
  than only the target, so a false alarm such as ``[Node.js](https://nodejs.org)`` still
  reads well.) An autolink whose displayed form differs from its target shows the target.
* **Mentions that cannot ping.** ``@here``, ``@channel`` and ``@everyone`` get a word joiner
  (U+2060) after the ``@``: invisible, reads and wraps as written, but no longer the keyword
  Slack looks for (see :func:`neutralise_mentions`). The blocks carrying the text are sent with
  ``verbatim: true`` (bot/render/reply.py), so Slack parses nothing in them by itself.
* **Literal markers.** mrkdwn has no escape for ``*``, ``_``, ``~`` and `````, so literal ones
  are left as written; runs of three or more backticks (which would open or close a Slack code
  block) get a zero-width space between the backticks, and a backtick inside a code span
  becomes ``ˋ`` (U+02CB).
* **Emphasis at word boundaries.** Slack only honours ``*bold*`` next to non-word characters, so
  when an emphasis touches a letter or digit (``foo**bar**baz``) or starts/ends with a space it
  is rendered as its plain text, without markers (``foobarbaz``). Emphasis nested in the same
  style is flattened (``*a *b* c*`` → ``_a b c_``), and ``***x***`` becomes ``*_x_*``. Line
  breaks inside emphasis, headings, link labels and table cells become spaces, because Slack's
  markers do not span lines; elsewhere they stay line breaks (how models use them).
* **Blocks.** Headings become a bold line (bold inside them is flattened); lists use
  ``•``/``◦``/``▪`` (``☐``/``☑`` for task items) and keep ordered start numbers, nested lists
  are indented by four spaces; quotes are ``> `` lines, nested content included; code blocks
  and tables become `````` fences without a language (Slack has none), at the margin even
  inside a list; table cells are plain text, aligned; a thematic break is ``———``; HTML is shown
  as escaped text; an empty code block is omitted.
* **Partial Markdown.** Prefixes of an answer render sensibly. An unclosed fence is closed, and
  one just opened (still empty) is omitted. In the text being written — the last inline text,
  when nothing follows it — an emphasis opener without its closer (``**bold``, ``~~gone``) or a
  marker after the last word (``text *``) is dropped instead of showing as a stray marker, and
  an unfinished link or image (``[text``, ``[text]``, ``[text](htt``) shows just its text.
  Pass ``final=True`` for text known to be complete: then those markers and brackets are
  literal, exactly as CommonMark reads them (``Use **kwargs`` keeps its ``**``).
* Content nested deeper than 100 levels is dropped by the parser.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.rules_inline import StateInline
from markdown_it.rules_inline import autolink as _commonmark_autolink
from markdown_it.rules_inline import image as _commonmark_image
from markdown_it.rules_inline import link as _commonmark_link
from markdown_it.rules_inline import newline as _commonmark_newline
from markdown_it.token import Token
from markdown_it.tree import SyntaxTreeNode

__all__ = [
    "MarkdownGuard",
    "UnsafeMarkdown",
    "disguised",
    "guard_markdown",
    "neutralise_mentions",
    "parse",
    "to_mrkdwn",
]

_BULLETS = ("•", "◦", "▪")
_TASK_BOXES = {True: "☑", False: "☐"}
_RULE = "———"
_FENCE = "```"
_ZERO_WIDTH_SPACE = "\u200b"
_STYLE_MARKS = {"strong": "*", "em": "_", "s": "~"}
# When emphasis is nested without text in between (``***x***``), Slack reads ``*_x_*`` best.
_MARK_ORDER = {"*": 0, "_": 1, "~": 2}
_LINK_SCHEMES = ("http://", "https://", "mailto:")
_URL_STOP = frozenset(' \t\n\r\f\v<>[]`|"')
_URL_TRAILING = frozenset("?!.,:;*_~'")
_BACKTICK_RUN = re.compile("`{3,}")


def to_mrkdwn(markdown: str, *, final: bool = False) -> str:
    """Render the model's Markdown (possibly a prefix of it) as Slack mrkdwn.

    ``final=False`` (the default) treats the text as possibly cut mid-construct, see the module
    docstring; ``final=True`` renders complete text exactly. Never raises.

    >>> to_mrkdwn("Use **kwargs and `<!here>`")
    'Use kwargs and `&lt;!here&gt;`'
    >>> to_mrkdwn("Use **kwargs", final=True)
    'Use **kwargs'
    >>> to_mrkdwn("See [the guide](https://exa")
    'See the guide'
    >>> to_mrkdwn("```python\\nprint(1 < 2)")
    '```\\nprint(1 &lt; 2)\\n```'
    """
    env: dict[str, Any] = {} if final else {_GROWING: None}
    tokens = _PARSER.parse(markdown, env)
    growing = None if final else _last_inline(tokens)
    return _inert_mrkdwn(_Renderer(growing).document(SyntaxTreeNode(tokens)).strip("\n"))


def parse(markdown: str, env: dict[str, Any] | None = None) -> list[Token]:
    """The markdown-it token stream :func:`to_mrkdwn` renders (splitting reads block maps).

    ``env`` receives markdown-it's side results, e.g. ``env["references"]``.

    >>> [t.type for t in parse("# Hi")]
    ['heading_open', 'inline', 'heading_close']
    """
    return _PARSER.parse(markdown, {} if env is None else env)


# --- parser --------------------------------------------------------------------------------

# env key: present when rendering a possible prefix; set to the source of the inline text that is
# still being written, so the partial-Markdown rules below touch only that text.
_GROWING = "mrkdwn_growing"


def _find_growing_text(state: StateCore) -> None:
    if _GROWING in state.env:
        token = _last_inline(state.tokens)
        state.env[_GROWING] = None if token is None else token.content


def _is_growing(state: StateInline) -> bool:
    return state.src is state.env.get(_GROWING)


def _newline_with_position(state: StateInline, silent: bool) -> bool:
    """CommonMark's line-break rule, also recording where in the inline source the break is."""
    position = state.pos
    if not _commonmark_newline(state, silent):
        return False
    if not silent:
        state.tokens[-1].meta["src_pos"] = position
    return True


def _bare_url(state: StateInline, silent: bool) -> bool:
    """Turn ``http(s)://…`` written in plain text into a link (GFM's extended autolinks).

    Triggered on the ``:`` after the scheme, like markdown-it's own linkify rule; the URL ends at
    whitespace or a bracket, minus trailing punctuation and unbalanced ``)``.
    """
    src, pos = state.src, state.pos
    if state.linkLevel > 0 or src[pos] != ":" or not src.startswith("//", pos + 1):
        return False
    scheme = next(
        (s for s in ("https", "http") if src[max(0, pos - len(s)) : pos].lower() == s), ""
    )
    start = pos - len(scheme)
    if not scheme or (start > 0 and src[start - 1].isalnum()):
        return False
    end = pos + 3
    while end < state.posMax and src[end] not in _URL_STOP:
        end += 1
    while end > pos + 3:
        if src[end - 1] in _URL_TRAILING:
            end -= 1
        elif src[end - 1] == ")" and src.count("(", start, end) < src.count(")", start, end):
            end -= 1
        else:
            break
    if end <= pos + 3 or not src[pos + 3].isalnum():
        return False
    url = src[start:end]
    href = state.md.normalizeLink(url)
    if not state.md.validateLink(href):
        return False
    if not silent:
        pending = state.pending
        if pending[len(pending) - len(scheme) :].lower() != scheme:
            return False  # the scheme did not come from plain text (an entity or escape)
        state.pending = pending[: len(pending) - len(scheme)]
        token = state.push("link_open", "a", 1)
        token.attrs = {"href": href}
        token.markup, token.info = "linkify", "auto"
        state.push("text", "", 0).content = state.md.normalizeLinkText(url)
        token = state.push("link_close", "a", -1)
        token.markup, token.info = "linkify", "auto"
    state.pos = end
    return True


def _dangling_link(state: StateInline, silent: bool) -> bool:
    """Mark a link or image cut off by the end of the inline text: ``[text``, ``[text]``, ``[text](htt``.

    Runs after the real link rules, so it only sees brackets that did not form a link. The label
    is wrapped in ``mrkdwn_dangling_open/close`` tokens; the renderer decides whether it is a link
    still being written (show the label) or literal brackets (show them).
    """
    src, pos, maximum = state.src, state.pos, state.posMax
    if not _is_growing(state):
        return False
    image = src[pos] == "!"
    bracket = pos + 1 if image else pos
    if bracket >= maximum or src[bracket] != "[":
        return False
    label_end = state.md.helpers.parseLinkLabel(state, bracket)
    if label_end < 0:
        if src.find("]", bracket + 1, maximum) >= 0:
            return False
        closed = paren = False
        label_stop = resume = maximum
    else:
        closed, label_stop = True, label_end
        paren = label_end + 1 < maximum and src[label_end + 1] == "("
        if paren and src.find(")", label_end + 2, maximum) >= 0:
            return False
        if not paren and label_end + 1 < maximum:
            return False
        resume = label_end + 2 if paren else label_end + 1
    if not silent:
        seen = _seen(state)
        if seen is not None:
            seen.append(_Seen(src, "dangling", pos))
        token = state.push("mrkdwn_dangling_open", "", 1)
        token.meta = {"image": image, "closed": closed, "paren": paren}
        state.pos, state.posMax = bracket + 1, label_stop
        state.md.inline.tokenize(state)
        state.posMax = maximum
        state.push("mrkdwn_dangling_close", "", -1)
    state.pos = resume
    return True


def _flag_unmatched_delimiters(state: StateInline) -> None:
    """Keep emphasis markers that found no partner as their own token type.

    Otherwise they merge into the surrounding text, and the renderer could not tell a stray
    ``**`` of an unfinished ``**bold`` from the letters around it.
    """
    if not _is_growing(state):
        return
    for delimiter in state.delimiters:
        token = state.tokens[delimiter.token]
        marker = chr(delimiter.marker)
        if token.type == "text" and token.content and token.content.strip(marker) == "":
            token.type = "mrkdwn_delim"
            token.meta = {"open": delimiter.open, "close": delimiter.close}


def _build_parser() -> MarkdownIt:
    # maxNesting: markdown-it drops what lies deeper; 20 (CommonMark preset) is reachable.
    options = {"html": False, "tasklists": True, "alerts": True, "maxNesting": 100}
    md = MarkdownIt("commonmark", options)
    md.enable(["table", "strikethrough"])
    md.core.ruler.after("block", "mrkdwn_growing", _find_growing_text)
    md.inline.ruler.at("newline", _newline_with_position)
    md.inline.ruler.before("newline", "mrkdwn_bare_url", _bare_url)
    md.inline.ruler.after("image", "mrkdwn_dangling_link", _dangling_link)
    md.inline.ruler2.before("fragments_join", "mrkdwn_unmatched", _flag_unmatched_delimiters)
    return md


_PARSER = _build_parser()


def _last_inline(tokens: list[Token]) -> Token | None:
    """The inline text the model is still writing: the last one, if nothing follows it (but
    the empty cells markdown-it adds to complete a table row being written)."""
    empty_cell = False
    for index in range(len(tokens) - 1, -1, -1):
        token = tokens[index]
        if token.type == "inline":
            if token.content or index == 0 or tokens[index - 1].type not in ("td_open", "th_open"):
                return token
            empty_cell = True
        elif empty_cell and token.type in ("td_open", "th_open"):
            empty_cell = False
        elif token.nesting >= 0:
            return None  # a code block, rule or empty container comes after all text
    return None


# --- rendering -----------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Mark:
    """One emphasis marker in rendered inline text, kept only if Slack will honour it."""

    char: str
    opening: bool
    partner: _Mark | None = None
    keep: bool = True


_Piece = str | _Mark


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _break_fences(text: str) -> str:
    """Keep literal runs of backticks from opening or closing a Slack code block."""
    if _FENCE not in text:
        return text
    return _BACKTICK_RUN.sub(lambda run: _ZERO_WIDTH_SPACE.join(run.group()), text)


def _code_block(content: str) -> str:
    body = content[:-1] if content.endswith("\n") else content
    if not body.strip():
        return ""  # an empty block (often a fence just opened mid-stream) shows nothing useful
    return f"{_FENCE}\n{_break_fences(_escape(body))}\n{_FENCE}"


def _code_span(content: str) -> str:
    if not content.strip():
        return _escape(content)
    # A backtick would end Slack's code span early; U+02CB looks the same.
    return "`" + _escape(content.replace("`", "ˋ")) + "`"


def _link_url(href: str) -> str | None:
    """``href`` escaped for ``<url|label>``, or ``None`` if it must not become a Slack link."""
    if not href.lower().startswith(_LINK_SCHEMES):
        return None
    if any(ch in "<>|" or ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in href):
        return None
    return _escape(href)


def _link(href: str, label: str, *, show_unsafe_href: bool = True, auto: bool = False) -> str:
    """A Slack link; ``auto``: an autolink or bare URL, whose label is the URL itself."""
    label = " ".join(label.split())
    url = _link_url(href)
    if url is None:
        text = _escape(label)
        if show_unsafe_href and href and not href.startswith("#") and href != label:
            text = f"{text} ({_escape(href)})" if text else _escape(href)
        return text
    if not label or label == href:
        return f"<{url}>"
    if disguised(label, href):
        # Slack shows a ``<url>`` link as the URL itself: the one thing the model cannot dress up.
        return f"<{url}>" if auto else f"{_escape(label)} (<{url}>)"
    return f"<{url}|{_escape(label)}>"


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line if line else line for line in text.split("\n"))


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.split("\n"))


def _as_int(value: object, default: int) -> int:
    return value if isinstance(value, int) else default


def _is_blocking(neighbour: str, mark: str) -> bool:
    """Whether a character next to a marker stops Slack from reading it as formatting."""
    return bool(neighbour) and (neighbour.isalnum() or neighbour == mark)


def _unfinished_markers(nodes: list[SyntaxTreeNode]) -> set[int]:
    """Indices of the emphasis markers still being typed: openers without a closer yet, and
    any marker after the last text (``foo *``)."""
    last_text = -1
    for index, node in enumerate(nodes):
        if node.type not in ("mrkdwn_delim", "softbreak", "hardbreak") and (
            node.type != "text" or node.content.strip()
        ):
            last_text = index
    return {
        index
        for index, node in enumerate(nodes)
        if node.type == "mrkdwn_delim"
        and (index > last_text or (node.meta.get("open") and not node.meta.get("close")))
    }


def _resolve_marks(pieces: list[_Piece]) -> str:
    """Join rendered inline pieces, keeping only emphasis markers Slack will honour."""
    items = [p for p in pieces if not isinstance(p, str) or p]
    count = len(items)
    before, after, texts_before = [""] * count, [""] * (count + 1), [0] * (count + 1)
    last = ""
    for i, item in enumerate(items):
        before[i] = last
        texts_before[i + 1] = texts_before[i]
        if isinstance(item, str):
            last = item[-1]
            texts_before[i + 1] += not item.isspace()
    following = ""
    for i in range(count - 1, -1, -1):
        after[i] = following
        item = items[i]
        if isinstance(item, str):
            following = item[0]
    position = {id(item): i for i, item in enumerate(items) if isinstance(item, _Mark)}
    for i, item in enumerate(items):
        if not isinstance(item, _Mark) or not item.opening or item.partner is None:
            continue
        j = position[id(item.partner)]
        item.keep = item.partner.keep = (
            texts_before[j] > texts_before[i + 1]
            and not _is_blocking(before[i], item.char)
            and not _is_blocking(after[j], item.char)
            and not after[i].isspace()
            and not before[j].isspace()
        )
    _order_nested_marks(items, position)
    return "".join(p if isinstance(p, str) else p.char if p.keep else "" for p in items)


def _order_nested_marks(items: list[_Piece], position: dict[int, int]) -> None:
    """Rewrite directly nested markers (``_*x*_``) in a fixed order (``*_x_*``)."""
    run: list[_Mark] = []
    for item in [*items, ""]:
        if isinstance(item, _Mark) and not item.keep:
            continue
        if isinstance(item, _Mark) and item.opening and item.partner is not None:
            run.append(item)
            continue
        if len(run) > 1:
            closers = [position[id(m.partner)] for m in run]
            between = items[min(closers) : max(closers) + 1]
            if closers == sorted(closers, reverse=True) and not any(
                isinstance(p, str) for p in between
            ):
                chars = sorted((m.char for m in run), key=_MARK_ORDER.__getitem__)
                for mark, char in zip(run, chars, strict=True):
                    mark.char = char
                    if mark.partner is not None:
                        mark.partner.char = char
        run = []


class _Renderer:
    """Walks one parsed document; ``growing`` is the inline text still being written, if any."""

    def __init__(self, growing: Token | None) -> None:
        self._growing = growing

    # blocks

    def document(self, root: SyntaxTreeNode) -> str:
        return self._blocks(root.children, depth=0)

    def _blocks(self, nodes: list[SyntaxTreeNode], depth: int) -> str:
        rendered = (self._block(node, depth) for node in nodes)
        return "\n\n".join(text for text in rendered if text)

    def _block(self, node: SyntaxTreeNode, depth: int) -> str:
        kind = node.type
        if kind == "paragraph":
            return self._inline(node.children[0]).rstrip() if node.children else ""
        if kind == "heading":
            text = self._inline(node.children[0], bold=True).strip() if node.children else ""
            return f"*{text}*" if text.strip() else ""
        if kind in ("bullet_list", "ordered_list"):
            return self._list(node, depth)
        if kind == "blockquote":
            return _quote(self._blocks(node.children, depth))
        if kind == "alert":
            title = f"*{str(node.meta.get('kind', 'note')).capitalize()}*"
            body = self._blocks([n for n in node.children if n.type != "alert_title"], depth)
            return _quote(f"{title}\n{body}" if body else title)
        if kind in ("fence", "code_block"):
            return _code_block(node.content)
        if kind == "table":
            return self._table(node)
        if kind == "hr":
            return _RULE
        if node.children:
            return self._blocks(node.children, depth)
        return _escape(node.content.strip("\n"))

    def _list(self, node: SyntaxTreeNode, depth: int) -> str:
        ordered = node.type == "ordered_list"
        start = _as_int(node.attrGet("start"), 1)
        loose = any(
            child.type == "paragraph" and not child.hidden
            for item in node.children
            for child in item.children
        )
        separator = "\n\n" if loose else "\n"
        indent = "    " * depth
        items = []
        for number, item in enumerate(node.children, start):
            marker = f"{number}." if ordered else _BULLETS[depth % len(_BULLETS)]
            checked = item.meta.get("checked")
            if isinstance(checked, bool):
                box = _TASK_BOXES[checked]
                marker = f"{marker} {box}" if ordered else box
            lead = f"{indent}{marker} "
            parts = []
            for child in item.children:
                if child.type in ("bullet_list", "ordered_list"):
                    parts.append(self._list(child, depth + 1))
                elif child.type in ("fence", "code_block", "table"):
                    parts.append(self._block(child, depth + 1))  # fences stay at the margin
                else:
                    parts.append(_indent(self._block(child, depth + 1), " " * len(lead)))
            body = separator.join(part for part in parts if part)
            if body.startswith(" " * len(lead)):  # text, or a list nested right away
                items.append(lead + body.lstrip(" "))
            else:
                items.append(lead.rstrip() + ("\n" + body if body else ""))
        return separator.join(items)

    def _table(self, node: SyntaxTreeNode) -> str:
        rows: list[list[str]] = []
        aligns: list[str] = []
        for section in node.children:
            for row in section.children:
                cells = []
                for cell in row.children:
                    if not rows:
                        aligns.append(str(cell.attrGet("style") or ""))
                    inline = cell.children[0] if cell.children else None
                    growing = inline is not None and inline.token is self._growing
                    text = self._plain(inline, growing=growing) if inline else ""
                    cells.append(" ".join(text.split()))
                rows.append(cells)
        if not rows:
            return ""
        columns = max(len(row) for row in rows)
        aligns += [""] * (columns - len(aligns))
        rows = [row + [""] * (columns - len(row)) for row in rows]
        widths = [max(1, *(len(row[c]) for row in rows)) for c in range(columns)]

        def line(cells: list[str]) -> str:
            out = []
            for cell, width, align in zip(cells, widths, aligns, strict=True):
                if align.endswith("right"):
                    out.append(cell.rjust(width))
                elif align.endswith("center"):
                    out.append(cell.center(width))
                else:
                    out.append(cell.ljust(width))
            return " | ".join(out).rstrip()

        lines = [line(rows[0]), "-+-".join("-" * w for w in widths)]
        lines += [line(row) for row in rows[1:]]
        return _code_block("\n".join(lines))

    # inline

    def _inline(self, node: SyntaxTreeNode, *, bold: bool = False) -> str:
        pieces: list[_Piece] = []
        growing = node.token is not None and node.token is self._growing
        active = frozenset("*") if bold else frozenset()
        self._walk(node.children, pieces, active, growing=growing, top=True, flat=bold)
        return _break_fences(_resolve_marks(pieces))

    def _walk(
        self,
        nodes: list[SyntaxTreeNode],
        pieces: list[_Piece],
        active: frozenset[str],
        *,
        growing: bool,
        top: bool,
        flat: bool,
    ) -> None:
        hidden = _unfinished_markers(nodes) if growing and top else set()
        for index, node in enumerate(nodes):
            kind = node.type
            if kind in ("text", "text_special", "html_inline"):
                pieces.append(_escape(node.content))
            elif kind in ("softbreak", "hardbreak"):
                pieces.append(" " if flat or active else "\n")
            elif kind == "code_inline":
                pieces.append(_code_span(node.content))
            elif kind in _STYLE_MARKS:
                char = _STYLE_MARKS[kind]
                if char in active:
                    self._walk(node.children, pieces, active, growing=growing, top=False, flat=flat)
                    continue
                opening, closing = _Mark(char, True), _Mark(char, False)
                opening.partner, closing.partner = closing, opening
                pieces.append(opening)
                inner = active | {char}
                self._walk(node.children, pieces, inner, growing=growing, top=False, flat=flat)
                pieces.append(closing)
            elif kind == "link":
                href, auto = str(node.attrGet("href") or ""), node.info == "auto"
                pieces.append(_link(href, self._plain(node), auto=auto))
            elif kind == "image":
                src = str(node.attrGet("src") or "")
                pieces.append(_link(src, self._plain(node), show_unsafe_href=False))
            elif kind == "mrkdwn_delim":
                if index not in hidden:
                    pieces.append(_escape(node.content))
            elif kind == "mrkdwn_dangling":
                if growing:
                    pieces.append(_escape(" ".join(self._plain(node).split())))
                    break  # what follows is the unfinished destination
                meta = node.meta
                pieces.append("![" if meta.get("image") else "[")
                self._walk(node.children, pieces, active, growing=False, top=False, flat=flat)
                pieces.append(
                    ("]" if meta.get("closed") else "") + ("(" if meta.get("paren") else "")
                )
            elif node.children:
                self._walk(node.children, pieces, active, growing=growing, top=False, flat=flat)
            else:
                pieces.append(_escape(node.content))

    def _plain(self, node: SyntaxTreeNode, *, growing: bool = False) -> str:
        """Unescaped text of an inline subtree: link labels, image alt text, table cells."""
        out = []
        hidden = _unfinished_markers(node.children) if growing else set()
        for index, child in enumerate(node.children):
            kind = child.type
            if index in hidden:
                continue
            if kind in ("softbreak", "hardbreak"):
                out.append(" ")
            elif kind == "link":
                label, href = self._plain(child), str(child.attrGet("href") or "")
                show = href and not href.startswith("#") and href != label
                out.append(f"{label} ({href})" if show and label else label or href)
            elif kind == "mrkdwn_dangling":
                if growing:
                    out.append(self._plain(child))
                    break
                meta = child.meta
                out.append("![" if meta.get("image") else "[")
                out.append(self._plain(child))
                out.append(("]" if meta.get("closed") else "") + ("(" if meta.get("paren") else ""))
            elif child.children:
                out.append(self._plain(child))
            else:
                out.append(child.content)
        return "".join(out)


# --- links that cannot lie, mentions that cannot ping ---------------------------------------

# A word of a link label that names a place: a URL with a scheme, ``mailto:``, an e-mail address
# or a bare domain (``good.com``, ``www.good.com/x``, ``good.com:8080``). The last label of a
# domain is letters (of any script) or punycode, so ``v1.2`` and ``e.g.`` are not domains;
# ``Node.js`` and ``main.py`` are, and cost only a visible host (see :func:`disguised`).
_DOMAIN = r"(?:[^\W_](?:[\w-]*[^\W_])?\.)+(?:[^\W\d_]{2,}|xn--[a-z0-9-]+)\.?"
_DOMAIN_WORD = re.compile(rf"({_DOMAIN})(?::\d+)?(?:[/?#]\S*)?", re.IGNORECASE)
_EMAIL_WORD = re.compile(rf"[^\s@<>()\[\]]+@{_DOMAIN}", re.IGNORECASE)
_SCHEME_URL = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_WORD_EDGES = "\"'()[]{}<>.,;:!?*_~`"
_WORD_GLUE = re.compile(r"[\s\[\](){}<>*`\"'|!^~]+")  # what no host or address contains

# Neutralising: U+2060 WORD JOINER goes right after the ``@`` of ``@here``, ``@channel`` and
# ``@everyone`` (and after the ``<`` of ``<!here>``, ``<@U1>``, ``<#C1>``, ``<!subteam^S1>``).
# It is invisible and, unlike a zero-width space, no line-break opportunity, and unlike a
# zero-width joiner it joins nothing (emoji), so the text reads and wraps exactly as written —
# but Slack no longer finds the keyword right after the ``@`` (or the token right after ``<``).
# Not when the ``@`` follows a letter, digit, ``/`` or ``.`` (``me@here.io``, ``x.io/@here``).
_WORD_JOINER = "\u2060"
_BROADCAST = re.compile(r"(?<![^\W_])(?<![/.])@(?=here|channel|everyone)", re.IGNORECASE)
_SPECIAL_TOKEN = re.compile(r"(?:<|&lt;?+|&#0*60;?+|&#x0*3c;?+)(?=[!@#])", re.IGNORECASE)


def _host(name: str) -> str:
    """A host as compared: lower case, IDNA (punycode), no trailing dot, no ``www.``."""
    host = name.lower().rstrip(".")
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        pass
    return host.removeprefix("www.")


def _address(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local.lower()}@{_host(domain)}"


def _claims(label: str) -> list[tuple[str, str]]:
    """What a label says it points at, per word: ("host", name) or ("email", address)."""
    claims = []
    for raw in _WORD_GLUE.split(label):
        word = raw.strip(_WORD_EDGES)
        if word.lower().startswith("mailto:"):
            claims.append(("email", unquote(word[7:].split("?", 1)[0])))
        elif _SCHEME_URL.match(word):
            try:
                host = urlsplit(word).hostname or ""
            except ValueError:
                host = ""
            claims.append(("host", host))
        elif _EMAIL_WORD.fullmatch(word):
            claims.append(("email", word))
        elif match := _DOMAIN_WORD.fullmatch(word):
            claims.append(("host", match.group(1)))
    return claims


def disguised(label: str, href: str) -> bool:
    """Whether a link's visible ``label`` names another place than ``href`` goes to.

    A label is checked when a word of it looks like a URL, a domain or an e-mail address: each
    such word must name the target's host (case, a trailing dot and ``www.`` aside) — or, for an
    address, the ``mailto:`` target's address. A label that spells a host in another script
    than the target's punycode (``gооgle.com`` with Cyrillic o's) counts as disguised too, so the
    user sees the ``xn--`` form. Labels that name nothing (``docs``, ``click here``) are fine.

    >>> disguised("https://good.com", "https://evil.com"), disguised("GOOD.com/x", "https://good.com")
    (True, False)
    """
    claims = _claims(label)
    if not claims:
        return False
    if href.lower().startswith("mailto:"):
        address = unquote(href[7:].split("?", 1)[0])
        target_address = _address(address) if "@" in address else ""
        target_host = target_address.rpartition("@")[2]
    else:
        target_address = ""
        try:
            target_host = _host(urlsplit(href).hostname or "")
        except ValueError:
            target_host = ""
    for kind, claim in claims:
        if not claim.isascii():
            return True
        if kind == "email":
            if not target_address or _address(claim) != target_address:
                return True
        elif not target_host or _host(claim) != target_host:
            return True
    return False


def neutralise_mentions(text: str, before: str = "") -> str:
    """``text`` with no ``@here``/``@channel``/``@everyone`` and no ``<!…>``, ``<@…>``, ``<#…>``
    (also written with ``&lt;``) left for Slack to act on; ``before``: the text preceding it.

    >>> neutralise_mentions("@here, <!channel> me@here.io") == "@\\u2060here, <\\u2060!channel> me@here.io"
    True
    """
    context = before[-8:]
    whole = context + text
    cuts = sorted(
        match.end()
        for pattern in (_BROADCAST, _SPECIAL_TOKEN)
        for match in pattern.finditer(whole)
        if match.end() >= len(context)
    )
    if not cuts:
        return text
    out, last = [], len(context)
    for cut in cuts:
        out.append(whole[last:cut])
        last = cut
    out.append(whole[last:])
    return _WORD_JOINER.join(out)


def _inert_mrkdwn(out: str) -> str:
    """Rendered mrkdwn with every ``@here``/``@channel``/``@everyone`` neutralised, outside the
    links' URLs (every ``<`` left in ``out`` opens a link this module wrote)."""
    if "@" not in out:
        return out
    parts = re.split(r"(<[^<>]*>)", out)
    for index, part in enumerate(parts):
        if index % 2 == 0:
            parts[index] = _BROADCAST.sub("@" + _WORD_JOINER, part)
        elif "|" in part:
            url, label = part[1:-1].split("|", 1)
            parts[index] = f"<{url}|{_BROADCAST.sub('@' + _WORD_JOINER, label)}>"
    return "".join(parts)


# --- Markdown for Slack's native streams -----------------------------------------------------
#
# A native stream sends the model's Markdown itself (``markdown_text``), and Slack only ever
# appends: text sent cannot be taken back. :func:`guard_markdown` therefore decides, for the
# text about to be appended, what Slack may see of it:
#
# * a link or image whose label names another place than its target (see :func:`disguised`)
#   becomes ``label (<target>)``: the label as plain text, the real target as an autolink,
#   which Slack shows as the URL itself;
# * a reference-style link (``[label][ref]``, ``[label]``) becomes an inline link to the target
#   markdown-it resolved, so a definition Slack reads differently (or one still being written)
#   cannot retarget it; a bracket pair that is not a link is escaped (``\[a\]``, shown as
#   ``[a]``), so no definition or bracket arriving later can turn it into one;
# * every ``<`` that does not open an autolink is followed by a word joiner, so nothing the
#   model writes becomes Slack's own ``<url|label>`` or ``<!here>``; a ``|`` inside an autolink
#   is percent-encoded;
# * mentions are neutralised as in mrkdwn (:func:`neutralise_mentions`);
# * what could still change meaning when more text comes — an unfinished link (``[text](htt``),
#   ``<…`` without its ``>``, a definition on the last line, a trailing ``!``, run of backticks
#   (its length decides which code span it closes), ``@ev`` or ``&l`` — is
#   held back until it is complete (an unfinished link label longer than ``_HOLD_LABEL`` is let
#   go as literal text instead: its ``[`` escaped).
#
# The text is read as Slack reads the message: what it shows already (the guard's earlier
# output, rewrites included), then the new text. Slack's ``markdown_text`` is taken to be
# standard Markdown (CommonMark with GFM tables), as its documentation says. Each rewrite only
# makes text more literal or is a complete construct of its own, so what was sent stays correct
# whatever follows. The parser's view of the source (block maps, and inline positions the
# guard's rules record) locates each construct in the text; where it cannot (rare layouts, e.g.
# an escaped ``|`` in a table cell holding a link), or where a link turns out to have begun in
# text already shown (which the holds exist to prevent), :class:`UnsafeMarkdown` tells the
# caller to show the answer some other way (bot/render/native.py: the edit renderer).


class UnsafeMarkdown(Exception):
    """:func:`guard_markdown` could not place a rewrite the text needs."""


_SPANS = "guard_spans"  # env key: the list the guard's inline rules record into
_HOLD_LABEL = 1000  # characters an unfinished link label may be held back, at most
_PARTIAL_TAIL = re.compile(r"(?:!|`+|@[A-Za-z]{0,8}|&[#\w]{0,7}|<[^\s<>]{0,300})?\Z")
_LINKISH = re.compile(r"[\[\]<]")
_MD_SPECIAL = re.compile(r"([\\`\[\]<>|])")
_ENTITY_LT = re.compile(r"(?:&lt;?+|&#0*60;?+|&#x0*3c;?+)(?=[^\s\u2060])", re.IGNORECASE)
_REFERENCE_TAIL = re.compile(r"\[[^\]]*\]?\Z")


@dataclass(slots=True)
class _Seen:
    """A construct the guard's inline rules found, at positions of the inline source ``src``."""

    src: str
    kind: str  # link, image, bracket, autolink, lt, dangling
    start: int
    end: int = 0  # past the construct; for a bracket pair: the position of its ``]``
    label_end: int = 0  # the position of a link's ``]``
    token: Token | None = None
    label: str = ""
    nested: bool = False  # a link whose label holds an image or autolink


def _seen(state: StateInline) -> list[_Seen] | None:
    seen = state.env.get(_SPANS)
    return seen if isinstance(seen, list) else None


def _tokens_text(tokens: list[Token] | None) -> str:
    """The plain text of inline tokens (a link label, image alt text)."""
    out = []
    for token in tokens or []:
        if token.type in ("softbreak", "hardbreak"):
            out.append(" ")
        elif token.type == "image":
            out.append(_tokens_text(token.children))
        elif token.type in ("text", "text_special", "code_inline", "html_inline"):
            out.append(token.content)
    return "".join(out)


def _guard_link(state: StateInline, silent: bool) -> bool:
    seen = _seen(state)
    if seen is None or silent or state.src[state.pos] != "[":
        return False
    start, count = state.pos, len(state.tokens)
    label_end = state.md.helpers.parseLinkLabel(state, start, True)
    if _commonmark_link(state, False):
        index = next(i for i in range(count, len(state.tokens)) if state.tokens[i].nesting == 1)
        token, inner = state.tokens[index], state.tokens[index + 1 : -1]
        nested = any(t.type in ("image", "link_open") for t in inner)
        seen.append(
            _Seen(
                state.src, "link", start, state.pos, label_end, token, _tokens_text(inner), nested
            )
        )
        return True
    if state.linkLevel == 0:
        close = state.md.helpers.parseLinkLabel(state, start)
        if close >= 0:
            seen.append(_Seen(state.src, "bracket", start, close))
        elif _is_growing(state):  # may still close into a link (``[![x](y)`` too)
            seen.append(_Seen(state.src, "dangling", start))
    return False


def _guard_image(state: StateInline, silent: bool) -> bool:
    seen = _seen(state)
    src, start = state.src, state.pos
    if seen is None or silent or not src.startswith("![", start):
        return False
    label_end = state.md.helpers.parseLinkLabel(state, start + 1)
    if not _commonmark_image(state, False):
        if label_end < 0 and state.linkLevel == 0 and _is_growing(state):
            seen.append(_Seen(src, "dangling", start))
        return False
    token = state.tokens[-1]
    seen.append(
        _Seen(src, "image", start, state.pos, label_end, token, _tokens_text(token.children))
    )
    return True


def _guard_autolink(state: StateInline, silent: bool) -> bool:
    seen = _seen(state)
    if seen is None or silent or state.src[state.pos] != "<":
        return False
    start = state.pos
    if _commonmark_autolink(state, False):
        seen.append(_Seen(state.src, "autolink", start, state.pos))
        return True
    seen.append(_Seen(state.src, "lt", start))
    return False


def _guard_escaped_lt(state: StateInline, silent: bool) -> bool:
    """``\\<`` is a literal ``<`` in Markdown; Slack might not read the escape: neutralise it."""
    seen = _seen(state)
    if seen is not None and not silent and state.src.startswith("\\<", state.pos):
        seen.append(_Seen(state.src, "lt", state.pos + 1))
    return False


def _build_guard_parser() -> MarkdownIt:
    md = _build_parser()
    md.options["store_labels"] = True  # a reference link's label, to spot one still defined
    # A bare URL shows itself; read as Slack's GFM does, text escapes come first.
    md.disable("mrkdwn_bare_url")
    md.inline.ruler.before("link", "guard_link", _guard_link)
    md.inline.ruler.before("image", "guard_image", _guard_image)
    md.inline.ruler.before("autolink", "guard_autolink", _guard_autolink)
    md.inline.ruler.before("escape", "guard_escaped_lt", _guard_escaped_lt)
    return md


def _md_text(text: str) -> str:
    """Plain text as Markdown that forms no link, code span or table cell."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def _md_url(href: str) -> str:
    """``href`` (normalized: percent-encoded) safe inside ``<…>`` and ``(…)``."""
    for char, code in (("|", "%7C"), ("(", "%28"), (")", "%29"), ("<", "%3C"), (">", "%3E")):
        href = href.replace(char, code)
    return "".join(
        ch if ch.isprintable() and not ch.isspace() else f"%{ord(ch):02X}" for ch in href
    )


class _Source:
    """Where the inline sources of a parsed document lie in the document's text."""

    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line) + 1)
        self._cells: dict[int, int] = {}  # line → where the next table cell's search starts

    def locator(self, token: Token, *, cell: bool) -> Callable[[int], int] | None:
        """Document offset of each position of ``token.content``; None when it cannot be
        placed. Table cells must be asked for in order (each is searched after the last)."""
        if not token.map:
            return None
        segment_starts: list[int] = []
        text_starts: list[int] = []
        offset = 0
        for index, segment in enumerate(token.content.split("\n")):
            number = token.map[0] + index
            if number >= len(self.lines):
                return None
            line = self.lines[number]
            core = segment.lstrip(" \t")
            lead = len(segment) - len(core)
            if cell:
                column = line.find(core, self._cells.get(number, 0)) if "|" not in core else -1
                if column < 0:
                    self._cells[number] = len(line)  # cells after an unplaceable one: unplaced
                    return None
                self._cells[number] = column + len(core)
            else:
                column = line.rfind(core) if core else 0
                if column < 0:
                    return None
            segment_starts.append(offset)
            text_starts.append(self.starts[number] + column - lead)
            offset += len(segment) + 1

        def at(position: int) -> int:
            index = bisect_right(segment_starts, position) - 1
            return text_starts[index] + position - segment_starts[index]

        return at


def guard_markdown(shown: str, pending: str, *, final: bool = False) -> tuple[str, int]:
    """What Slack's ``markdown_text`` may show of the model's Markdown ``pending``, appended to
    ``shown`` (what the message shows already: earlier results of this function): ``(text,
    used)``, where ``text`` stands for the first ``used`` characters of ``pending`` and the rest
    must wait for more text (``final=True``: there is no more, nothing waits). See the comment
    above. Raises :class:`UnsafeMarkdown`.

    >>> guard_markdown("", "See [https://good.com](https://evil.com) and [docs](https://x.io/d")
    ('See https://good.com (<https://evil.com>) and ', 45)
    """
    return MarkdownGuard().take(shown, pending, final=final)


class MarkdownGuard:
    """:func:`guard_markdown` for one message that only grows: each call reads the text again
    only from the start of its last top-level block (the blocks before it are closed, and more
    text cannot change them), with the link definitions found before it, so streaming a long
    answer costs time linear in its length rather than quadratic.

        guard = MarkdownGuard()
        text, used = guard.take(shown, pending)     # then: shown += text; pending = pending[used:]
    """

    def __init__(self) -> None:
        self._restart = 0  # where the last top-level block begins (offset in the message)
        self._references: dict[str, Any] = {}  # definitions before it

    def take(self, shown: str, pending: str, *, final: bool = False) -> tuple[str, int]:
        """See :func:`guard_markdown`; ``shown`` must extend the one of earlier calls.

        The text is read as Slack reads it — what it shows, then what would come — so a
        rewrite made earlier (an escaped bracket turning a half-written definition into
        text, say) is the context the rest is judged in."""
        if not pending:
            return "", 0
        tail = None if final else _PARTIAL_TAIL.search(pending)
        held = len(tail.group()) if tail else 0
        if not _LINKISH.search(pending):
            used = len(pending) - held
            return _inert_markdown(pending[:used], shown), used
        if self._restart > len(shown):  # not the message this guard has seen: start over
            self._restart, self._references = 0, {}
        restart = self._restart
        base = len(shown) - restart
        # The held tail is left out of the reading too: what goes out now must not depend on
        # how it ends (a lone backtick would close a code span that three might not).
        ready = pending[: len(pending) - held]
        text = (shown[restart:] + ready).replace("\r", " ").replace("\0", "\ufffd")
        env: dict[str, Any] = {_SPANS: [], "references": dict(self._references)}
        if not final:
            env[_GROWING] = None
        tokens = _GUARD_PARSER.parse(text, env)
        source = _Source(text)
        out, used = _guard(text, base, len(text), tokens, env, source, final=final)
        # The next call starts at the last top-level block that begins in what is shown now
        # (past it, what this call sends differs from ``pending``).
        starts = [
            source.starts[token.map[0]]
            for token in tokens
            if token.level == 0 and token.nesting >= 0 and token.map
        ]
        begin = max((start for start in starts if start <= base), default=0)
        if begin:
            for label, ref in (env.get("references") or {}).items():
                lines = ref.get("map")
                if lines is None or source.starts[lines[1]] <= begin:
                    self._references.setdefault(label, {k: ref[k] for k in ("href", "title")})
            self._restart = restart + begin
        return _inert_markdown(out, shown), used


def _guard(
    text: str,
    base: int,
    end: int,
    tokens: list[Token],
    env: dict[str, Any],
    source: _Source,
    *,
    final: bool,
) -> tuple[str, int]:
    """The rewritten ``text[base:stop]`` and ``stop - base``, where ``stop <= end`` is where
    what may go out now ends."""
    holds = [end]
    # A definition on the last line may still be growing: hold it, and links that use it.
    growing_refs: set[str] = set()
    if not final and not text.endswith("\n"):
        last = len(source.lines) - 1
        for label, ref in (env.get("references") or {}).items():
            lines = ref.get("map") or (0, 0)
            if lines[0] <= last < lines[1]:
                growing_refs.add(label)
                if source.starts[lines[0]] >= base:
                    holds.append(source.starts[lines[0]])
    by_src: dict[int, list[_Seen]] = {}
    for item in env[_SPANS]:
        by_src.setdefault(id(item.src), []).append(item)
    edits: list[tuple[int, int, str]] = []
    in_cell = False
    growing = None if final else _last_inline(tokens)
    for token in tokens:
        if token.type in ("th_open", "td_open"):
            in_cell = True
        elif token.type in ("th_close", "td_close"):
            in_cell = False
        if token.type != "inline" or not token.content:
            continue
        # (A one-character source may be shared by several tokens: its records then apply to
        # each, which can only hold back more than needed.)
        found = by_src.get(id(token.content))
        at = source.locator(token, cell=in_cell) if found or in_cell else None
        if not found:
            continue
        if at is None:
            raise UnsafeMarkdown("a construct could not be placed in the source")
        for item in found:
            _guard_one(item, at, text, base, token is growing, growing_refs, edits, holds)
    stop = min(hold for hold in holds if hold >= base)
    out: list[str] = []
    position = base
    for start, end_, replacement in sorted(set(edits), key=lambda e: (e[0], -e[1])):
        if start < position or start >= stop:
            continue  # inside a construct rewritten whole, or held back
        if end_ > stop:
            stop = start
            break
        out += (text[position:start], replacement)
        position = end_
    out.append(text[position:stop])
    return "".join(out), stop - base


def _guard_one(
    item: _Seen,
    at: Callable[[int], int],
    text: str,
    base: int,
    growing: bool,
    growing_refs: set[str],
    edits: list[tuple[int, int, str]],
    holds: list[int],
) -> None:
    """The rewrite (or hold) one construct needs; see :func:`guard_markdown`."""
    src = item.src

    def place(position: int, expected: str) -> int:
        offset = at(position)
        if offset >= base and (offset >= len(text) or text[offset] not in expected):
            raise UnsafeMarkdown(f"expected {expected!r} at {offset}")
        return offset

    if item.kind == "dangling":
        bracket = item.start + (1 if src[item.start] == "!" else 0)
        offset = place(bracket, "[")
        if offset >= base:
            if len(text) - offset <= _HOLD_LABEL:
                start = at(item.start)  # the ``!`` of an image, if not shown yet
                holds.append(start if start >= base else offset)
            else:
                edits.append((offset, offset, "\\"))
    elif item.kind == "bracket":
        offset = place(item.end, "]")
        if offset < base:
            return
        opening = place(item.start, "[")
        if growing and _REFERENCE_TAIL.match(src, item.end + 1):
            holds.append(opening)  # ``[a][b`` may become a reference link
        else:
            # Both brackets: an unescaped ``[`` could still pair with a ``]`` written later.
            if opening >= base:
                edits.append((opening, opening, "\\"))
            edits.append((offset, offset, "\\"))
    elif item.kind == "lt":
        offset = place(item.start, "<")
        following = src[item.start + 1 : item.start + 2]
        if offset >= base and following and not following.isspace():
            edits.append((offset + 1, offset + 1, _WORD_JOINER))
    elif item.kind == "autolink":
        start = place(item.start, "<")
        end = place(item.end - 1, ">") + 1
        if start >= base and "|" in text[start:end]:
            edits.append((start, end, text[start:end].replace("|", "%7C")))
    elif item.token is not None:  # link or image
        start = place(item.start, "[!")
        end = place(item.end - 1, ")]") + 1
        if end <= base:
            return  # shown whole: decided then
        token = item.token
        href = str(token.attrGet("src" if item.kind == "image" else "href") or "")
        reference = src[item.end - 1] == "]"
        # A link around an image or autolink is shown as its text and target too: rewriting only
        # the inner one would put a link inside the outer one's label.
        lying = item.nested or disguised(item.label, href)
        if start < base:
            # Its start went out before it was complete, which the holds are there to prevent.
            if lying or reference:
                raise UnsafeMarkdown("a link began in text already shown")
            return
        if reference and (
            (growing and _may_grow_into_a_link(src, item.end))
            or (growing_refs and token.meta.get("label") in growing_refs)
        ):
            holds.append(start)
        elif lying:
            shown = _md_text(item.label)
            edits.append((start, end, f"{shown} (<{_md_url(href)}>)" if href else shown))
        elif reference:
            close = place(item.label_end, "]") + 1
            edits.append((close, end, f"({_md_url(href)})"))


def _may_grow_into_a_link(src: str, end: int) -> bool:
    """Whether a reference link ``[a]`` ending at ``end`` of the text being written may still
    become another link: ``[a](…`` (an inline link) or ``[a][b…`` (a full reference)."""
    rest = src[end:]
    return not rest or bool(_REFERENCE_TAIL.match(rest)) or (rest[0] == "(" and ")" not in rest)


def _inert_markdown(text: str, before: str) -> str:
    """Mentions neutralised, and no ``&lt;`` Slack could read as the start of a token."""
    text = neutralise_mentions(text, before)
    return _ENTITY_LT.sub(lambda m: m.group() + _WORD_JOINER, text) if "&" in text else text


_GUARD_PARSER = _build_guard_parser()
