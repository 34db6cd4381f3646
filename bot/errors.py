"""The bot's small exception tree; every vendor error is translated into one of these at its boundary.

    BotError
    ├── ConfigError            settings missing or malformed (start-up stops, exit code 2)
    ├── StoreUnavailable       Redis cannot be reached (raised and handled inside bot/store/)
    ├── ModelError             the model failed before or during the answer
    │   ├── ModelUnavailable   failed before the first token (HTTP error, connection refused)
    │   ├── ModelInterrupted   the stream broke mid-answer (error event, disconnect, truncation)
    │   ├── ModelIdle          no token for ``idle_timeout`` seconds
    │   └── AnswerTooLong      the answer passed ``MAX_ANSWER_CHARS``; the rest is not read
    └── SlackError             a Web API call failed
        ├── SlackRateLimited   HTTP 429; ``retry_after`` seconds to wait
        ├── SlackTransient     5xx, connection reset or timeout: worth retrying
        ├── SlackRejected      ``ok: false`` for a reason retrying will not fix (``error`` names it)
        └── FileUnavailable    a shared file could not be fetched (download or files.info)
            ├── FileMissing        deleted or no longer shared: 404, ``file_not_found``
            ├── FileTooLarge       bigger than the download cap (``limit`` bytes)
            ├── FileNotAuthorized  Slack's sign-in page (the app lacks ``files:read``), 401/403
            └── FileTimedOut       the download took longer than its timeout

Users never see the text of any of these: the reply shows a short, fixed note instead.
"""

from __future__ import annotations


class BotError(Exception):
    """Root of every error the bot raises on purpose."""


class ConfigError(BotError):
    """Settings are missing or malformed; ``problems`` lists each one in words."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class StoreUnavailable(BotError):
    """Redis cannot be reached right now."""


class ModelError(BotError):
    """The model did not deliver a complete answer."""


class ModelUnavailable(ModelError):
    """The model failed before producing any text."""


class ModelInterrupted(ModelError):
    """The stream broke after it had started (error event, disconnect, no finish_reason)."""


class ModelIdle(ModelInterrupted):
    """No token arrived for the configured idle timeout."""


class AnswerTooLong(ModelInterrupted):
    """The answer passed its length cap; what fits is shown, the rest is not read."""


class SlackError(BotError):
    """A Slack Web API call failed; ``error`` is Slack's error code or a short description."""

    def __init__(self, method: str, error: str) -> None:
        super().__init__(f"{method}: {error}")
        self.method = method
        self.error = error


class SlackRateLimited(SlackError):
    """Slack answered 429; wait ``retry_after`` seconds before the next call of this kind."""

    def __init__(self, method: str, retry_after: float) -> None:
        super().__init__(method, "ratelimited")
        self.retry_after = retry_after


class SlackTransient(SlackError):
    """A failure that a later retry may fix: 5xx, connection reset, timeout."""


class SlackRejected(SlackError):
    """Slack refused the call (``ok: false``); retrying the same call will not help."""


class FileUnavailable(SlackError):
    """A file shared in Slack could not be fetched; ``error`` says why in a few words."""


class FileMissing(FileUnavailable):
    """The file is gone: deleted, or no longer shared where the bot can see it."""


class FileTooLarge(FileUnavailable):
    """The file is bigger than ``limit`` bytes; the rest of it was not read."""

    def __init__(self, method: str, limit: int) -> None:
        super().__init__(method, f"larger than {limit} bytes")
        self.limit = limit


class FileNotAuthorized(FileUnavailable):
    """Slack would not hand the file to the bot: without the ``files:read`` scope a download
    answers 200 with an HTML sign-in page instead of the file."""


class FileTimedOut(FileUnavailable):
    """The download did not finish within its timeout."""
