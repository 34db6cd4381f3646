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
4. for one enormous line: at a space, else anywhere; and, only if the limit is too small for
   any of that (deeply nested quotes), a piece of the source shown as literal text.

Inside a fenced code block the head gets a closing fence and the tail reopens the fence with the
same info string (``python`` stays ``python``); a table cut between rows repeats its header in
the tail. Nested list and quote context may be lost across a cut: the tail sheds the list
indentation it no longer sits in (so it does not turn into an indented code block) and starts
as a top-level list or paragraph. Reference-style link definitions seen so far are repeated at
the top of the tail, so ``[text][ref]`` keeps working in later parts.

Sizes are measured with ``to_mrkdwn(part, final=True)``: render frozen parts that way.
While streaming, a reference definition that arrives after a part was frozen cannot reach it;
that part shows ``[text][ref]`` literally.
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

# A container around a cut: a list item's content column (>= 0) or a block quote.
_QUOTE = -1
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
_BLOCK_OPENERS = frozenset(" \t\n>-+*#=|`~0123456789")
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


def _dedent(line: str, containers: tuple[int, ...], *, strip: bool = False) -> str:
    """``line`` without the list indentation of ``containers``; quote markers are kept."""
    kept: list[str] = []
    pos, size = 0, len(line)
    for container in containers:
        start = pos
        if container == _QUOTE:
            while pos < size and pos - start < 3 and line[pos] == " ":
                pos += 1
            if pos >= size or line[pos] != ">":
                pos = start
                break  # a lazy continuation line: it has no marker to keep
            pos += 1
            if pos < size and line[pos] == " ":
                pos += 1
            kept.append(line[start:pos])
        else:
            while pos < size and pos - start < container and line[pos] == " ":
                pos += 1
    rest = line[pos:]
    return "".join(kept) + (rest.lstrip(" \t") if strip else rest)


def _continues(line: str, containers: tuple[int, ...]) -> bool:
    """Whether a non-blank ``line`` still lies inside ``containers`` (lazy lines do not)."""
    pos, size = 0, len(line)
    for container in containers:
        start = pos
        if container == _QUOTE:
            while pos < size and pos - start < 3 and line[pos] == " ":
                pos += 1
            if pos >= size or line[pos] != ">":
                return False
            pos += 1
            if pos < size and line[pos] == " ":
                pos += 1
        else:
            while pos < size and pos - start < container and line[pos] == " ":
                pos += 1
            if pos - start < container and line[pos:].strip():
                return False
    return True


def _visible(rendered: str) -> str:
    """Rendered text without whitespace and quote markers: what must survive a cut."""
    return "".join("".join(line.lstrip("> ").split()) for line in rendered.split("\n"))


def _renumbered(line: str, number: int) -> str:
    """``line`` with the number of its ordered-list marker (``3.``/``3)``) set to ``number``."""
    start = len(line) - len(line.lstrip(" >"))
    digits = start
    while digits < len(line) and line[digits] in string.digits:
        digits += 1
    if digits == start or digits >= len(line) or line[digits] not in ".)":
        return line
    return f"{line[:start]}{number}{line[digits:]}"


def _item_column(line: str) -> int:
    """Content column of a list item from its first line (already without outer containers)."""
    pos = len(line) - len(line.lstrip(" "))
    if pos < len(line) and line[pos] in "-+*":
        pos += 1
    else:
        while pos < len(line) and line[pos] in string.digits:
            pos += 1
        pos += 1  # `.` or `)`
    gap = len(line[pos:]) - len(line[pos:].lstrip(" "))
    if gap == 0 or gap > 4 or pos + gap >= len(line):
        gap = 1
    return pos + gap


def _container_prefix(containers: tuple[int, ...], *, quotes_only: bool) -> str:
    return "".join("> " if c == _QUOTE else ("" if quotes_only else " " * c) for c in containers)


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
    """Where to cut and how to repair both sides."""

    offset: int  # the tail starts here in the source
    rank: int
    line: int  # the line the tail starts in
    skip: int = 0  # source characters dropped at the cut (a space)
    close: str = ""  # appended to the head (closes a fence)
    reopen: str = ""  # prepended to the tail (reopens a fence, repeats a table header)
    containers: tuple[int, ...] = ()  # containers the tail leaves: it sheds their indentation
    strip_until: int = 0  # tail lines before this line are paragraph text: no indentation
    number: int | None = None  # the tail starts with an ordered item: the number it shows
    next_number: int | None = None  # the next item of the ordered item cut: the number it shows


@dataclass(frozen=True, slots=True)
class _CodeLines:
    """How to cut inside the content of one code block."""

    close: str
    reopen: str
    line_prefix: str  # continues a code line cut in the middle (indented code blocks)
    containers: tuple[int, ...]


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
        self._code: dict[int, _CodeLines] = {}
        self._paragraphs: dict[int, tuple[int, int, str]] = {}  # line -> first, end, quotes
        self._headings: dict[int, str] = {}  # line -> what reopens the heading after a cut
        self._rendered: dict[str, str] = {}
        self._next_number: int | None = None  # of the ordered item after the one being read
        self._collect(parse(source, self._env))

    # reading the source

    def _line(self, index: int) -> str:
        start = self._starts[index]
        stop = self._starts[index + 1] if index + 1 < len(self._starts) else self._parsed_end
        return self.text[start:stop].rstrip("\n")

    def _line_start(self, index: int) -> int:
        return self._starts[index] if index < len(self._starts) else self._parsed_end

    def _add(
        self,
        line: int,
        rank: int,
        *,
        close: str = "",
        reopen: str = "",
        containers: tuple[int, ...] = (),
        strip_until: int = 0,
        number: int | None = None,
    ) -> None:
        if not 0 < line < len(self._starts) or self._starts[line] > self.end:
            return
        if line in self._cuts and self._cuts[line].rank <= rank:
            return
        self._cuts[line] = _Cut(
            self._starts[line],
            rank,
            line,
            close=close,
            reopen=reopen,
            containers=containers,
            strip_until=strip_until,
            number=number,
            next_number=self._next_number if containers else None,
        )

    def _collect(self, tokens: list[Token]) -> None:
        # Per open container token: its dedent value, if any, and an ordered item's number.
        stack: list[tuple[int | None, int | None]] = []
        numbers: list[int] = []  # per open list: the number of its next item
        for index, token in enumerate(tokens):
            if token.nesting < 0:
                stack.pop()
                if token.type in ("bullet_list_close", "ordered_list_close"):
                    numbers.pop()
                continue
            containers = tuple(value for value, _ in stack if value is not None)
            innermost = next(
                (number for value, number in reversed(stack) if value is not None), None
            )
            self._next_number = None if innermost is None else innermost + 1
            span = token.map
            number: int | None = None
            if token.type == "list_item_open" and numbers:
                if token.info:  # an ordered item; it shows its place in the list, not token.info
                    number = numbers[-1]
                numbers[-1] += 1
            if span is not None and token.type in _BLOCK_STARTS:
                if token.level == 0:
                    self._add(span[0], _BETWEEN_TOP_BLOCKS)
                else:
                    self._add(span[0], _BETWEEN_NESTED_BLOCKS, containers=containers, number=number)
            if span is not None and token.type == "fence":
                self._collect_fence(token, span[0], containers)
            elif span is not None and token.type == "code_block":
                self._collect_code_block(span[0], span[1], containers)
            elif span is not None and token.type == "paragraph_open":
                self._collect_paragraph(tokens[index + 1], span[0], span[1], containers)
            elif span is not None and token.type == "table_open" and token.level == 0:
                self._collect_table(tokens, index, span[0])
            elif span is not None and token.type == "heading_open" and token.markup[:1] == "#":
                quotes = _container_prefix(containers, quotes_only=True)
                self._headings[span[0]] = f"{quotes}{token.markup} "
            if token.type in ("bullet_list_open", "ordered_list_open"):
                start = token.attrGet("start")
                numbers.append(start if isinstance(start, int) else 1)
            if token.nesting > 0:
                value: int | None = None
                if token.type in ("blockquote_open", "alert_open"):
                    value = _QUOTE
                elif token.type == "list_item_open" and span is not None:
                    value = _item_column(_dedent(self._line(span[0]), containers))
                stack.append((value, number))

    def _collect_fence(self, token: Token, first: int, containers: tuple[int, ...]) -> None:
        content = token.content.split("\n")[:-1]
        while content and not content[-1].strip():
            content.pop()  # a tail of blank lines would render as an empty message
        if not content:
            return
        opening = self._line(first)
        at = opening.find(token.markup)
        info = opening[at + len(token.markup) :] if at >= 0 else token.info
        indent = "" if containers else " " * (len(opening) - len(opening.lstrip(" ")))
        quotes = _container_prefix(containers, quotes_only=True)
        code = _CodeLines(
            close=_container_prefix(containers, quotes_only=False) + token.markup + "\n",
            reopen=f"{quotes}{indent}{token.markup}{info}\n",
            line_prefix="",
            containers=containers,
        )
        last = first + len(content)
        for line in range(first + 1, last + 1):
            self._code[line] = code
        for line in range(first + 2, last + 1):
            self._add(
                line, _INSIDE_BLOCK, close=code.close, reopen=code.reopen, containers=containers
            )

    def _collect_code_block(self, first: int, end: int, containers: tuple[int, ...]) -> None:
        quotes = _container_prefix(containers, quotes_only=True)
        code = _CodeLines("", "", quotes + "    ", containers)
        for line in range(first, end):
            self._code[line] = code
        for line in range(first + 1, end):
            self._add(line, _INSIDE_BLOCK, containers=containers)

    def _collect_paragraph(
        self, inline: Token, first: int, end: int, containers: tuple[int, ...]
    ) -> None:
        quotes = _container_prefix(containers, quotes_only=True)
        for line in range(first, end):
            self._paragraphs[line] = (first, end, quotes)
        depth = newlines = counted_to = 0
        for child in inline.children or []:
            depth += child.nesting
            position = child.meta.get("src_pos") if child.meta else None
            if depth or child.type not in ("softbreak", "hardbreak") or position is None:
                continue  # inside emphasis or a link, or a break the source does not show
            newlines += inline.content.count("\n", counted_to, position)
            counted_to = position
            line = first + newlines + 1
            self._add(line, _INSIDE_BLOCK, containers=containers, strip_until=end)

    def _collect_table(self, tokens: list[Token], index: int, first: int) -> None:
        header = f"{self._line(first)}\n{self._line(first + 1)}\n"
        for token in tokens[index + 1 :]:
            if token.type == "table_close":
                break
            if token.type == "tr_open" and token.map and token.map[0] >= first + 3:
                self._add(token.map[0], _INSIDE_BLOCK, reopen=header)

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
        first = len(text) - len(text.lstrip())
        last = len(text.rstrip())
        inside = [p for p in range(first + 1, min(stop, last)) if self._keeps_structure(p)]
        spaces = [p for p in inside if text[p] in " \n"]
        for positions in (spaces, inside):
            cut = self._largest_mid_line(positions)
            if cut is not None:
                return self._cut(cut)
        return self._literal(first, last)

    def _keeps_structure(self, position: int) -> bool:
        """Whether a cut here leaves the line's markers, code blocks and the tail's start intact.

        The cut must lie after the quote/list markers of its line, must not leave or enter a
        code block half-way, and in text the tail must not start with what would open a block
        of its own (``> x``, ``- x``, ``# x``…).
        """
        text = self.text
        line = bisect.bisect_right(self._starts, position) - 1
        if text[position] == "\n":
            if line in self._code or line + 1 in self._code:
                return line in self._code and line + 1 in self._code
        elif not text[self._starts[line] : position].strip(_MARKER_CHARS):
            return False
        elif line in self._code:
            return True
        following = position + 1 if text[position] in " \n" else position
        return following < len(text) and text[following] not in _BLOCK_OPENERS

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
        line = bisect.bisect_right(self._starts, cut.offset) - 1
        if line not in self._paragraphs:
            return True
        first, end, _ = self._paragraphs[line]
        start, stop = self._starts[first], self._line_start(end)
        definitions = _definitions(self.text, before_line=None, env=self._env)
        whole = self._measure(definitions + self.text[start:stop])
        head = self._measure(definitions + self.text[start : cut.offset])
        rest = definitions + cut.reopen + self.text[cut.offset + cut.skip : stop]
        return _visible(head) + _visible(self._measure(rest)) == _visible(whole)

    def _mid_line(self, position: int) -> _Cut:
        text = self.text
        line = bisect.bisect_right(self._starts, position) - 1
        if text[position] == "\n":
            code = self._code.get(line + 1)
            if code is None:
                return _Cut(position, _MID_LINE, line + 1, skip=1)
            close = "\n" + code.close if code.close else ""
            return _Cut(position, _MID_LINE, line + 1, skip=1, close=close, reopen=code.reopen)
        code = self._code.get(line)
        if code is None:
            if line in self._headings:
                reopen = self._headings[line]
            else:
                reopen = self._paragraphs[line][2] if line in self._paragraphs else ""
            skip = 1 if text[position] == " " else 0
            return _Cut(position, _MID_LINE, line, skip=skip, reopen=reopen)
        close = "\n" + code.close if code.close else ""
        return _Cut(position, _MID_LINE, line, close=close, reopen=code.reopen + code.line_prefix)

    def _literal(self, first: int, last: int) -> Split:
        """Show a piece of the source as plain text: nothing structural fits in the limit."""

        def fits(i: int) -> bool:
            return len(self._measure(_as_literal(self.text[: first + 1 + i]))) <= self.limit

        taken = first + 1 + max(0, _largest(max(1, last - first - 1), fits, self.limit // 5))
        return Split(_as_literal(self.text[:taken]), self.text[taken:])

    # cutting

    def _cut(self, cut: _Cut) -> Split:
        text = self.text
        position = cut.offset + cut.skip
        line = cut.line
        pieces: list[str] = []
        if cut.number is not None:
            end = text.find("\n", position)
            end = len(text) if end < 0 else end
            pieces.append(_renumbered(_dedent(text[position:end], cut.containers), cut.number))
            position, line = end, line + 1
            pieces.append(text[position : position + 1])
            position += 1
        # The tail sheds the indentation of the containers it has left, for as long as its
        # lines still sit in them; lines of a paragraph cut in two lose their indentation.
        while position < len(text) and (cut.containers or line < cut.strip_until):
            newline = text.find("\n", position)
            end = len(text) if newline < 0 else newline + 1
            body = text[position:end].rstrip("\n")
            strip = line < cut.strip_until
            if not strip and body.strip() and not _continues(body, cut.containers):
                if cut.next_number is not None and _continues(body, cut.containers[:-1]):
                    # The next item of the list the cut was in: it keeps counting.
                    pieces.append(_renumbered(body, cut.next_number))
                    position += len(body)
                break
            pieces.append(
                _dedent(body, cut.containers, strip=strip) + text[position + len(body) : end]
            )
            position, line = end, line + 1
            if not cut.containers and line >= cut.strip_until:
                break
        definitions = _definitions(text, before_line=cut.line, env=self._env)
        tail = definitions + cut.reopen + "".join(pieces) + text[position:]
        return Split(self._head(cut), tail)
