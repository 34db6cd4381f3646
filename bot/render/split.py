"""Splitting the model's Markdown into message-sized parts: owns where a long answer is cut.

A Slack message holds about 4,000 characters of mrkdwn, so a long answer continues in further
messages. Splitting works on the Markdown *source* (what the model wrote) and measures the
*rendered* length, so every part is a self-contained Markdown text that renders on its own.

>>> split = split_point("Intro.\\n\\n" + "word " * 30, limit=100)
>>> split.head
'Intro.\\n\\n'
>>> split.tail.startswith("word word")
True
>>> parts = split_all("```python\\n" + "x = 1\\n" * 40 + "```\\n", limit=100)
>>> [part.splitlines()[0] for part in parts]
['```python', '```python', '```python']

Where a cut goes, best first (a better kind wins unless it leaves the message less than half
full while the block it would push to the next message does not fit there either):

1. between two top-level blocks (the blank line between paragraphs, lists, code blocks…);
2. between nested blocks: list items, paragraphs inside a list item or quote;
3. at a line end inside a block: between lines of a code block, between table rows, or at a
   line break of a paragraph that is not inside emphasis or a link;
4. for one enormous line: at a space, else anywhere, preferring a cut that splits no link or
   emphasis; and, only if the limit is too small for any of that (deeply nested quotes), a
   piece of the source shown as literal text.

How both sides are repaired:

* Inside a fenced code block the head gets a closing fence and the tail reopens the fence with
  the same info string (``python`` stays ``python``).
* A table cut between rows repeats its header row in the tail.
* A tail that starts inside list items or quotes opens with their markers again (``10. ``,
  ``- ``, ``> ``), so nesting, numbering and code inside an item carry on, also for text
  streamed into the tail later; the item's bullet or number shows again at the top of the new
  message. One corner loses context: a lazily numbered list (``1.`` on every item) restarts at
  the written number where the right one would be wider (``10.`` for ``1.``).
* Reference-style link definitions seen so far are repeated at the top of the tail, so
  ``[text][ref]`` keeps working in later parts; :func:`split_all` gives every part all of them.
  While streaming, a definition that arrives after a part was frozen cannot reach it: that part
  shows ``[text][ref]`` literally.

Sizes are measured with ``to_mrkdwn(part, final=True)``: render frozen parts that way.
"""

from __future__ import annotations

import bisect
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markdown_it.token import Token

from bot.render.mrkdwn import parse, to_mrkdwn

__all__ = ["MIN_LIMIT", "Split", "split_all", "split_point"]

MIN_LIMIT = 64
"""Smallest supported ``limit``: room for a code fence in a few nested quotes."""

Render = Callable[[str], str]

# A container around a cut: a block quote, or a list item as its marker padded to its
# content column ("- ", "10. ").
_QUOTE = ">"
_BLOCK_STARTS = frozenset(
    {
        "paragraph_open",
        "heading_open",
        "fence",
        "code_block",
        "hr",
        "html_block",
        "bullet_list_open",
        "ordered_list_open",
        "list_item_open",
        "blockquote_open",
        "alert_open",
        "table_open",
    }
)
_BETWEEN_TOP_BLOCKS, _BETWEEN_NESTED_BLOCKS, _INSIDE_BLOCK, _MID_LINE = 1, 2, 3, 4
_FILL = 0.5
_MARKER_CHARS = " \t>-+*.)0123456789"
_MARGIN_LINES = 2  # parsed past the window so a setext underline or table delimiter is seen
_CLEAN_TRIES = 24  # mid-line cuts checked for splitting a link or emphasis before giving up


@dataclass(frozen=True, slots=True)
class Split:
    """A long Markdown text cut in two: ``head`` is finished, ``tail`` continues the answer.

    Both are Markdown; ``head`` renders within the limit, ``tail`` may still be too long.
    """

    head: str
    tail: str


def _render_final(markdown: str) -> str:
    return to_mrkdwn(markdown, final=True)


def split_point(markdown: str, limit: int, render: Render = _render_final) -> Split | None:
    """Cut ``markdown`` at the best boundary so that ``render(head)`` has at most ``limit`` chars.

    Returns ``None`` when the whole text already fits. Line endings are normalised to ``\\n``.
    Meant for streaming: call it when the rendered buffer passes the limit, freeze ``head`` in
    the current message and carry on with ``tail`` in a new one.

    >>> split_point("short", limit=100) is None
    True
    >>> split = split_point("```js\\n" + "f();\\n" * 30, limit=80)
    >>> split.head.endswith("f();\\n```\\n"), split.tail.startswith("```js\\nf();")
    (True, True)
    """
    _check_limit(limit)
    text = _normalize(markdown)
    size = limit + limit // 4
    while True:
        window = _Window(text, size, limit, render)
        overflow = window.overflow()
        if window.complete and overflow <= 0:
            return None
        if overflow > 0:
            return window.split()
        size *= 2


def split_all(markdown: str, limit: int) -> list[str]:
    """All parts of ``markdown``, each rendering (``final=True``) to at most ``limit`` chars.

    >>> split_all("one\\n\\ntwo", limit=100)
    ['one\\n\\ntwo']
    >>> split_all("\\n\\n".join(["A paragraph of words."] * 6), limit=70)
    ['A paragraph of words.\\n\\nA paragraph of words.\\n\\nA paragraph of words.\\n\\n', \
'A paragraph of words.\\n\\nA paragraph of words.\\n\\nA paragraph of words.']
    """
    _check_limit(limit)
    text = _normalize(markdown)
    # Definitions usually come last, but earlier parts use them too: every part gets them all.
    rest = _definitions(text, before_line=None) + text
    parts: list[str] = []
    while (split := split_point(rest, limit)) is not None:
        parts.append(split.head)
        rest = split.tail
    if not parts:
        return [text]
    if _render_final(rest).strip():
        parts.append(rest)
    return parts


def _check_limit(limit: int) -> None:
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT} characters, got {limit}")


def _normalize(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _definitions(text: str, before_line: int | None, env: dict[str, object] | None = None) -> str:
    """Reference definitions as Markdown lines (plus a blank line), for the top of a tail."""
    if env is None:
        if "]:" not in text:
            return ""
        env = {}
        parse(text, env)
    references = env.get("references")
    if not isinstance(references, dict):
        return ""
    lines = []
    for label, reference in references.items():
        where = reference.get("map") or [0]
        if before_line is None or where[0] < before_line:
            # Titles are dropped: Slack links have none. Normalised hrefs contain no `<`/`>`.
            lines.append(f"[{label}]: <{reference.get('href', '')}>\n")
    return "".join(lines) + "\n" if lines else ""


def _line_end(text: str, start: int, cap: int) -> int:
    """The end of the line containing ``start`` (after its newline), but at most ``cap``."""
    if start >= len(text):
        return len(text)
    newline = text.find("\n", start, cap)
    return min(len(text), cap) if newline < 0 else newline + 1


def _unwrap(line: str, containers: tuple[str, ...]) -> str:
    """``line`` without the quote markers and list indentation of ``containers``."""
    pos, size = 0, len(line)
    for container in containers:
        start = pos
        if container == _QUOTE:
            while pos < size and pos - start < 3 and line[pos] == " ":
                pos += 1
            if pos >= size or line[pos] != ">":
                return line[start:]  # a lazy continuation line: no more markers to remove
            pos += 1
            if pos < size and line[pos] == " ":
                pos += 1
        else:
            while pos < size and pos - start < len(container) and line[pos] == " ":
                pos += 1
    return line[pos:]


def _markers(containers: tuple[str, ...]) -> str:
    """What opens a tail's first line inside ``containers``: quote markers and item markers."""
    return "".join("> " if c == _QUOTE else c for c in containers)


def _continuation(containers: tuple[str, ...]) -> str:
    """What opens a further line inside ``containers``: quote markers and indentation."""
    return "".join("> " if c == _QUOTE else " " * len(c) for c in containers)


def _opens_block(line: str) -> bool:
    """Whether ``line`` at the start of a tail would open a block instead of continuing text."""
    stripped = line.lstrip(" ")
    if not stripped or len(line) - len(stripped) >= 4:
        return True
    first, rest = stripped[0], stripped.rstrip()
    if first in ">\t|" or (first in "`~" and stripped.startswith(first * 3)):
        return True
    if first in "-+*=_" and len(set(rest.replace(" ", ""))) == 1:
        return True  # a thematic break or a setext underline
    if first in "-+*":
        return len(stripped) == 1 or stripped[1] in " \t"
    if first == "#":
        hashes = len(stripped) - len(stripped.lstrip("#"))
        return hashes <= 6 and (hashes == len(stripped) or stripped[hashes] in " \t")
    digits = len(stripped) - len(stripped.lstrip(string.digits))
    if 0 < digits <= 9 and digits < len(stripped) and stripped[digits] in ".)":
        return digits + 1 == len(stripped) or stripped[digits + 1] in " \t"
    return False


def _item_marker(line: str, number: int | None) -> str:
    """A list item's marker from its first line, padded to its content column.

    An ordered item shows ``number`` (its place in the list) if that fits the same width: a
    wider marker would move the content column and push the item's other lines out of it.
    """
    lead = len(line) - len(line.lstrip(" "))
    end = lead
    if end < len(line) and line[end] in "-+*":
        end += 1
    else:
        while end < len(line) and line[end] in string.digits:
            end += 1
        end += 1  # `.` or `)`
    gap = len(line[end:]) - len(line[end:].lstrip(" "))
    if gap == 0 or gap > 4 or end + gap >= len(line):
        gap = 1
    column = end + gap
    marker = line[lead:end]
    if number is not None and lead + len(str(number)) + 2 <= column:
        marker = f"{number}{marker[-1:]}"
    return (" " * lead + marker).ljust(column)


def _renumbered(line: str, number: int) -> str:
    """An ordered item's first line showing ``number``, if that keeps its content column."""
    lead = len(line) - len(line.lstrip(" "))
    digits = len(line) - len(line[lead:].lstrip(string.digits))
    if digits == lead or digits >= len(line) or line[digits] not in ".)":
        return line
    marker = _item_marker(line, number)
    return marker + line[len(marker) :]


def _visible(rendered: str) -> str:
    """Rendered text without whitespace, quote markers and list markers (which a tail may
    repeat): what a cut must keep."""
    return "".join("".join(_strip_markers(line).split()) for line in rendered.split("\n"))


def _strip_markers(line: str) -> str:
    body = line.lstrip("> ").lstrip()
    while True:
        digits = len(body) - len(body.lstrip(string.digits))
        if body[:1] in ("•", "◦", "▪", "☐", "☑"):
            body = body[1:].lstrip()
        elif 0 < digits and body[digits : digits + 1] == ".":
            body = body[digits + 1 :].lstrip()
        else:
            return body


def _as_literal(markdown: str) -> str:
    """Markdown that shows ``markdown`` as plain text (the last resort for tiny limits)."""
    flat = " ".join(markdown.split())
    return "".join("\\" + ch if ch in string.punctuation else ch for ch in flat)


def _largest(count: int, fits: Callable[[int], bool], guess: int) -> int:
    """Largest ``i < count`` with ``fits(i)`` (assumed monotone), probing outward from ``guess``.

    Galloping keeps the probes near the answer, so each render stays about message-sized.
    """
    if count == 0:
        return -1
    low, high = -1, count
    probe = min(max(guess, 0), count - 1)
    step = 1
    if fits(probe):
        low = probe
        while low + step < high:
            if not fits(low + step):
                high = low + step
                break
            low += step
            step *= 2
    else:
        high = probe
        while high - step > low:
            if fits(high - step):
                low = high - step
                break
            high -= step
            step *= 2
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True, slots=True)
class _Cut:
    """Where to cut, and how to repair both sides."""

    offset: int  # the tail starts here in the source
    rank: int
    line: int  # the line the tail starts in
    skip: int = 0  # source characters dropped at the cut (a space)
    close: str = ""  # appended to the head (closes a fence)
    prefix: str = ""  # opens the tail: container markers, a reopened fence, a table header
    unwrap: tuple[str, ...] = ()  # containers whose markers the tail's first line gives up
    strip: bool = False  # the first line continues a paragraph: no indentation
    number: int | None = None  # the tail starts with an ordered item: the number it shows


@dataclass(frozen=True, slots=True)
class _Leaf:
    """The block a line belongs to, for cutting inside that line."""

    code: bool
    first: int  # the block's first line (for fenced code: its first content line)
    end: int  # the line after the block
    containers: tuple[str, ...]
    close: str = ""  # closes a fenced code block in the head
    reopen: str = ""  # after the container markers: a fence line, a heading marker


class _Window:
    """The start of a text, parsed once, with every place it could be cut."""

    def __init__(self, text: str, size: int, limit: int, render: Render) -> None:
        self.text, self.limit, self._render = text, limit, render
        # Whole lines, except that one enormous line is cut: only its start can matter.
        self.end = _line_end(text, size, 2 * size)
        parsed_end = self.end
        for _ in range(_MARGIN_LINES):
            parsed_end = _line_end(text, parsed_end, self.end + size)
        self.complete = parsed_end >= len(text)
        if self.complete:
            self.end = len(text)
        source = text[:parsed_end]
        self._starts = [0]
        newline = source.find("\n")
        while newline >= 0:
            self._starts.append(newline + 1)
            newline = source.find("\n", newline + 1)
        self._parsed_end = parsed_end
        self._env: dict[str, object] = {}
        self._cuts: dict[int, _Cut] = {}
        self._leaves: dict[int, _Leaf] = {}  # line -> the code block, paragraph or heading
        self._rendered: dict[str, str] = {}
        self._collect(parse(source, self._env))
        references = self._env.get("references")
        self._definition_lines = {
            line
            for reference in (references.values() if isinstance(references, dict) else ())
            for line in range(*(reference.get("map") or (0, 0)))
        }

    # reading the source

    def _line(self, index: int) -> str:
        start = self._starts[index]
        stop = self._starts[index + 1] if index + 1 < len(self._starts) else self._parsed_end
        return self.text[start:stop].rstrip("\n")

    def _line_start(self, index: int) -> int:
        return self._starts[index] if index < len(self._starts) else self._parsed_end

    def _add(self, line: int, cut: _Cut) -> None:
        if not 0 < line < len(self._starts) or self._starts[line] > self.end:
            return
        if line not in self._cuts or self._cuts[line].rank > cut.rank:
            self._cuts[line] = cut

    def _line_cut(
        self,
        line: int,
        rank: int,
        containers: tuple[str, ...] = (),
        *,
        strip: bool = False,
        number: int | None = None,
    ) -> None:
        """A cut before ``line``, which opens the tail inside the same containers."""
        if 0 < line < len(self._starts):
            offset = self._starts[line]
            self._add(
                line,
                _Cut(
                    offset,
                    rank,
                    line,
                    prefix=_markers(containers),
                    unwrap=containers,
                    strip=strip,
                    number=number,
                ),
            )

    def _collect(self, tokens: list[Token]) -> None:
        stack: list[str | None] = []  # per open container token: the container, if any
        numbers: list[int] = []  # per open list: the number of its next item
        for index, token in enumerate(tokens):
            if token.nesting < 0:
                stack.pop()
                if token.type in ("bullet_list_close", "ordered_list_close"):
                    numbers.pop()
                continue
            containers = tuple(c for c in stack if c is not None)
            span = token.map
            number: int | None = None
            if token.type == "list_item_open" and numbers:
                if token.info:  # ordered: shown with its place in the list, not as written
                    number = numbers[-1]
                numbers[-1] += 1
            if span is not None and token.type in _BLOCK_STARTS:
                rank = _BETWEEN_TOP_BLOCKS if token.level == 0 else _BETWEEN_NESTED_BLOCKS
                self._line_cut(span[0], rank, containers, number=number)
            if span is not None and token.type == "fence":
                self._collect_fence(token, span[0], containers)
            elif span is not None and token.type == "code_block":
                self._collect_code_block(span[0], span[1], containers)
            elif span is not None and token.type == "paragraph_open":
                self._collect_paragraph(tokens[index + 1], span[0], span[1], containers)
            elif span is not None and token.type == "table_open" and token.level == 0:
                self._collect_table(tokens, index, span[0])
            elif span is not None and token.type == "heading_open":
                marker = f"{token.markup} " if token.markup.startswith("#") else ""
                leaf = _Leaf(False, span[0], span[0] + 1, containers, reopen=marker)
                self._leaves[span[0]] = leaf
            if token.type in ("bullet_list_open", "ordered_list_open"):
                start = token.attrGet("start")
                numbers.append(start if isinstance(start, int) else 1)
            if token.nesting > 0:
                container: str | None = None
                if token.type in ("blockquote_open", "alert_open"):
                    container = _QUOTE
                elif token.type == "list_item_open" and span is not None:
                    container = _item_marker(_unwrap(self._line(span[0]), containers), number)
                stack.append(container)

    def _collect_fence(self, token: Token, first: int, containers: tuple[str, ...]) -> None:
        content = token.content.split("\n")[:-1]
        while content and not content[-1].strip():
            content.pop()  # a tail of blank lines would render as an empty message
        if not content:
            return
        opening = self._line(first)
        at = opening.find(token.markup)
        info = opening[at + len(token.markup) :] if at >= 0 else token.info
        indent = "" if containers else " " * (len(opening) - len(opening.lstrip(" ")))
        last = first + len(content)
        code = _Leaf(
            code=True,
            first=first + 1,
            end=last + 1,
            containers=containers,
            close=_continuation(containers) + token.markup + "\n",
            reopen=f"{indent}{token.markup}{info}\n",
        )
        for line in range(first + 1, last + 1):
            self._leaves[line] = code
        # Code lines stay as written: the reopened fence sits inside the same containers.
        prefix = _markers(containers) + code.reopen
        for line in range(first + 2, last + 1):
            self._add(
                line, _Cut(self._starts[line], _INSIDE_BLOCK, line, close=code.close, prefix=prefix)
            )

    def _collect_code_block(self, first: int, end: int, containers: tuple[str, ...]) -> None:
        code = _Leaf(True, first, end, containers, reopen="    ")
        for line in range(first, end):
            self._leaves[line] = code
            if line > first:
                self._line_cut(line, _INSIDE_BLOCK, containers)

    def _collect_paragraph(
        self, inline: Token, first: int, end: int, containers: tuple[str, ...]
    ) -> None:
        leaf = _Leaf(False, first, end, containers)
        for line in range(first, end):
            self._leaves[line] = leaf
        depth = newlines = counted_to = 0
        for child in inline.children or []:
            depth += child.nesting
            position = child.meta.get("src_pos") if child.meta else None
            if depth or child.type not in ("softbreak", "hardbreak") or position is None:
                continue  # inside emphasis or a link, or a break the source does not show
            newlines += inline.content.count("\n", counted_to, position)
            counted_to = position
            self._line_cut(first + newlines + 1, _INSIDE_BLOCK, containers, strip=True)

    def _collect_table(self, tokens: list[Token], index: int, first: int) -> None:
        header = f"{self._line(first)}\n{self._line(first + 1)}\n"
        for token in tokens[index + 1 :]:
            if token.type == "table_close":
                break
            if token.type == "tr_open" and token.map and token.map[0] >= first + 3:
                line = token.map[0]
                self._add(line, _Cut(self._starts[line], _INSIDE_BLOCK, line, prefix=header))

    # measuring

    def _measure(self, markdown: str) -> str:
        if markdown not in self._rendered:
            self._rendered[markdown] = self._render(markdown)
        return self._rendered[markdown]

    def overflow(self) -> int:
        """How far the window's text renders past the limit (<= 0: it fits)."""
        return len(self._measure(self.text[: self.end])) - self.limit

    def _guess(self, offsets: Sequence[int]) -> int:
        """The index of the offset whose head should render closest below the limit."""
        rendered = len(self._measure(self.text[: self.end]))
        target = self.end * self.limit // max(rendered, 1)
        return bisect.bisect_right(offsets, target) - 1

    def _head(self, cut: _Cut) -> str:
        return self.text[: cut.offset] + cut.close

    def _fits(self, cut: _Cut) -> bool:
        return len(self._measure(self._head(cut))) <= self.limit

    def _is_empty(self, cut: _Cut) -> bool:
        return not self._measure(self._head(cut)).strip()

    # choosing a cut

    def split(self) -> Split:
        cuts = [self._cuts[line] for line in sorted(self._cuts)]
        offsets = [cut.offset for cut in cuts]
        best = _largest(len(cuts), lambda i: self._fits(cuts[i]), self._guess(offsets))
        if best < 0 or self._is_empty(cuts[best]):
            stop = offsets[best + 1] if best + 1 < len(cuts) else self.end
            return self._split_line(stop)
        for rank in (_BETWEEN_TOP_BLOCKS, _BETWEEN_NESTED_BLOCKS):
            ranked = [i for i in range(best + 1) if cuts[i].rank <= rank]
            if not ranked:
                continue
            choice = cuts[ranked[-1]]
            if not self._fits(choice) or self._is_empty(choice):
                continue
            full = len(self._measure(self._head(choice))) >= _FILL * self.limit
            if full or self._next_block_fits(cuts, ranked[-1], rank):
                return self._cut(choice)
        return self._cut(cuts[best])

    def _next_block_fits(self, cuts: list[_Cut], index: int, rank: int) -> bool:
        start = cuts[index].offset
        following = next((c for c in cuts[index + 1 :] if c.rank <= rank), None)
        if following is None and not self.complete:
            return False
        stop = len(self.text) if following is None else following.offset
        return len(self._render(self.text[start:stop])) <= self.limit

    def _split_line(self, stop: int) -> Split:
        """No line boundary fits: cut inside a line, at a space if possible."""
        text = self.text
        first = self._content_start()
        last = len(text.rstrip())
        inside = [p for p in range(first + 1, min(stop, last)) if self._keeps_structure(p)]
        spaces = [p for p in inside if text[p] in " \n"]
        for positions in (spaces, inside):
            cut = self._largest_mid_line(positions)
            if cut is not None:
                return self._cut(cut)
        return self._literal(first, last)

    def _content_start(self) -> int:
        """Where the text proper starts: after blank lines and leading link definitions."""
        line = 0
        while line + 1 < len(self._starts) and (
            line in self._definition_lines or not self._line(line).strip()
        ):
            line += 1
        start = self._starts[line]
        return start + len(self.text[start:]) - len(self.text[start:].lstrip())

    def _keeps_structure(self, position: int) -> bool:
        """Whether a cut here leaves the line's markers, code blocks and the tail's start intact.

        The cut must lie after the quote/list markers of its line, must not leave or enter a
        code block half-way, and in text the tail must not start with what would open a block
        of its own (``> x``, ``- x``, ``# x``…).
        """
        text = self.text
        line = bisect.bisect_right(self._starts, position) - 1
        if line in self._definition_lines:
            return False
        here, after = self._leaves.get(line), self._leaves.get(line + 1)
        if text[position] == "\n":
            if (here and here.code) or (after and after.code):
                return here is after
        elif not text[self._starts[line] : position].strip(_MARKER_CHARS):
            return False
        elif here and here.code:
            return True
        following = position + 1 if text[position] in " \n" else position
        end = text.find("\n", following)
        return following < len(text) and not _opens_block(
            text[following : end if end >= 0 else None]
        )

    def _largest_mid_line(self, positions: Sequence[int]) -> _Cut | None:
        """The largest fitting cut, preferring one that splits no link or emphasis."""
        guess = self._guess(positions)
        best = _largest(len(positions), lambda i: self._fits(self._mid_line(positions[i])), guess)
        if best < 0 or self._is_empty(self._mid_line(positions[best])):
            return None
        for index in range(best, max(-1, best - _CLEAN_TRIES), -1):
            cut = self._mid_line(positions[index])
            if self._is_empty(cut):
                break
            if self._is_clean(cut):
                return cut
        return self._mid_line(positions[best])

    def _is_clean(self, cut: _Cut) -> bool:
        """Whether the paragraph cut by ``cut`` shows the same text in two pieces as in one."""
        leaf = self._leaves.get(bisect.bisect_right(self._starts, cut.offset) - 1)
        if leaf is None or leaf.code:
            return True
        start, stop = self._starts[leaf.first], self._line_start(leaf.end)
        definitions = _definitions(self.text, before_line=None, env=self._env)
        whole = self._measure(definitions + self.text[start:stop])
        head = self._measure(definitions + self.text[start : cut.offset])
        rest = self._measure(definitions + self._tail(cut, stop))
        return _visible(head) + _visible(rest) == _visible(whole)

    def _mid_line(self, position: int) -> _Cut:
        text = self.text
        line = bisect.bisect_right(self._starts, position) - 1
        if text[position] == "\n":  # a line end the parse gives no cut: inside emphasis…
            leaf = self._leaves.get(line + 1)
            containers = leaf.containers if leaf else ()
            if leaf is None or not leaf.code or not leaf.close:
                strip = leaf is not None and not leaf.code
                prefix = _markers(containers)
                return _Cut(
                    position,
                    _MID_LINE,
                    line + 1,
                    skip=1,
                    prefix=prefix,
                    unwrap=containers,
                    strip=strip,
                )
            prefix = _markers(containers) + leaf.reopen
            return _Cut(
                position, _MID_LINE, line + 1, skip=1, close="\n" + leaf.close, prefix=prefix
            )
        leaf = self._leaves.get(line)
        if leaf is None:
            return _Cut(position, _MID_LINE, line, skip=1 if text[position] == " " else 0)
        prefix = _markers(leaf.containers) + leaf.reopen
        if not leaf.code:
            return _Cut(
                position, _MID_LINE, line, skip=1 if text[position] == " " else 0, prefix=prefix
            )
        if not leaf.close:  # an indented code block: the line goes on, indented as code
            return _Cut(position, _MID_LINE, line, prefix=prefix)
        prefix += _continuation(leaf.containers)
        return _Cut(position, _MID_LINE, line, close="\n" + leaf.close, prefix=prefix)

    def _literal(self, first: int, last: int) -> Split:
        """Show a piece of the source as plain text: nothing structural fits in the limit."""

        def fits(i: int) -> bool:
            return len(self._measure(_as_literal(self.text[: first + 1 + i]))) <= self.limit

        taken = first + 1 + max(0, _largest(max(1, last - first - 1), fits, self.limit // 5))
        return Split(_as_literal(self.text[:taken]), self.text[taken:])

    # cutting

    def _tail(self, cut: _Cut, stop: int | None = None) -> str:
        """The tail's Markdown (up to ``stop``): repaired first line, then the source as it is."""
        text = self.text
        position = cut.offset + cut.skip
        end = text.find("\n", position)
        end = len(text) if end < 0 else end
        first = _unwrap(text[position:end], cut.unwrap) if cut.unwrap else text[position:end]
        if cut.strip:
            first = first.lstrip(" \t")
        if cut.number is not None:
            first = _renumbered(first, cut.number)
        return cut.prefix + first + text[end:stop]

    def _cut(self, cut: _Cut) -> Split:
        definitions = _definitions(self.text, before_line=cut.line, env=self._env)
        return Split(self._head(cut), definitions + self._tail(cut))
