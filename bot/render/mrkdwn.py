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
from dataclasses import dataclass
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.rules_inline import StateInline
from markdown_it.rules_inline import newline as _commonmark_newline
from markdown_it.token import Token
from markdown_it.tree import SyntaxTreeNode

__all__ = ["parse", "to_mrkdwn"]

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
    return _Renderer(growing).document(SyntaxTreeNode(tokens)).strip("\n")


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
    """The inline text the model is still writing: the last one, if nothing follows it."""
    for token in reversed(tokens):
        if token.type == "inline":
            return token
        if token.nesting >= 0:
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


def _link(href: str, label: str, *, show_unsafe_href: bool = True) -> str:
    label = " ".join(label.split())
    url = _link_url(href)
    if url is None:
        text = _escape(label)
        if show_unsafe_href and href and not href.startswith("#") and href != label:
            text = f"{text} ({_escape(href)})" if text else _escape(href)
        return text
    if not label or label == href:
        return f"<{url}>"
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
                pieces.append(_link(str(node.attrGet("href") or ""), self._plain(node)))
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
