"""The feedback buttons (👍 / 👎) under a finished answer, and reading a click on them.

    blocks.append(feedback_block())                  # the answer's last message, when complete
    vote = feedback_vote(action)                     # "good" | "bad" | None (not ours / malformed)

Slack's ``feedback_buttons`` element lives in a ``context_actions`` block; a click arrives as a
``block_actions`` payload whose action has ``action_id == FEEDBACK_ACTION_ID`` and the pressed
button's ``value``.
"""

from __future__ import annotations

from typing import Any, Literal

FEEDBACK_ACTION_ID = "reply_feedback"
FEEDBACK_BLOCK_ID = "reply_feedback"

Vote = Literal["good", "bad"]
_VALUES: dict[str, Vote] = {"good": "good", "bad": "bad"}


def feedback_block() -> dict[str, Any]:
    """The ``context_actions`` block with the 👍 / 👎 buttons."""
    return {
        "type": "context_actions",
        "block_id": FEEDBACK_BLOCK_ID,
        "elements": [
            {
                "type": "feedback_buttons",
                "action_id": FEEDBACK_ACTION_ID,
                "positive_button": {
                    "text": {"type": "plain_text", "text": "👍"},
                    "accessibility_label": "This answer was helpful",
                    "value": "good",
                },
                "negative_button": {
                    "text": {"type": "plain_text", "text": "👎"},
                    "accessibility_label": "This answer was not helpful",
                    "value": "bad",
                },
            }
        ],
    }


def feedback_vote(action: dict[str, Any]) -> Vote | None:
    """The vote a clicked feedback button carries; None for any other or a malformed action."""
    if action.get("action_id") != FEEDBACK_ACTION_ID:
        return None
    value = action.get("value")
    return _VALUES.get(value) if isinstance(value, str) else None
