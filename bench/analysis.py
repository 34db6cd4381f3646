"""What one benchmark run measured: per-reply timelines rebuilt from the fakes' records, and the
run's figures (percentiles, visible lag against its lower bound, calls, correctness).

    replies = [analyse_reply(conversation, calls, emitted) for ...]
    set_bounds(replies, {"native": append_params, "edit": update_params})
    summary = summarise(replies, all_calls)

Both renderers are understood: the edit renderer's chat.postMessage / chat.update and the
native renderer's chat.startStream / appendStream / stopStream (and its fallback's edits).

Pure functions over plain records: no I/O, no clocks. Times are seconds on the benchmark
process's monotonic clock, which the fake Slack and the fake model both stamp their records with.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tests.fakes.slack import Call

Renderer = Literal["native", "edit"]
RENDERERS: tuple[Renderer, ...] = ("native", "edit")


@dataclass(frozen=True, slots=True)
class BoundParams:
    """What the lower bound on visible lag depends on (see ``lag_bound``)."""

    round_trip: float  # seconds from sending a Slack call to its effect being visible
    rate: float  # text calls per second one workspace may make (chat.update or appendStream)
    burst: int  # the budget's burst (the bucket is full when the run starts)
    min_gap: float = 0.0  # least seconds between two text calls on one message (beyond round_trip)


@dataclass(frozen=True, slots=True)
class Conversation:
    """One mention the benchmark sent, and the answer the model gives it."""

    index: int
    team: str
    channel: str
    ts: str
    sent_at: float
    answer: str  # the model's Markdown
    expected: str  # ``render(answer)``: what the reply's messages must show when done
    concurrent_in_workspace: int  # replies streaming at once in its workspace


@dataclass
class Reply:
    """One reply as Slack showed it.

    ``renderer`` is ``native`` when a chat.startStream succeeded for it (``fell_back``: the edit
    renderer then tried chat.update or chat.postMessage too), else ``edit``. It is ``correct``
    only when it is ``finished`` (the run saw its final form), none of its native streams was
    left open (``open_streams``), and its messages show the answer.
    """

    conversation: Conversation
    acked_at: float | None = None  # the bot acknowledged the event (Socket Mode)
    model_request_at: float | None = None  # the model server received the request
    # The first sign of work: the placeholder's chat.postMessage or a chat.startStream (empty
    # in a channel), whichever came first; "requested" = the call reached Slack.
    placeholder_requested_at: float | None = None
    placeholder_at: float | None = None
    first_token_at: float | None = None
    first_visible_at: float | None = None
    done_at: float | None = None
    stream_seconds: float = 0.0
    events: int = 0  # SSE chunks with text
    characters: int = 0
    final_texts: list[str] = field(default_factory=list)
    correct: bool = False
    exact_join: bool = False
    finished: bool = True
    open_streams: int = 0  # messages whose native stream no call closed
    calls: Counter[str] = field(default_factory=Counter)
    renderer: Renderer = "edit"
    fell_back: bool = False
    ratelimited: list[tuple[float, str]] = field(default_factory=list)
    # Calls that changed an existing message's text: chat.update, chat.appendStream, and
    # chat.stopStream carrying text (the charts mark them).
    edits: list[float] = field(default_factory=list)
    emitted: list[tuple[float, int]] = field(default_factory=list)
    visible: list[tuple[float, int]] = field(default_factory=list)  # (time, model chars shown)
    lags: list[float] = field(default_factory=list)  # per model character, seconds
    unseen_chars: int = 0  # characters never shown (an incorrect final text)
    concurrent: int = 1  # replies of the same renderer in its workspace (its bound's k)
    bound_mean: float = 0.0
    bound_p99: float = 0.0


def lag_bound(duration: float, params: BoundParams, concurrent: int) -> tuple[float, float]:
    """Lower bounds (mean, p99) on a reply's visible lag, for text emitted evenly over
    ``duration`` seconds while ``concurrent`` such replies stream in the same workspace.

    An ideal renderer with no CPU cost gets the workspace's whole budget of text calls
    (chat.update for edits, chat.appendStream for native streams; token bucket: ``rate``/s,
    ``burst``, full at the start), shares it equally between the ``concurrent`` replies using
    that budget, keeps at most one call on a message in flight (so calls are at least ``gap``
    = max(``round_trip``, ``min_gap``) apart) and places its ``e`` calls ("edits") evenly;
    each becomes visible one ``round_trip`` after it is sent:

        capacity = burst + rate × duration          edits the workspace can make meanwhile
        e        = min(duration / gap, capacity / concurrent)
        e ≥ 1:   mean = round_trip + duration / (2e),  p99 = round_trip + duration / e
        e < 1:   one edit per reply, the j-th (j = 1..concurrent) at the earliest at
                 duration + max(0, (j − capacity) / rate):
                 mean = round_trip + duration / 2 + mean_j(wait_j),
                 p99  = round_trip + duration + max_j(wait_j)
    """
    rt = params.round_trip
    if duration <= 0:
        return rt, rt
    gap = max(rt, params.min_gap)
    capacity = params.burst + params.rate * duration
    edits = min(duration / gap if gap > 0 else math.inf, capacity / max(1, concurrent))
    if edits >= 1:
        return rt + duration / (2 * edits), rt + duration / edits
    waits = [max(0.0, (j - capacity) / params.rate) for j in range(1, concurrent + 1)]
    return rt + duration / 2 + sum(waits) / len(waits), rt + duration + max(waits)


def analyse_reply(
    conversation: Conversation,
    calls: Sequence[Call],
    emitted: Sequence[tuple[float, int]],
    *,
    acked_at: float | None = None,
    model_request_at: float | None = None,
    placeholder_requested_at: float | None = None,
    finished: bool = True,
) -> Reply:
    """Rebuild what Slack showed for ``conversation`` from the calls on its channel (in order)
    and what the model emitted, and derive its figures (its lag bound: ``set_bounds``).

    Messages are rebuilt the way Slack (the fake) builds them: chat.postMessage and a
    successful chat.startStream create one (ts from the response; a stream shows its
    ``markdown_text``, or nothing); chat.update replaces its text; chat.appendStream and
    chat.stopStream add their ``markdown_text`` (and ``markdown_text`` chunks).

    What the messages must show depends on what they hold. A native stream shows the model's
    Markdown as written, so while every message of the reply holds Markdown (streamed, or
    posted/edited with ``markdown_text``) they are compared with ``conversation.answer``; as
    soon as one holds mrkdwn (``text``: the edit renderer, including a native reply's fallback,
    which edits the streamed message to the rendered text) all are compared with
    ``conversation.expected`` = ``render(answer)``. The benchmark's answers are plain prose, for
    which both are the same text.

    A stream is closed by a successful chat.stopStream, by a successful chat.update of its
    message (Slack refuses to edit a live stream), or when Slack answers that it has ended. A
    reply with a stream still open after its last call, or not ``finished`` (the run stopped
    waiting for its final form), is not correct, whatever its text.
    """
    reply = Reply(
        conversation,
        acked_at=acked_at,
        model_request_at=model_request_at,
        placeholder_requested_at=placeholder_requested_at,
        emitted=list(emitted),
        finished=finished,
    )
    live: set[str] = set()  # messages whose stream is open
    shown: dict[str, _Shown] = {}  # message ts -> what it shows, in posting order
    order: list[str] = []
    answer = conversation.answer
    shown_max = 0
    for call in calls:
        reply.calls[call.method] += 1
        if call.status == 429:
            reply.ratelimited.append((call.at, call.method))
        if reply.renderer == "native" and call.method in _EDIT_METHODS:
            reply.fell_back = True  # the edit renderer took over (or tried to)
        if call.error in _STREAM_OVER or (call.ok and call.method in _CLOSING_METHODS):
            live.discard(str(call.args.get("ts")))
        if not call.ok:
            continue
        if call.method in ("chat.postMessage", "chat.startStream"):
            ts = str(call.response.get("ts"))
            order.append(ts)
            if call.method == "chat.startStream":
                reply.renderer = "native"
                live.add(ts)
                shown[ts] = _Shown(_stream_chunk(call.args), markdown=True)
            else:
                shown[ts] = _message_text(call.args, _Shown("", markdown=False))
            if reply.placeholder_at is None:
                reply.placeholder_at = call.at
        elif call.method == "chat.update":
            ts = str(call.args.get("ts"))
            if ts not in shown:
                continue
            shown[ts] = _message_text(call.args, shown[ts])
            reply.edits.append(call.at)
        elif call.method in ("chat.appendStream", "chat.stopStream"):
            ts = str(call.args.get("ts"))
            if ts not in shown:
                continue
            chunk = _stream_chunk(call.args)
            if chunk:
                shown[ts] = _Shown(shown[ts].text + chunk, shown[ts].markdown)
                reply.edits.append(call.at)
        else:
            continue
        reply.done_at = call.at
        texts = [shown[ts].text for ts in order]
        target = _target(conversation, [shown[ts] for ts in order])
        model_chars = _to_model_chars(_matched_prefix(texts, target), answer, target)
        if model_chars > shown_max:
            shown_max = model_chars
            reply.visible.append((call.at, model_chars))
            if reply.first_visible_at is None:
                reply.first_visible_at = call.at

    reply.final_texts = [shown[ts].text for ts in order]
    target = _target(conversation, [shown[ts] for ts in order])
    reply.exact_join = "".join(reply.final_texts) == target
    reply.open_streams = len(live)
    shows_answer = reply.exact_join or joins_to(reply.final_texts, target)
    reply.correct = shows_answer and finished and not live
    if emitted:
        reply.first_token_at = emitted[0][0]
        reply.stream_seconds = emitted[-1][0] - emitted[0][0]
        reply.events = len(emitted)
        reply.characters = emitted[-1][1]
    reply.lags, reply.unseen_chars = _char_lags(emitted, reply.visible, len(answer))
    return reply


def set_bounds(replies: Sequence[Reply], params: Mapping[Renderer, BoundParams]) -> None:
    """Give every reply its lag bound under its renderer's budget (``params[reply.renderer]``:
    chat.appendStream's for native replies, chat.update's for edit replies), shared with the
    replies of the same renderer in its workspace (``Reply.concurrent``)."""
    counts = Counter((r.conversation.team, r.renderer) for r in replies)
    for reply in replies:
        reply.concurrent = counts[(reply.conversation.team, reply.renderer)]
        reply.bound_mean, reply.bound_p99 = lag_bound(
            reply.stream_seconds, params[reply.renderer], reply.concurrent
        )


_EDIT_METHODS = frozenset({"chat.update", "chat.postMessage"})
_CLOSING_METHODS = frozenset({"chat.stopStream", "chat.update"})
# Slack's answers to a stream call on a stream that has ended (expired, gone, stopped by the
# person): it is no longer open.
_STREAM_OVER = frozenset({"message_not_in_streaming_state", "stopped_by_user", "message_not_found"})


@dataclass(frozen=True, slots=True)
class _Shown:
    """What one message shows: its text, and whether that text is Markdown (a native stream,
    or ``markdown_text``) rather than mrkdwn."""

    text: str
    markdown: bool


def _message_text(args: Mapping[str, Any], before: _Shown) -> _Shown:
    """The text a chat.postMessage / chat.update leaves (as the fake: ``markdown_text`` wins;
    an update with blocks only keeps the text)."""
    if args.get("markdown_text") is not None:
        return _Shown(str(args["markdown_text"]), markdown=True)
    if args.get("text") is not None:
        return _Shown(str(args["text"]), markdown=False)
    return before


def _stream_chunk(args: Mapping[str, Any]) -> str:
    """The Markdown a stream call adds: ``markdown_text`` and any ``markdown_text`` chunks."""
    text = str(args.get("markdown_text") or "")
    for chunk in args.get("chunks") or ():
        if isinstance(chunk, dict) and chunk.get("type") == "markdown_text":
            text += str(chunk.get("text", ""))
    return text


def _target(conversation: Conversation, messages: Sequence[_Shown]) -> str:
    """What the messages must show: the Markdown answer while all of them hold Markdown, else
    its Slack rendering (see ``analyse_reply``)."""
    if messages and all(m.markdown for m in messages):
        return conversation.answer
    return conversation.expected


def _matched_prefix(texts: Sequence[str], expected: str) -> int:
    """How much of ``expected`` the messages show, in order; whitespace at a message boundary
    may be dropped (a continuation starts on a fresh line)."""
    pos = 0
    for index, text in enumerate(texts):
        if index:
            text = text.lstrip()
            while pos < len(expected) and expected[pos].isspace():
                pos += 1
        matched = _common_prefix(text, expected, pos)
        pos += matched
        if matched < len(text.rstrip()):
            break  # this message shows something else (a placeholder, a note): stop here
    return pos


def _common_prefix(text: str, expected: str, start: int) -> int:
    limit = min(len(text), len(expected) - start)
    if expected.startswith(text[:limit], start):
        return limit
    low, high = 0, limit  # binary search the longest matching prefix
    while low < high:
        mid = (low + high + 1) // 2
        if expected.startswith(text[:mid], start):
            low = mid
        else:
            high = mid - 1
    return low


def joins_to(texts: Sequence[str], expected: str) -> bool:
    """The messages ``texts`` show exactly ``expected``, up to whitespace at message
    boundaries."""
    pos = 0
    for index, text in enumerate(texts):
        if not text.strip():
            return False
        if index:
            text = text.lstrip()
            while pos < len(expected) and expected[pos].isspace():
                pos += 1
        if not expected.startswith(text, pos):
            return False
        pos += len(text)
    return bool(texts) and not expected[pos:].strip()


def _to_model_chars(rendered: int, answer: str, expected: str) -> int:
    """Characters of ``expected`` shown → model characters shown (exact when ``expected`` is
    the answer itself, or rendering is the identity, as for the benchmark's plain-prose answers;
    proportional otherwise)."""
    if answer == expected or not expected:
        return rendered
    return min(len(answer), round(rendered * len(answer) / len(expected)))


def _char_lags(
    emitted: Sequence[tuple[float, int]], visible: Sequence[tuple[float, int]], chars: int
) -> tuple[list[float], int]:
    """For every model character: when it became visible minus when the model emitted it."""
    lags: list[float] = []
    shown_counts = [count for _, count in visible]
    unseen = 0
    done = 0
    for at, total in emitted:
        for char in range(done, min(total, chars)):
            where = bisect.bisect_right(shown_counts, char)  # first step showing it
            if where == len(visible):
                unseen += 1
            else:
                lags.append(visible[where][0] - at)
        done = max(done, total)
    return lags, unseen


# -- the run's figures -----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def _mean(values: Iterable[float]) -> float | None:
    items = list(values)
    return sum(items) / len(items) if items else None


def _since_sent(replies: Sequence[Reply], attribute: str) -> list[float]:
    values = []
    for reply in replies:
        at = getattr(reply, attribute)
        if at is not None:
            values.append(at - reply.conversation.sent_at)
    return values


def _first_visible(replies: Sequence[Reply]) -> list[float]:
    """The model's first token → the first Slack call showing answer text, per reply."""
    return [
        r.first_visible_at - r.first_token_at
        for r in replies
        if r.first_visible_at is not None and r.first_token_at is not None
    ]


def _latency(values: Sequence[float]) -> dict[str, Any]:
    return {
        "p50": ms(percentile(values, 50)),
        "p99": ms(percentile(values, 99)),
        "max": ms(max(values, default=None)),
        "count": len(values),
    }


def peak_concurrency(intervals: Iterable[tuple[float, float]]) -> int:
    """The most intervals open at one time."""
    edges = sorted((at, step) for start, end in intervals for at, step in ((start, 1), (end, -1)))
    peak = current = 0
    for _, step in edges:  # ends sort before starts at the same time
        current += step
        peak = max(peak, current)
    return peak


def summarise(replies: Sequence[Reply], all_calls: Sequence[Call]) -> dict[str, Any]:
    """The run's figures from its replies (``set_bounds`` first) and every Slack call made
    during the run. ``placeholder_*`` is the first sign of work: the placeholder's
    chat.postMessage or a (channel's empty) chat.startStream."""
    placeholder = _since_sent(replies, "placeholder_at")
    first_visible = _latency(_first_visible(replies))
    split = _by_renderer(replies)
    if len(split) > 1:
        first_visible["by_renderer"] = {
            name: _latency(_first_visible(group)) for name, group in split.items()
        }
    methods = Counter(call.method for call in all_calls)
    limited = Counter(call.method for call in all_calls if call.status == 429)
    n = len(replies)
    return {
        "replies": n,
        "ack_ms": _latency(_since_sent(replies, "acked_at")),
        "placeholder_requested_ms": _latency(_since_sent(replies, "placeholder_requested_at")),
        "placeholder_ms": _latency(placeholder),
        "model_request_ms": _latency(_since_sent(replies, "model_request_at")),
        "first_visible_ms": first_visible,
        # What the person feels: their message sent → the answer's first text shown.
        "first_text_after_event_ms": _latency(_since_sent(replies, "first_visible_at")),
        "peak_concurrent_streams": peak_concurrency(
            (r.model_request_at, r.emitted[-1][0])
            for r in replies
            if r.model_request_at is not None and r.emitted
        ),
        "visible_lag_s": visible_lag(replies),
        "renderers": {
            **{name: sum(r.renderer == name for r in replies) for name in RENDERERS},
            "fallbacks": sum(r.fell_back for r in replies),
        },
        "slack_calls_per_reply": {m: round(c / n, 2) for m, c in sorted(methods.items())} if n else {},
        "slack_calls_total": dict(sorted(methods.items())),
        "ratelimited_429": {"total": sum(limited.values()), "by_method": dict(sorted(limited.items()))},
        # chat.update, chat.appendStream and chat.stopStream calls that changed the text
        "edits_per_reply": round_or_none(_mean(len(r.edits) for r in replies)),
        "correct": {
            "replies": sum(r.correct for r in replies),
            "share": round_or_none(sum(r.correct for r in replies) / n if n else None),
            "exact_join": sum(r.exact_join for r in replies),
            "unfinished": sum(not r.finished for r in replies),
            "streams_left_open": sum(r.open_streams > 0 for r in replies),
            "messages_per_reply": round_or_none(_mean(len(r.final_texts) for r in replies)),
        },
        "characters_streamed": sum(r.characters for r in replies),
        "sse_events": sum(r.events for r in replies),
        "reply_seconds": {
            "p50": round_or_none(percentile([r.done_at - r.conversation.sent_at for r in replies if r.done_at], 50)),
            "max": round_or_none(max((r.done_at - r.conversation.sent_at for r in replies if r.done_at), default=None)),
        },
    }  # fmt: skip


def visible_lag(replies: Sequence[Reply]) -> dict[str, Any]:
    """Visible lag per character against its bound (``set_bounds`` first), for all replies and,
    when both renderers served some, for each (``by_renderer``)."""
    figures = _lag_figures(replies)
    split = _by_renderer(replies)
    if len(split) > 1:
        figures["by_renderer"] = {
            name: {k: v for k, v in _lag_figures(group).items() if k != "never_visible"}
            for name, group in split.items()
        }
    return figures


def _lag_figures(replies: Sequence[Reply]) -> dict[str, Any]:
    lags = [lag for r in replies for lag in r.lags]
    bound_mean = _mean(r.bound_mean for r in replies for _ in r.lags)
    bound_p99 = _mean(r.bound_p99 for r in replies for _ in r.lags)
    lag_mean = _mean(lags)
    lag_p99 = percentile(lags, 99)
    return {
        "mean": round_or_none(lag_mean),
        "p50": round_or_none(percentile(lags, 50)),
        "p99": round_or_none(lag_p99),
        "bound_mean": round_or_none(bound_mean),
        "bound_p99": round_or_none(bound_p99),
        "ratio_mean": round_or_none(lag_mean / bound_mean if lag_mean and bound_mean else None),
        "ratio_p99": round_or_none(lag_p99 / bound_p99 if lag_p99 and bound_p99 else None),
        "characters": len(lags),
        "never_visible": sum(r.unseen_chars for r in replies),
    }


def _by_renderer(replies: Sequence[Reply]) -> dict[str, list[Reply]]:
    split: dict[str, list[Reply]] = {}
    for reply in replies:
        split.setdefault(reply.renderer, []).append(reply)
    return {name: split[name] for name in RENDERERS if name in split}


def bound_under(replies: Sequence[Reply], params: Mapping[Renderer, BoundParams]) -> dict[str, Any]:
    """The run's mean-lag bound for budgets other than Slack's (e.g. the bot's own settings:
    its edit budget and ``EDIT_INTERVAL`` for edit replies, its chat.appendStream budget and
    ``NATIVE_FLUSH_INTERVAL`` for native ones), and the measured mean lag's ratio to it; per
    renderer too when both served replies. It tells how much of the lag the renderers could
    still remove without changing those settings."""

    def under(group: Sequence[Reply]) -> dict[str, float | None]:
        bound = _mean(
            lag_bound(r.stream_seconds, params[r.renderer], r.concurrent)[0]
            for r in group
            for _ in r.lags
        )
        lag = _mean(lag for r in group for lag in r.lags)
        return {
            "bound_mean": round_or_none(bound),
            "ratio_mean": round_or_none(lag / bound if lag and bound else None),
        }

    figures: dict[str, Any] = under(replies)
    split = _by_renderer(replies)
    if len(split) > 1:
        figures["by_renderer"] = {name: under(group) for name, group in split.items()}
    return figures


def round_or_none(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def sample_timeline(reply: Reply) -> dict[str, Any]:
    """One reply's curves for the chart, with times relative to the event being sent."""
    t0 = reply.conversation.sent_at
    return {
        "index": reply.conversation.index,
        "team": reply.conversation.team,
        "concurrent_in_workspace": reply.conversation.concurrent_in_workspace,
        "renderer": reply.renderer,
        "fell_back": reply.fell_back,
        "concurrent_same_renderer": reply.concurrent,
        "answer_chars": len(reply.conversation.answer),
        "placeholder": _rel(reply.placeholder_at, t0),
        "first_token": _rel(reply.first_token_at, t0),
        "first_visible": _rel(reply.first_visible_at, t0),
        "emitted": [[round(at - t0, 4), n] for at, n in reply.emitted],
        "visible": [[round(at - t0, 4), n] for at, n in reply.visible],
        "edits": [round(at - t0, 4) for at in reply.edits],
        "ratelimited": [[round(at - t0, 4), method] for at, method in reply.ratelimited],
        "lag_mean": round_or_none(_mean(reply.lags)),
        "bound_mean": round_or_none(reply.bound_mean),
    }


def _rel(at: float | None, t0: float) -> float | None:
    return None if at is None else round(at - t0, 4)
