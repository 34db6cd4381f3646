"""Markdown → Slack mrkdwn: what a user sees for each construct the model writes, and the
safety properties (no Slack special tokens, balanced code fences) on any input."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.render.mrkdwn import to_mrkdwn

# Every `<` in the output must open a link this renderer wrote.
_LINK = re.compile(r"<(?:https?://|mailto:)[^<>|\s]*(?:\|[^<>]*)?>")


def assert_slack_safe(out: str) -> None:
    """No special token can hide in ``out`` and its code fences pair up, each on its own line."""
    assert "<" not in _LINK.sub("", out), out
    fence_lines = [line for line in out.split("\n") if "```" in line]
    assert all(line.lstrip("> ").strip() == "```" for line in fence_lines), out
    assert len(fence_lines) % 2 == 0, out


# --- a realistic answer, as hypothesis builds it (shared with tests/test_split.py) ----------

WORDS = st.sampled_from(
    [
        "alpha",
        "beta",
        "gamma",
        "x",
        "42",
        "2.5",
        "a&b",
        "<tag>",
        "<!here>",
        "<@U123>",
        "snake_case",
        "it's",
        "café",
        "👍",
        "foo:bar",
        "(paren)",
        "a|b",
    ]
)
URLS = st.sampled_from(["https://example.com/a?b=1&c=2", "https://x.io/y_z", "mailto:a@b.co"])
INLINE = st.one_of(
    WORDS,
    WORDS.map(lambda w: f"**{w}**"),
    WORDS.map(lambda w: f"*{w}*"),
    WORDS.map(lambda w: f"~~{w}~~"),
    WORDS.map(lambda w: f"`{w}`"),
    WORDS.map(lambda w: f"***{w}***"),
    st.tuples(WORDS, URLS).map(lambda t: f"[{t[0]}]({t[1]})"),
    URLS.filter(lambda u: u.startswith("http")),
)
REFERENCE = st.just("[the docs][ref]")
LINE = st.lists(INLINE, min_size=1, max_size=7).map(" ".join)
LINE_WITH_REFERENCES = st.lists(st.one_of(INLINE, REFERENCE), min_size=1, max_size=7).map(" ".join)
CODE_LINE = st.text(alphabet="abcxyz <>&=();`{}*_.:#-", max_size=36).map(lambda s: "x" + s)
LANG = st.sampled_from(["", "python", "js", "bash", "c++ {.numberLines}"])


def _fence(lang: str, lines: list[str], prefix: str = "") -> str:
    body = "".join(f"{prefix}{line}\n" for line in lines)
    return f"{prefix}```{lang}\n{body}{prefix}```"


def _bullets(items: list[str], nested: list[str]) -> str:
    out = [f"- {items[0]}", *(f"  - {n}" for n in nested), *(f"- {i}" for i in items[1:])]
    return "\n".join(out)


def _ordered(start: int, items: list[str], loose: bool) -> str:
    return ("\n\n" if loose else "\n").join(f"{start + n}. {i}" for n, i in enumerate(items))


def _table(rows: list[list[str]]) -> str:
    width = len(rows[0])
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * width]
    lines += ["| " + " | ".join((row + ["x"] * width)[:width]) + " |" for row in rows[1:]]
    return "\n".join(lines)


def _blocks(tables: bool, references: bool) -> st.SearchStrategy[str]:
    line = LINE_WITH_REFERENCES if references else LINE
    items = st.lists(line, min_size=1, max_size=4)
    blocks = [
        st.lists(line, min_size=1, max_size=3).map("\n".join),
        st.tuples(st.integers(1, 3), st.lists(INLINE, min_size=1, max_size=2)).map(
            lambda t: "#" * t[0] + " " + " ".join(t[1])
        ),
        st.tuples(LANG, st.lists(CODE_LINE, min_size=1, max_size=14)).map(lambda t: _fence(*t)),
        st.tuples(items, st.lists(line, max_size=3)).map(lambda t: _bullets(*t)),
        st.tuples(st.integers(1, 20), items, st.booleans()).map(lambda t: _ordered(*t)),
        st.lists(st.tuples(st.booleans(), line), min_size=1, max_size=3).map(
            lambda ts: "\n".join(f"- [{'x' if done else ' '}] {text}" for done, text in ts)
        ),
        st.lists(line, min_size=1, max_size=3).map(
            lambda ls: "\n".join(f"> {text}" for text in ls)
        ),
        st.tuples(LANG, st.lists(CODE_LINE, min_size=1, max_size=6)).map(
            lambda t: _fence(*t, prefix="> ")
        ),
        st.tuples(line, LANG, st.lists(CODE_LINE, min_size=1, max_size=8)).map(
            lambda t: f"1. {t[0]}\n\n" + _fence(t[1], t[2], prefix="   ")
        ),
        st.just("---"),
    ]
    if tables:
        cells = st.lists(WORDS, min_size=2, max_size=3)
        blocks.append(st.lists(cells, min_size=2, max_size=9).map(_table))
    return st.one_of(*blocks)


def documents(*, tables: bool = True, references: bool = True) -> st.SearchStrategy[str]:
    """Markdown answers of a few blocks, like a model writes them."""
    body = st.lists(_blocks(tables, references), min_size=1, max_size=10).map("\n\n".join)
    if not references:
        return body
    return body.map(lambda text: text + "\n\n[ref]: https://example.com/ref\n")


# --- example tests: what each construct looks like ---------------------------------------


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*it* and _it_", "_it_ and _it_"),
        ("~~gone~~", "~gone~"),
        ("***both***", "*_both_*"),
        ("___both___", "*_both_*"),
        ("a *b **c** d* e", "a _b *c* d_ e"),
        ("**a *b* c**", "*a _b_ c*"),
        ("*a *b* c*", "_a b c_"),
        ("(**x**): done", "(*x*): done"),
        ("`a < b && c`", "`a &lt; b &amp;&amp; c`"),
        ("`` `tick` ``", "`ˋtickˋ`"),
        ("a  \nb\\\nc\nd", "a\nb\nc\nd"),
        ("&copy; &amp; &lt;x&gt; R&D", "© &amp; &lt;x&gt; R&amp;D"),
    ],
)
def test_inline_constructs(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("foo**bar**baz", "foobarbaz"),
        ("foo*bar*", "foobar"),
        ("snake_case_name", "snake_case_name"),
        ("2*3*4", "234"),
        ("x ~~**y**~~ z", "x *~y~* z"),
        ("**a\nb**", "*a b*"),
    ],
)
def test_emphasis_touching_words_is_shown_without_markers(markdown: str, mrkdwn: str) -> None:
    """Slack ignores markers inside a word, and would then show them literally."""
    assert to_mrkdwn(markdown) == mrkdwn


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("[docs](https://x.io/a?b=1&c=2)", "<https://x.io/a?b=1&amp;c=2|docs>"),
        ("[**bold** label](https://x.io)", "<https://x.io|bold label>"),
        ("[](https://x.io)", "<https://x.io>"),
        ("<https://x.io/p>", "<https://x.io/p>"),
        ("<me@x.io>", "<mailto:me@x.io|me@x.io>"),
        ("[mail](mailto:me@x.io)", "<mailto:me@x.io|mail>"),
        ("see https://x.io/a_b_c.", "see <https://x.io/a_b_c>."),
        ("(https://x.io/a(b))", "(<https://x.io/a(b)>)"),
        ("![diagram](https://x.io/d.png)", "<https://x.io/d.png|diagram>"),
        ("![diagram](d.png)", "diagram"),
        ("[guide](/docs/guide)", "guide (/docs/guide)"),
        ("[top](#top)", "top"),
        ("[x](javascript:alert(1))", "[x](javascript:alert(1))"),
    ],
)
def test_links(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn


@pytest.mark.parametrize(
    "markdown",
    [
        "<!here> <!channel> <!everyone> <!subteam^S1> <@U123> <#C123>",
        "[!here](!here) [@U1](@U1) [#C1](<#C1>) [x](<!channel>)",
        "[<!here>](https://x.io) [a|<@U1>](https://x.io)",
        '[a](https://x.io/|<!here>) [b](<https://x.io/a>b>) [c](https://x.io/"<@U1>")',
        "`<!here>`\n\n```\n<!channel>\n```\n\n    <@U123>",
        "| <!here> |\n|---|\n| <@U1> |",
        "# <!everyone>\n\n> <#C1>\n\n- <@U1>",
        "<div><!here></div> <script>",
    ],
)
def test_model_text_never_forms_a_special_token(markdown: str) -> None:
    out = to_mrkdwn(markdown)
    assert_slack_safe(out)
    for token in ("<!", "<@", "<#"):
        assert token not in out


def test_link_url_and_label_cannot_break_the_link() -> None:
    out = to_mrkdwn("[a > b | c](https://x.io/?q=a|b)")
    assert out == "<https://x.io/?q=a%7Cb|a &gt; b | c>"


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("# Title\n\ntext", "*Title*\n\ntext"),
        ("Title\n=====\n\ntext", "*Title*\n\ntext"),
        ("## **Bold** heading", "*Bold heading*"),
        ("## *Some* `code`", "*_Some_ `code`*"),
        ("one\n\n\n\ntwo\nthree", "one\n\ntwo\nthree"),
        ("- a\n- b\n  - c\n    - d\n      - e", "• a\n• b\n    ◦ c\n        ▪ d\n            • e"),
        ("* a\n\n* b", "• a\n\n• b"),
        ("7. seven\n8. eight", "7. seven\n8. eight"),
        ("1) a\n1) b", "1. a\n2. b"),
        ("1. a\n   1. x\n   2. y", "1. a\n    1. x\n    2. y"),
        ("- [ ] todo\n- [x] done", "☐ todo\n☑ done"),
        ("1. [x] done", "1. ☑ done"),
        ("- item\n  continued", "• item\n  continued"),
        ("> quoted\n> - item\n>\n> > nested", "> quoted\n>\n> • item\n>\n> > nested"),
        ("> [!TIP]\n> try this", "> *Tip*\n> try this"),
        ("---", "———"),
        ("a\n\n***\n\nb", "a\n\n———\n\nb"),
        ("<div>\n**x**\n</div>", "&lt;div&gt;\n*x*\n&lt;/div&gt;"),
        ("a <b>c</b> <!-- d -->", "a &lt;b&gt;c&lt;/b&gt; &lt;!-- d --&gt;"),
    ],
)
def test_blocks(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        (
            "```python\nif a < b:\n    x = 'a & b'\n```",
            "```\nif a &lt; b:\n    x = 'a &amp; b'\n```",
        ),
        ("~~~\n*not bold* <tag>\n~~~", "```\n*not bold* &lt;tag&gt;\n```"),
        ("    indented\n      more", "```\nindented\n  more\n```"),
        ("````md\n```js\nx\n```\n````", "```\n`\u200b`\u200b`js\nx\n`\u200b`\u200b`\n```"),
        ("text with ``` inside", "text with `\u200b`\u200b` inside"),
        ("```\n```", ""),
        ("- step:\n\n  ```sh\n  ls\n  ```", "• step:\n\n```\nls\n```"),
        ("> ```\n> code\n> ```", "> ```\n> code\n> ```"),
    ],
)
def test_code_blocks_drop_the_language_and_keep_content(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn


def test_table_is_an_aligned_monospace_block() -> None:
    markdown = (
        "| Name | Qty | Note |\n"
        "|:-----|----:|:----:|\n"
        "| **apple** | 3 | [link](https://x.io) |\n"
        "| kiwi & co | 12 | `x<y` |\n"
    )
    assert to_mrkdwn(markdown) == (
        "```\n"
        "Name      | Qty |         Note\n"
        "----------+-----+--------------------\n"
        "apple     |   3 | link (https://x.io)\n"
        "kiwi &amp; co |  12 |         x&lt;y\n"
        "```"
    )


# --- partial Markdown: prefixes of an answer being streamed -------------------------------


@pytest.mark.parametrize(
    ("prefix", "shown"),
    [
        ("Some **bol", "Some bol"),
        ("Some **bold** and *ita", "Some *bold* and ita"),
        ("Some ~~stri", "Some stri"),
        ("Trailing *", "Trailing"),
        ("Trailing **", "Trailing"),
        ("Almost **done*", "Almost _done_"),
        ("See [the guide](https://ex", "See the guide"),
        ("See [the guide]", "See the guide"),
        ("See [the gui", "See the gui"),
        ("![chart](https://x.io/c", "chart"),
        ("```python\nprint(1)", "```\nprint(1)\n```"),
        ("Intro\n\n```python", "Intro"),
        ("Intro\n\n```python\n", "Intro"),
        ("# ", ""),
        ("Done.\n\n- **Ste", "Done.\n\n• Ste"),
        ("| a | b |\n|---|---|\n| 1 | **tw", "```\na | b\n--+---\n1 | tw\n```"),
    ],
)
def test_prefix_renders_without_dangling_markup(prefix: str, shown: str) -> None:
    assert to_mrkdwn(prefix) == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Use **kwargs", "Use **kwargs"),
        ("See [the guide](https://ex", "See [the guide](<https://ex>"),
        ("array[0", "array[0"),
        ("Trailing *", "Trailing *"),
    ],
)
def test_final_text_keeps_unmatched_markers_literally(text: str, shown: str) -> None:
    assert to_mrkdwn(text, final=True) == shown


def test_only_the_block_being_written_is_treated_as_partial() -> None:
    """An unmatched marker in a finished paragraph is what the model meant: keep it."""
    assert to_mrkdwn("Use **kwargs here.\n\nNext **par") == "Use **kwargs here.\n\nNext par"
    assert to_mrkdwn("Use **kwargs\n\n```py\nx") == "Use **kwargs\n\n```\nx\n```"


# --- properties -------------------------------------------------------------------------

MARKDOWNISH = st.lists(
    st.sampled_from(
        [
            *"*_~`[]()<>!&#|-+:. \n\\\"'abc123",
            *("https://", "```", "- ", "1. ", "> ", "    ", "|---|", "[x]: ", "<!here>", "<@U1>"),
            *("\t", "\r\n", "&amp;", "[ ] ", "\u200b", "\x00", "é", "👍", "](", "![", "***", "~~"),
        ]
    ),
    max_size=80,
).map("".join)


@settings(deadline=None, max_examples=200)
@given(st.one_of(st.text(max_size=200), MARKDOWNISH), st.booleans())
def test_any_text_renders_safely(markdown: str, final: bool) -> None:
    assert_slack_safe(to_mrkdwn(markdown, final=final))


@settings(deadline=None, max_examples=30)
@given(documents(), st.integers(7, 60))
def test_every_prefix_of_an_answer_renders_safely(answer: str, step: int) -> None:
    for end in [*range(0, len(answer), step), len(answer)]:
        prefix = to_mrkdwn(answer[:end])
        assert_slack_safe(prefix)
