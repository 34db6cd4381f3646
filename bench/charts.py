"""PNG charts of a benchmark result (matplotlib, the optional ``bench`` extra).

    python -m bench.charts bench/out/bench-20250101-120000.json    # redraw from a JSON file

``reply-N*.png``: one typical reply — what the model had written against what Slack showed,
with every Slack call that showed text (chat.update, chat.appendStream, chat.stopStream with
text) and every 429 marked. ``scaling-*.png``: the key figures against N (for a sweep).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt


def draw_all(document: dict[str, Any], out: Path, stamp: str) -> list[Path]:
    """Every chart for a result document; returns the files written."""
    written = []
    for point in document["points"]:
        sample = point.get("sample_reply")
        if sample and sample["emitted"]:
            scenario = point["scenario"]
            path = out / f"reply-N{scenario['n']}-{stamp}.png"
            reply_chart(sample, scenario, path)
            written.append(path)
    if len(document["points"]) > 1:
        path = out / f"scaling-{stamp}.png"
        scaling_chart(document["points"], path)
        written.append(path)
    return written


def reply_chart(sample: dict[str, Any], scenario: dict[str, Any], path: Path) -> None:
    """The model's text length over time against the Slack-visible length (a step curve)."""
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=110)
    emitted = sample["emitted"]
    visible = sample["visible"]
    end = max(
        [emitted[-1][0]]
        + [t for t, _ in visible]
        + list(sample["edits"])
        + [t for t, _ in sample["ratelimited"]]
    )
    ex = [0.0] + [t for t, _ in emitted]
    ey = [0] + [n for _, n in emitted]
    ax.step(ex, ey, where="post", color="tab:blue", lw=1.6, label="model: characters emitted")
    vx = [0.0] + [t for t, _ in visible] + [end]
    vy = [0] + [n for _, n in visible] + [visible[-1][1] if visible else 0]
    ax.step(vx, vy, where="post", color="tab:green", lw=2.2, label="Slack: characters visible")
    ax.fill_between(vx, vy, step="post", color="tab:green", alpha=0.08)
    for i, at in enumerate(sample["edits"]):
        ax.axvline(
            at, color="tab:gray", ls=":", lw=1, label="Slack call showing text" if i == 0 else None
        )
    for i, (at, method) in enumerate(sample["ratelimited"]):
        ax.axvline(at, color="tab:red", lw=1.5, label=f"429 ({method})" if i == 0 else None)
    marks = (
        ("placeholder", "placeholder or stream start visible", "tab:purple"),
        ("first_token", "first token", "tab:orange"),
    )
    for key, label, color in marks:
        if sample.get(key) is not None:
            ax.plot([sample[key]], [0], marker="^", ms=10, color=color, ls="none", label=label)
    ax.set_xlabel("seconds since the mention was sent")
    ax.set_ylabel("characters of the answer")
    lag = sample.get("lag_mean")
    bound = sample.get("bound_mean")
    renderer = sample.get("renderer", "edit")  # files from before native runs: edits
    same = ""
    if (
        sample.get("concurrent_same_renderer", sample["concurrent_in_workspace"])
        != sample["concurrent_in_workspace"]
    ):
        same = f" ({sample['concurrent_same_renderer']} {renderer})"
    if sample.get("fell_back"):
        renderer += ", fell back to edits"
    ax.set_title(
        f"One reply (#{sample['index']}, {renderer}) of N={scenario['n']}"
        f"{', STREAM_MODE=' + scenario['mode'] if 'mode' in scenario else ''}, "
        f"{sample['concurrent_in_workspace']} streaming in its workspace{same} — "
        f"mean visible lag {_fmt(lag)} s, bound {_fmt(bound)} s\n"
        f"Slack round trip {scenario['slack_latency'] * 1000:.0f} ms, model "
        f"{scenario['tokens_per_second']:.0f} tok/s, TTFT {scenario['ttft']:.2f} s",
        fontsize=10,
    )
    ax.set_xlim(0, end * 1.03 + 0.05)
    top = max(ey) * 1.08 + 1
    ax.set_ylim(-top * 0.04, top)  # room for the markers on the time axis
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def scaling_chart(points: Sequence[dict[str, Any]], path: Path) -> None:
    """Key figures against N: latencies, lag against its bound, CPU, memory, calls and 429s."""
    n = [p["scenario"]["n"] for p in points]
    per_ws = [p["scenario"]["per_workspace"] for p in points]
    s = [p["summary"] for p in points]
    bot = [p["bot"] for p in points]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), dpi=110)

    ax = axes[0][0]
    for key, label, color in (
        ("placeholder_ms", "event → placeholder / stream start", "tab:purple"),
        ("first_visible_ms", "first token → first text", "tab:green"),
    ):
        ax.plot(n, [x[key]["p50"] for x in s], "o-", color=color, label=f"{label} p50")
        ax.plot(n, [x[key]["p99"] for x in s], "s--", color=color, label=f"{label} p99")
    rtt = points[0]["scenario"]["slack_latency"] * 1000
    ax.axhline(rtt + 20, color="k", lw=0.8, ls=":", label=f"round trip + 20 ms ({rtt + 20:.0f})")
    ax.axhline(250, color="tab:red", lw=0.8, ls=":", label="250 ms")
    ax.set_yscale("log")
    ax.set_title("Time to visible (ms)")
    ax.legend(fontsize=8)

    ax = axes[0][1]
    ax.plot(n, [x["visible_lag_s"]["mean"] for x in s], "o-", color="tab:green", label="mean lag")
    ax.plot(n, [x["visible_lag_s"]["bound_mean"] for x in s], "o:", color="k", label="bound (mean)")
    ax.plot(n, [x["visible_lag_s"]["p99"] for x in s], "s--", color="tab:olive", label="p99 lag")
    ax.set_yscale("log")
    ax.set_ylabel("seconds")
    twin = ax.twinx()
    twin.plot(
        n,
        [x["visible_lag_s"]["ratio_mean"] for x in s],
        "d-",
        color="tab:red",
        label="ratio mean/bound",
    )
    twin.axhline(1.25, color="tab:red", lw=0.8, ls=":")
    twin.set_ylabel("ratio to bound", color="tab:red")
    twin.set_ylim(bottom=0)
    ax.set_title("Visible lag per character")
    lines = ax.get_legend_handles_labels()
    lines2 = twin.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")

    ax = axes[1][0]
    ax.plot(
        n,
        [b["cpu_seconds_per_1k_tokens"] for b in bot],
        "o-",
        color="tab:blue",
        label="bot CPU s / 1k tokens",
    )
    ax.plot(
        n, [b["cpu_cores_mean"] for b in bot], "s--", color="tab:cyan", label="bot cores (mean)"
    )
    ax.set_ylabel("CPU")
    twin = ax.twinx()
    twin.plot(
        n, [b["rss_per_stream_kib"] for b in bot], "d-", color="tab:brown", label="RSS KiB / stream"
    )
    twin.plot(n, [b["peak_rss_mib"] for b in bot], "^:", color="tab:pink", label="peak RSS MiB")
    twin.set_ylabel("KiB per stream / MiB peak")
    ax.set_title("Bot process cost")
    lines = ax.get_legend_handles_labels()
    lines2 = twin.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")

    ax = axes[1][1]
    ax.plot(
        n,
        [x["slack_calls_per_reply"].get("chat.update", 0) for x in s],
        "o-",
        label="chat.update / reply",
    )
    ax.plot(
        n,
        [x["slack_calls_per_reply"].get("chat.appendStream", 0) for x in s],
        "^-",
        label="chat.appendStream / reply",
    )
    ax.plot(
        n,
        [x["slack_calls_per_reply"].get("chat.postMessage", 0) for x in s],
        "s-",
        label="chat.postMessage / reply",
    )
    ax.set_ylabel("calls per reply")
    twin = ax.twinx()
    twin.plot(
        n,
        [x["ratelimited_429"]["total"] for x in s],
        "x-",
        color="tab:red",
        ms=9,
        label="429s (run)",
    )
    twin.set_ylabel("429s", color="tab:red")
    twin.set_ylim(bottom=0)
    ax.set_title("Slack calls and 429s")
    lines = ax.get_legend_handles_labels()
    lines2 = twin.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")

    labels = [f"{x}\n({w}/ws)" for x, w in zip(n, per_ws, strict=True)]
    for row in axes:
        for ax in row:
            ax.set_xscale("log")
            ax.set_xticks(n)
            ax.set_xticklabels(labels, fontsize=8)
            ax.grid(alpha=0.3)
    fig.suptitle("Scaling with N concurrent replies (N, replies per workspace)", fontsize=12)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def main(argv: Sequence[str]) -> int:
    for name in argv:
        path = Path(name)
        document = json.loads(path.read_text())
        stamp = path.stem.removeprefix("bench-")
        for chart in draw_all(document, path.parent, stamp):
            print(f"wrote {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
