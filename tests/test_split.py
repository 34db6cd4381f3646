"""Splitting a long answer into Slack messages: where the cuts go, that every part fits and
renders balanced, and that the parts together show everything the whole answer shows."""

from __future__ import annotations

import doctest
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bot.render.mrkdwn
import bot.render.split
from bot.render.mrkdwn import parse, to_mrkdwn
from bot.render.split import MIN_LIMIT, Split, split_all, split_point
from tests.test_mrkdwn import assert_slack_safe, documents


def render(markdown: str) -> str:
    return to_mrkdwn(markdown, final=True)


def content(rendered: str) -> str:
    """What a reader gets from rendered mrkdwn, without layout a split may change.

    Dropped: whitespace, code fence lines, quote markers, table rules and list markers (a tail
    cut inside a list item shows the item's marker again).
    """
    kept = []
    for line in rendered.split("\n"):
        body = line.lstrip("> ").strip()
        if body == "```" or (body and set(body) <= set("-+")):
            continue
        while True:  # a tail may open with several markers: "1. - item"
            body = body.lstrip("•◦▪☐☑ ")
            digits = len(body) - len(body.lstrip("0123456789"))
            if not digits or body[digits : digits + 1] != ".":
                break
            body = body[digits + 1 :]
        kept.append("".join(body.split()))
    return "".join(kept)


def fences(markdown: str) -> list[tuple[str, str]]:
    """(info string, code) of every fenced code block, in order."""
    return [(t.info.strip(), t.content) for t in parse(markdown) if t.type == "fence"]


def assert_parts_valid(whole: str, parts: list[str], limit: int) -> None:
    """Each part fits and is balanced; split code blocks keep their language and every line."""
    assert all(part.strip() for part in parts)
    for part in parts:
        rendered = render(part)
        assert len(rendered) <= limit, (part, rendered)
        assert rendered.strip(), part
        assert_slack_safe(rendered)
    pieces = [fence for part in parts for fence in fences(part) if fence[1].strip()]
    for info, code in (fence for fence in fences(whole) if fence[1].strip()):
        joined = ""
        while joined != code:
            assert pieces, f"code block {info!r} lost"
            piece_info, piece = pieces.pop(0)
            assert piece_info == info, "a reopened fence must keep its language"
            joined += piece
            assert code.startswith(joined)


def is_subsequence(small: str, big: str) -> bool:
    chars = iter(big)
    return all(ch in chars for ch in small)


# --- examples ------------------------------------------------------------------------------


def test_text_that_fits_is_not_split() -> None:
    assert split_point("A short answer.", 100) is None
    assert split_all("A short answer.", 100) == ["A short answer."]


def test_cut_goes_between_paragraphs() -> None:
    paragraphs = [f"Paragraph {n} has a handful of words in it." for n in range(6)]
    markdown = "\n\n".join(paragraphs)
    split = split_point(markdown, 100)
    assert split == Split("\n\n".join(paragraphs[:2]) + "\n\n", "\n\n".join(paragraphs[2:]))


def test_cut_inside_a_code_block_closes_and_reopens_the_fence_with_its_language() -> None:
    code = "".join(f"print({n})\n" for n in range(40))
    markdown = f"Intro.\n\n```python\n{code}```\n\nOutro."
    parts = split_all(markdown, 120)
    assert len(parts) > 2
    assert parts[0].startswith("Intro.\n\n```python\nprint(0)\n")
    assert all(part.startswith("```python\n") for part in parts[1:])
    assert all("```\n" in part for part in parts)
    assert parts[-1].endswith("```\n\nOutro.")
    assert_parts_valid(markdown, parts, 120)
    assert "".join(code for _, code in fences("".join(parts))) == code


def test_info_string_is_reopened_verbatim() -> None:
    markdown = "~~~~ c++ {.numberLines}\n" + "x;\n" * 60 + "~~~~\n"
    parts = split_all(markdown, 80)
    assert all(part.startswith("~~~~ c++ {.numberLines}\n") for part in parts)
    assert_parts_valid(markdown, parts, 80)


def test_code_block_in_a_list_item_is_reopened_inside_the_item() -> None:
    """The tail repeats the item's marker, so the code (and what streams in later) stays in it."""
    markdown = "10. Run this:\n\n    ```bash\n" + "    echo hi\n" * 30 + "    ```\n11. Done."
    parts = split_all(markdown, 100)
    assert parts[0].endswith("    echo hi\n    ```\n")
    assert all(part.startswith("10. ```bash\n    echo hi\n") for part in parts[1:-1])
    assert render(parts[1]).startswith("10.\n```\necho hi\n")
    assert render(parts[-1]).endswith("11. Done.")
    assert_parts_valid(markdown, parts, 100)


def test_code_block_in_a_quote_is_reopened_inside_the_quote() -> None:
    markdown = "> ```js\n" + "> f();\n" * 40 + "> ```"
    parts = split_all(markdown, 90)
    assert all(render(part).startswith("> ```\n> f();") for part in parts)
    assert_parts_valid(markdown, parts, 90)


def test_a_code_block_that_fits_the_next_message_moves_there_whole() -> None:
    code = "```sh\n" + "ls -la\n" * 12 + "```"
    markdown = f"Short intro.\n\n{code}\n\nAfter."
    split = split_point(markdown, 100)
    assert split == Split("Short intro.\n\n", f"{code}\n\nAfter.")


def test_table_split_between_rows_repeats_the_header() -> None:
    rows = "".join(f"| row {n} | value {n} |\n" for n in range(20))
    markdown = "| Name | Value |\n|---|---:|\n" + rows
    parts = split_all(markdown, 120)
    assert len(parts) > 1
    assert all(part.startswith("| Name | Value |\n|---|---:|\n") for part in parts)
    headers = [render(part).split("\n")[1:3] for part in parts]
    assert all(h[0].split() == ["Name", "|", "Value"] and set(h[1]) == {"-", "+"} for h in headers)
    assert_parts_valid(markdown, parts, 120)


def test_list_is_cut_between_items_and_keeps_its_numbers() -> None:
    markdown = "\n".join(f"{n}. Item number {n} of the list" for n in range(1, 13))
    parts = split_all(markdown, 100)
    assert [render(part).split("\n")[0][:3] for part in parts] == ["1. ", "4. ", "7. ", "10."]


def test_nested_list_stays_nested_after_a_cut() -> None:
    nested = "".join(f"    - nested item {n}\n" for n in range(12))
    markdown = f"- top item\n{nested}- last"
    parts = split_all(markdown, 90)
    assert len(parts) > 1
    assert all("```" not in render(part) for part in parts)
    assert render(parts[1]).startswith("• ◦ nested item")
    assert render(parts[1]).split("\n")[1].startswith("    ◦ nested item")
    assert content(render(markdown)) == content("\n".join(render(p) for p in parts))


def test_lazily_numbered_list_keeps_counting_after_a_cut() -> None:
    markdown = "\n".join(f"1. Item {n} of a list numbered lazily" for n in range(1, 10))
    parts = split_all(markdown, 100)
    numbers = [line.split(".")[0] for part in parts for line in render(part).split("\n")]
    assert numbers == [str(n) for n in range(1, 10)]


def test_cut_inside_an_ordered_item_keeps_the_numbering() -> None:
    markdown = (
        "1. Step one:\n\n   ```sh\n" + "   make\n" * 20 + "   ```\n1. Step two\n1. Step three"
    )
    parts = split_all(markdown, 90)
    assert render(parts[-1]).endswith("2. Step two\n3. Step three")


def test_paragraph_is_cut_at_a_line_break_outside_emphasis() -> None:
    markdown = "**bold\nstill bold** after\n" + "\n".join(f"line {n} of text" for n in range(10))
    split = split_point(markdown, 80)
    assert split is not None
    assert split.head.startswith("**bold\nstill bold** after\n")
    assert render(split.head).startswith("*bold still bold* after")


def test_reference_definitions_reach_every_part() -> None:
    paragraphs = "\n\n".join(f"See [the docs][docs] in paragraph {n}." for n in range(8))
    markdown = f"{paragraphs}\n\n[docs]: https://example.com/docs"
    parts = split_all(markdown, 120)
    assert len(parts) > 1
    for part in parts:
        assert "[the docs]" not in render(part)
        assert "<https://example.com/docs|the docs>" in render(part)


def test_one_enormous_line_is_cut_at_spaces() -> None:
    markdown = " ".join(f"word{n}" for n in range(200))
    parts = split_all(markdown, 100)
    assert all(len(render(part)) <= 100 for part in parts)
    assert " ".join(render(part) for part in parts) == markdown


def test_one_enormous_word_is_hard_cut() -> None:
    parts = split_all("x" * 1000, 100)
    assert [len(render(part)) for part in parts] == [100] * 10


def test_escaping_counts_towards_the_limit() -> None:
    parts = split_all("&" * 300, 100)
    assert all(len(render(part)) <= 100 for part in parts)
    assert "".join(render(part) for part in parts) == "&amp;" * 300


def test_cut_inside_a_paragraph_of_a_quote_stays_in_the_quote() -> None:
    markdown = "\n".join(f"> quoted line {n} here" for n in range(12))
    parts = split_all(markdown, 80)
    assert all(line.startswith("> ") for p in parts for line in render(p).split("\n"))


def test_carriage_returns_are_normalised() -> None:
    split = split_point("one\r\n\r\n" + "two words\r\n" * 20, 64)
    assert split is not None
    assert "\r" not in split.head + split.tail


def test_limit_below_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        split_point("text", MIN_LIMIT - 1)
    with pytest.raises(ValueError, match="at least"):
        split_all("text", 10)


def test_deep_nesting_with_a_small_limit_still_fits() -> None:
    markdown = "> " * 12 + "```py\n" + ("> " * 12 + "code line\n") * 6
    parts = split_all(markdown, MIN_LIMIT)
    assert all(len(render(part)) <= MIN_LIMIT for part in parts)
    assert all(render(part).count("```") % 2 == 0 for part in parts)


def test_twelve_thousand_lines_of_code_split_fast() -> None:
    code = "".join(f"    value_{n} = compute(a, b) + {n}  # step {n}\n" for n in range(12_000))
    markdown = f"Here you go:\n\n```python\n{code}```\n\nThat is all."
    started = time.perf_counter()
    parts = split_all(markdown, 3900)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0
    assert len(parts) > 100
    assert all(len(render(part)) <= 3900 for part in parts)
    assert "".join(c for _, c in fences("".join(parts))) == code


def test_many_code_blocks_split_fast() -> None:
    step = "Then run:\n\n```bash\n" + "ls -la /tmp/some/dir\n" * 11 + "```\n\n"
    markdown = step * 1000
    started = time.perf_counter()
    parts = split_all(markdown, 3900)
    assert time.perf_counter() - started < 1.0
    assert all(len(render(part)) <= 3900 for part in parts)
    assert content("\n".join(render(p) for p in parts)) == content(render(markdown))


def test_docstring_examples() -> None:
    for module in (bot.render.mrkdwn, bot.render.split):
        assert doctest.testmod(module).failed == 0


# --- properties ----------------------------------------------------------------------------


@settings(deadline=None, max_examples=60)
@given(documents(tables=False), st.integers(120, 600))
def test_split_all_loses_nothing(markdown: str, limit: int) -> None:
    parts = split_all(markdown, limit)
    assert_parts_valid(markdown, parts, limit)
    assert content("\n".join(render(p) for p in parts)) == content(render(markdown))


@settings(deadline=None, max_examples=40)
@given(documents(tables=True), st.integers(120, 600))
def test_split_all_with_tables_loses_nothing(markdown: str, limit: int) -> None:
    """A table cut between rows repeats its header, so the parts may show more, never less."""
    parts = split_all(markdown, limit)
    assert_parts_valid(markdown, parts, limit)
    assert is_subsequence(content(render(markdown)), content("\n".join(render(p) for p in parts)))


@settings(deadline=None, max_examples=25)
@given(documents(tables=False, references=False), st.integers(150, 600), st.integers(20, 200))
def test_streaming_split_freezes_parts_that_fit(markdown: str, limit: int, chunk: int) -> None:
    """The reply renderer's loop: append deltas, cut when the buffer renders past the limit.

    (Without reference-style links: a definition arriving after a part froze cannot reach it.)
    """
    frozen: list[str] = []
    buffer = ""
    for start in range(0, len(markdown), chunk):
        buffer += markdown[start : start + chunk]
        while len(to_mrkdwn(buffer)) > limit and (split := split_point(buffer, limit)):
            frozen.append(split.head)
            buffer = split.tail
    parts = [*frozen, *split_all(buffer, limit)]  # the finished answer is rendered final
    for part in parts:
        assert len(render(part)) <= limit
        assert_slack_safe(render(part))
    assert is_subsequence(content(render(markdown)), content("\n".join(render(p) for p in parts)))


@settings(deadline=None, max_examples=100)
@given(st.text(max_size=400), st.integers(MIN_LIMIT, 200))
def test_any_text_splits_into_parts_that_fit(markdown: str, limit: int) -> None:
    for part in split_all(markdown, limit):
        rendered = render(part)
        assert len(rendered) <= limit
        assert_slack_safe(rendered)
