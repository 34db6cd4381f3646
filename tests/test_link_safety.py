"""Links that cannot lie and mentions that cannot ping (issue 15, findings 4 and 5), on every
path a model's words take to Slack: the mrkdwn renderer (interim and final edits, continuation
messages, notes) and native streams (chat.startStream / appendStream / stopStream), checked
against what the fake Slack received."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from markdown_it.token import Token

from bot.render import text
from bot.render.budget import EditBudget
from bot.render.contract import Outcome
from bot.render.mrkdwn import MarkdownGuard, UnsafeMarkdown, disguised, guard_markdown
from bot.render.native import NativeReply
from bot.render.reply import ReplyStream
from bot.slack import SlackGateway, connect_slack
from bot.store import Store, connect_redis
from tests.fakes.slack import Call, FakeSlack
from tests.views import bot_replies

CHANNEL = "C0CHAN"
TEAM = "T0001"
WJ = "\u2060"

# What Slack would act on: a broadcast not inside a word, address or path, or a special token
# (in Markdown also written with an entity; in mrkdwn ``&lt;`` is the escape, shown as ``<``).
LOUD = re.compile(r"(?<![^\W_])(?<![/.])@(?:here|channel|everyone)|<[!@#]", re.IGNORECASE)
LOUD_MARKDOWN = re.compile(rf"{LOUD.pattern}|&lt;[!@#]", re.IGNORECASE)
# A mrkdwn link, and the label it shows.
MRKDWN_LINK = re.compile(r"<([^<>|]+)\|([^<>]*)>")

# An answer a prompt-injected model might write: every way to dress up a link, and broadcasts.
HOSTILE = (
    "# Account notice @channel\n\n"
    "Log in at [https://good.com](https://evil.com) or [good.com](https://evil.com/login) or "
    "[www.good.com/account](https://good.com.evil.com/account).\n\n"
    "![https://good.com/logo.png](https://evil.com/pixel.png) Write to "
    "[support@good.com](mailto:thief@evil.com) or [mailto:help@good.com](mailto:x@evil.com).\n\n"
    "- Our docs: [good.com/docs][docs], also [good.com]\n"
    "- Look-alike: [gооgle.com](https://gооgle.com) and <https://evil.com|https://good.com>\n\n"
    "> @here please act now, @everyone too; ping <!here> <!channel> <@U0BOSS> <#C0GEN> "
    "<!subteam^S0ADMIN> &lt;!everyone&gt;\n\n"
    "| who | where |\n|---|---|\n| @channel | [https://good.com](https://evil.com) |\n\n"
    "Kept: [the docs](https://evil.com/docs), [GOOD.com](https://good.com/x), "
    "[www.good.com](https://good.com), me@here.io, https://x.io/@here\n\n"
    "[docs]: https://evil.com/docs\n"
    "[good.com]: https://evil.com/home\n"
)


def commonmark_links(markdown: str) -> list[tuple[str, str]]:
    """(label, target) of every link and image a CommonMark reader sees in ``markdown``
    (autolinks aside: they show their URL)."""
    md = MarkdownIt("commonmark").enable("table")
    found: list[tuple[str, str]] = []

    def walk(tokens: list[Token]) -> None:
        label: list[str] | None = None
        href = ""
        for token in tokens:
            if token.type == "inline":
                walk(token.children or [])
            elif token.type == "link_open" and token.markup == "autolink":
                assert "|" not in str(token.attrGet("href")), markdown  # shown as the URL
            elif token.type == "link_open":
                label, href = [], str(token.attrGet("href"))
            elif token.type == "link_close" and label is not None:
                found.append(("".join(label), href))
                label = None
            elif token.type == "image":
                alt = "".join(child.content for child in token.children or [])
                found.append((alt, str(token.attrGet("src"))))
            elif label is not None:
                label.append(token.content)

    walk(md.parse(markdown))
    return found


def assert_no_disguise_in_markdown(markdown: str) -> None:
    links = commonmark_links(markdown)
    assert links, markdown
    for label, href in links:
        assert not disguised(label, href), (label, href, markdown)
    assert "|https://good.com>" not in markdown  # Slack's own <url|label>, even unparsed


def unescape(mrkdwn: str) -> str:
    """The text Slack shows for mrkdwn (the word joiner aside)."""
    return mrkdwn.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").replace(WJ, "")


def assert_no_disguise_in_mrkdwn(out: str) -> None:
    for href, label in MRKDWN_LINK.findall(out):
        assert not disguised(unescape(label), unescape(href)), (label, href, out)


def assert_quiet(out: str, *, markdown: bool = False) -> None:
    if not markdown:  # a mrkdwn link's URL is not text Slack reads mentions in
        out = re.sub(r"<[^<>|]*(?:\|([^<>]*))?>", lambda m: m.group(1) or "", out)
    assert not (LOUD_MARKDOWN if markdown else LOUD).search(out), out


# -- the mrkdwn renderer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("[https://good.com](https://evil.com)", "https://good.com (<https://evil.com>)"),
        ("[good.com](https://evil.com/a)", "good.com (<https://evil.com/a>)"),
        (
            "[www.good.com/x](https://good.com.evil.com/x)",
            "www.good.com/x (<https://good.com.evil.com/x>)",
        ),
        (
            "![https://good.com/a.png](https://evil.com/p.png)",
            "https://good.com/a.png (<https://evil.com/p.png>)",
        ),
        ("[good.com][r]\n\n[r]: https://evil.com", "good.com (<https://evil.com>)"),
        ("[good.com]\n\n[good.com]: https://evil.com", "good.com (<https://evil.com>)"),
        ("[support@good.com](mailto:x@evil.com)", "support@good.com (<mailto:x@evil.com>)"),
        ("[mailto:a@good.com](mailto:b@good.com)", "mailto:a@good.com (<mailto:b@good.com>)"),
        ("[a@good.com](https://good.com)", "a@good.com (<https://good.com>)"),
        ("[log in at good.com](https://evil.com)", "log in at good.com (<https://evil.com>)"),
        ("[gооgle.com](https://gооgle.com)", "gооgle.com (<https://xn--ggle-55da.com>)"),
        ("<https://xn--ggle-55da.com>", "<https://xn--ggle-55da.com>"),
        ("<https://evil.com|https://good.com>", "<https://evil.com%7Chttps://good.com>"),
        # Kept: the label names the target's host (case, www. and a path aside), or nothing.
        ("[HTTPS://GOOD.COM/x](https://good.com/y)", "<https://good.com/y|HTTPS://GOOD.COM/x>"),
        ("[www.good.com](https://good.com)", "<https://good.com|www.good.com>"),
        (
            "[Support@Good.com](mailto:support@good.com)",
            "<mailto:support@good.com|Support@Good.com>",
        ),
        ("[the docs](https://evil.com)", "<https://evil.com|the docs>"),
        ("[v1.2 notes](https://x.io)", "<https://x.io|v1.2 notes>"),
        ("<me@x.io>", "<mailto:me@x.io|me@x.io>"),
    ],
)
def test_a_link_label_naming_another_place_shows_the_real_target(
    markdown: str, mrkdwn: str
) -> None:
    assert text.render_final(markdown) == mrkdwn
    assert_no_disguise_in_mrkdwn(text.render(markdown))


def test_every_mention_and_disguise_of_a_hostile_answer_is_defused_in_mrkdwn() -> None:
    for cut in range(0, len(HOSTILE) + 1, 7):  # the interim forms, as the answer grows
        out = text.render(HOSTILE[:cut])
        assert_quiet(out)
        assert_no_disguise_in_mrkdwn(out)
    out = text.render_final(HOSTILE)
    assert_quiet(out)
    assert_no_disguise_in_mrkdwn(out)
    # Still readable: the broadcasts as written (an invisible joiner after the @), real targets
    # shown, honest links and addresses kept.
    assert f"@{WJ}channel" in out and f"@{WJ}here please act now, @{WJ}everyone" in out
    assert "https://good.com (<https://evil.com>)" in out
    assert "<https://evil.com/docs|the docs>" in out
    assert "me@here.io" in out and "<https://x.io/@here>" in out


# -- the edit renderer: interim and final edits, continuation messages, notes ------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def gateway(slack: FakeSlack, session: aiohttp.ClientSession) -> SlackGateway:
    return SlackGateway(connect_slack(slack.bot_token, slack.api_url, session))


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    client = connect_redis(redis_url)
    yield Store.open(client)
    await client.aclose()


def budget(store: Store, method: str = "chat.update") -> EditBudget:
    return EditBudget(store.budgets, method=method, per_minute=6000, burst=50, min_interval=0.05)


def edit_reply(gateway: SlackGateway, store: Store, thread: str, **options: Any) -> ReplyStream:
    return ReplyStream(
        gateway,
        budget(store),
        team=TEAM,
        channel=CHANNEL,
        thread_ts=thread,
        limit=400,  # several continuation messages
        render=text.render,
        render_final=text.render_final,
        split=text.split,
        **options,
    )


def text_objects(blocks: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Every mrkdwn text object of a message's blocks."""
    found = []
    for block in blocks or []:
        for item in [block.get("text"), *(block.get("elements") or [])]:
            if isinstance(item, dict) and item.get("type") == "mrkdwn":
                found.append(item)
    return found


def sent_texts(slack: FakeSlack) -> list[tuple[Call, str]]:
    """Every text the bot sent: the message text and each mrkdwn text object of its blocks."""
    out = []
    for call in slack.calls:
        if call.method in ("chat.postMessage", "chat.update"):
            out.append((call, str(call.args.get("text") or "")))
            out += [(call, obj["text"]) for obj in text_objects(call.args.get("blocks"))]
    return out


async def test_edits_continuations_and_notes_reach_slack_defused_and_verbatim(
    slack: FakeSlack, gateway: SlackGateway, store: Store
) -> None:
    thread = slack.add_message(CHANNEL, "<@U0BOT> a question")
    reply = edit_reply(gateway, store, thread)
    async with reply:
        for index in range(0, len(HOSTILE), 9):
            reply.append(HOSTILE[index : index + 9])
            if index % 90 == 0:
                await asyncio.sleep(0.01)
        await reply.finish(Outcome.INTERRUPTED)  # a note under the last message too

    posts = slack.calls_to("chat.postMessage")
    assert len(posts) >= 3  # the placeholder and continuation messages
    assert len(slack.calls_to("chat.update")) >= 2
    for _call, sent in sent_texts(slack):
        assert_quiet(sent)
        assert_no_disguise_in_mrkdwn(sent)
    for call in slack.calls_to("chat.postMessage") + slack.calls_to("chat.update"):
        objects = text_objects(call.args.get("blocks"))
        assert objects and all(obj.get("verbatim") is True for obj in objects), call.args
    shown = "\n".join(m.text for m in bot_replies(slack, CHANNEL, thread))
    assert "https://good.com (<https://evil.com>)" in shown
    assert f"@{WJ}everyone" in shown


# -- native streams --------------------------------------------------------------------------


def native_reply(
    gateway: SlackGateway, store: Store, thread: str, *, flush_chars: int = 1000
) -> NativeReply:
    def edits(reply_id: str) -> ReplyStream:
        return edit_reply(gateway, store, thread, reply_id=reply_id)

    return NativeReply(
        gateway,
        appends=budget(store, "chat.appendStream"),
        starts=budget(store, "chat.startStream"),
        team=TEAM,
        channel=CHANNEL,
        thread_ts=thread,
        recipient=("U0ASKER", TEAM),
        fallback=edits,
        flush_chars=flush_chars,
    )


def streamed(slack: FakeSlack) -> list[str]:
    """The markdown_text of every native stream call, in order."""
    methods = ("chat.startStream", "chat.appendStream", "chat.stopStream")
    return [
        str(c.args.get("markdown_text") or "") for c in slack.calls if c.method in methods and c.ok
    ]


@pytest.mark.parametrize("piece", [1, 5, 23])
async def test_a_native_stream_shows_real_targets_and_no_mentions_in_every_call(
    slack: FakeSlack, gateway: SlackGateway, store: Store, piece: int
) -> None:
    thread = slack.add_message(CHANNEL, "<@U0BOT> a question")
    reply = native_reply(gateway, store, thread, flush_chars=40)
    async with reply:
        for index in range(0, len(HOSTILE), piece):
            reply.append(HOSTILE[index : index + piece])
            if index % (piece * 8) == 0:
                await asyncio.sleep(0.02)
        finished = await reply.finish(Outcome.INTERRUPTED)
    assert finished.text == HOSTILE

    assert not slack.calls_to("chat.update")  # streamed natively to the end
    appends = slack.calls_to("chat.appendStream")
    assert len(appends) >= 2
    (message,) = bot_replies(slack, CHANNEL, thread)
    assert not message.streaming
    assert message.text == "".join(streamed(slack))
    for sent in streamed(slack):
        assert_quiet(sent, markdown=True)
    assert_quiet(message.text, markdown=True)
    assert_no_disguise_in_markdown(message.text)
    assert "https://good.com (<https://evil.com>)" in message.text
    assert "[the docs](https://evil.com/docs)" in message.text  # honest links untouched
    assert f"@{WJ}here please act now" in message.text
    stop = slack.calls_to("chat.stopStream")[-1]
    objects = text_objects(stop.args.get("blocks"))
    assert objects and all(obj.get("verbatim") is True for obj in objects)


async def test_a_mention_split_across_appends_is_still_neutralised(
    slack: FakeSlack, gateway: SlackGateway, store: Store
) -> None:
    thread = slack.add_message(CHANNEL, "<@U0BOT> a question")
    reply = native_reply(gateway, store, thread, flush_chars=1)
    async with reply:
        for delta in [
            "Hi ",
            "@",
            "chan",
            "nel and ",
            "<",
            "!here",
            "> and [good",
            ".com](https://ev",
        ]:
            reply.append(delta)
            await asyncio.sleep(0.15)  # each delta its own append
        reply.append("il.com) done")
        await reply.finish(Outcome.COMPLETE)
    (message,) = bot_replies(slack, CHANNEL, thread)
    assert len(slack.calls_to("chat.appendStream")) >= 3
    assert message.text == f"Hi @{WJ}channel and <{WJ}!here> and good.com (<https://evil.com>) done"


# -- the guard itself, for any answer and any way it is cut into appends ------------------------

# Pieces a hostile or careless answer is made of: links of every kind, definitions before and
# after their use, brackets, code, containers, tables, mentions, entities.
PIECES = st.sampled_from(
    [
        "[good.com](https://evil.com)",
        "[docs](https://x.io)",
        "![good.com](https://evil.com/i.png)",
        "[![good.com](https://e.com/i)](https://evil.com)",
        "[sup@good.com](mailto:x@evil.com)",
        "[www.good.com](https://www.good.com)",
        "<https://evil.com|https://good.com>",
        "[good.com][r]",
        "[good.com]",
        "[r]",
        "[x][]",
        "\n\n[r]: https://evil.com\n\n",
        "\n\n[good.com]: https://evil.com/2\n",
        "[a]:",
        " https://evil.com",
        "https://good.com",
        "@here",
        "@",
        "channel",
        "<!here>",
        "&lt;",
        "&#60;@U1&#62;",
        "!",
        "[",
        "]",
        "(",
        ")",
        "<",
        ">",
        "`",
        "```\n",
        "~~~\n",
        "\\",
        "**",
        " text ",
        "\n",
        "\n\n",
        "- ",
        "> ",
        "1. ",
        "    ",
        "===",
        "---",
        "| a | b |\n|---|---|\n| ",
        " | ",
    ]
)
ANSWERS = st.lists(PIECES, min_size=1, max_size=25).map("".join)


def stream_through_guard(answer: str, cuts: list[int], guard: Any = None) -> str:
    """What Slack's message shows when ``answer`` arrives cut at ``cuts`` (each piece offered to
    the guard in turn, the rest at the end), with one guard or a fresh one per call."""
    taken, shown = 0, ""
    for cut in sorted({*cuts, len(answer)}):
        if cut > taken:
            take = guard.take if guard else guard_markdown
            out, used = take(shown, answer[taken:cut])
            taken, shown = taken + used, shown + out
    take = guard.take if guard else guard_markdown
    out, used = take(shown, answer[taken:], final=True)
    assert used == len(answer) - taken
    return shown + out


@settings(deadline=None, max_examples=60)
@given(st.lists(st.integers(1, len(HOSTILE) - 1), max_size=40), st.booleans())
def test_any_cutting_of_the_hostile_answer_streams_no_disguise_or_mention(
    cuts: list[int], crlf: bool
) -> None:
    answer = HOSTILE.replace("\n", "\r\n") if crlf else HOSTILE
    shown = stream_through_guard(answer, cuts, MarkdownGuard())
    assert_quiet(shown, markdown=True)
    assert_no_disguise_in_markdown(shown)


@settings(deadline=None, max_examples=300)
@given(ANSWERS, st.lists(st.integers(1, 400), max_size=30))
def test_any_answer_cut_anyhow_streams_safely_or_goes_to_the_edit_renderer(
    answer: str, cuts: list[int]
) -> None:
    try:
        shown = stream_through_guard(answer, cuts, MarkdownGuard())
    except UnsafeMarkdown:  # NativeReply hands the answer to the edit renderer: mrkdwn
        shown = ""
    for label, href in commonmark_links(shown):
        assert not disguised(label, href), (label, href, shown)
    assert_quiet(shown, markdown=True)


@settings(deadline=None, max_examples=150)
@given(ANSWERS, st.lists(st.integers(1, 400), max_size=30))
def test_the_guard_reading_only_the_last_block_again_decides_as_a_full_reading(
    answer: str, cuts: list[int]
) -> None:
    try:
        full = stream_through_guard(answer, cuts)
    except UnsafeMarkdown:
        full = "unsafe"
    try:
        incremental = stream_through_guard(answer, cuts, MarkdownGuard())
    except UnsafeMarkdown:
        incremental = "unsafe"
    assert incremental == full


@settings(deadline=None, max_examples=300)
@given(ANSWERS, st.integers(0, 400))
def test_any_answer_renders_safely_in_mrkdwn(answer: str, cut: int) -> None:
    for out in (text.render_final(answer), text.render(answer[:cut])):
        assert_no_disguise_in_mrkdwn(out)
        assert_quiet(out)


async def test_every_mrkdwn_text_object_the_renderer_sends_is_verbatim(
    slack: FakeSlack, gateway: SlackGateway, store: Store
) -> None:
    thread = slack.add_message(CHANNEL, "<@U0BOT> a question")
    reply = edit_reply(gateway, store, thread)
    async with reply:
        reply.append("A short answer, see #general")
        await slack.wait_call("chat.update", ok=True)
        await reply.finish(Outcome.STOPPED)  # text, then the note under it
    calls = slack.calls_to("chat.postMessage") + slack.calls_to("chat.update")
    objects = [obj for call in calls for obj in text_objects(call.args.get("blocks"))]
    assert len(objects) >= 4  # placeholder; interim text + indicator; final text + note
    assert all(obj.get("verbatim") is True for obj in objects), objects


async def test_a_native_stream_shows_the_real_target_of_a_disguised_link(
    slack: FakeSlack, gateway: SlackGateway, store: Store
) -> None:
    thread = slack.add_message(CHANNEL, "<@U0BOT> a question")
    answer = (
        "Sign in: [https://good.com/login](https://evil.com/login), "
        "![good.com](https://evil.com/p.png), [support@good.com](mailto:x@evil.com), "
        "[good.com][1] or <https://evil.com|https://good.com>; [docs](https://good.com/docs)."
        "\n\n[1]: https://evil.com\n"
    )
    reply = native_reply(gateway, store, thread, flush_chars=10)
    async with reply:
        for index in range(0, len(answer), 6):
            reply.append(answer[index : index + 6])
            await asyncio.sleep(0.01)
        await reply.finish(Outcome.COMPLETE)
    (message,) = bot_replies(slack, CHANNEL, thread)
    assert len(slack.calls_to("chat.appendStream")) >= 2
    assert not slack.calls_to("chat.update")
    assert_no_disguise_in_markdown(message.text)
    assert message.text.startswith(
        "Sign in: https://good.com/login (<https://evil.com/login>), "
        "good.com (<https://evil.com/p.png>), support@good.com (<mailto:x@evil.com>), "
        # Used before its definition came, a reference stays literal text (shown "[good.com][1]").
        "\\[good.com\\]\\[1\\] or <https://evil.com%7Chttps://good.com>; "
        "[docs](https://good.com/docs)."
    )


def test_an_unfinished_link_waits_and_a_very_long_one_is_let_go_as_text() -> None:
    assert guard_markdown("", "Read [the guide](https://ev") == ("Read ", 5)
    assert guard_markdown("", "Read [the guide](https://ev", final=True)[0] == (
        "Read \\[the guide\\](https://ev"  # never completed: literal, as CommonMark reads it
    )
    label = "word " * 250
    out, used = guard_markdown("", f"See [{label}")
    assert out.startswith("See \\[word") and used == len(f"See [{label}")
    assert guard_markdown("", "Ping @") == ("Ping ", 5)  # could be @here
    assert guard_markdown("", "Ping @here") == ("Ping ", 5)  # or @heretofore: wait and see
    assert guard_markdown("", "Ping @here now") == (f"Ping @{WJ}here now", 14)
