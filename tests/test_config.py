"""Settings: validated once, every problem named, no traceback, no secret echoed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPENAI_", "REDIS_"))}
    env.update(extra)
    return env


def test_python_m_bot_without_tokens_exits_with_one_readable_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,  # no .env here
        env=_clean_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "SLACK_BOT_TOKEN: missing" in result.stderr
    assert "OPENAI_API_KEY: missing" in result.stderr
    assert "SLACK_APP_TOKEN: required in Socket Mode" in result.stderr  # every problem at once


def test_malformed_values_are_named_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            {
                "slack_bot_token": "xoxb-secret-value",
                "slack_app_token": "xapp-1",
                "openai_api_key": "sk-1",
                "edit_interval": "soon",
                "slack_mode": "carrier-pigeon",
                "event_loop": "trio",
                "admission_max_wait": "-1",
            },
            env_file=None,
        )
    text = "\n".join(info.value.problems)
    assert "EDIT_INTERVAL" in text and "SLACK_MODE" in text
    assert "EVENT_LOOP" in text and "ADMISSION_MAX_WAIT" in text
    assert "xoxb-secret-value" not in text


def test_socket_mode_needs_the_app_token() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"slack_bot_token": "xoxb-1", "openai_api_key": "sk-1"}, env_file=None)
    assert info.value.problems == ["SLACK_APP_TOKEN: required in Socket Mode (SLACK_MODE=socket)"]


def test_environment_and_dotenv_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "SLACK_BOT_TOKEN=xoxb-from-file\nSLACK_APP_TOKEN=xapp-file\nOPENAI_API_KEY=sk-file\n"
    )
    monkeypatch.setenv("OPENAI_MODEL", "from-env")
    monkeypatch.setenv("SLACK_API_URL", "http://127.0.0.1:1/api")
    settings = load_settings(env_file=str(env_file))
    assert settings.slack_bot_token.get_secret_value() == "xoxb-from-file"
    assert settings.openai_model == "from-env"
    assert settings.slack_api_url == "http://127.0.0.1:1/api/"  # slash kept for urljoin
    assert "xoxb-from-file" not in repr(settings)
