"""TRIO_CHANNEL_<FIELD> for every field, and every config error listed."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from trio_channel.app import startup_summary
from trio_channel.cli import render_config
from trio_channel.config import (
    ENV_FOR_FIELD,
    ChannelConfig,
    ConfigError,
    ConfigErrors,
    build_config,
    build_config_with_sources,
)
from trio_channel.logs import (
    log_connection_closed,
    log_handshake_refused,
    log_http_request,
    log_listening,
    setup_logging,
)


def env_build(**env: str) -> ChannelConfig:
    return build_config(environ=env)


def test_every_field_has_a_variable() -> None:
    assert set(ENV_FOR_FIELD) == set(ChannelConfig.__struct_fields__)
    assert ENV_FOR_FIELD["ping_interval_s"] == "TRIO_CHANNEL_PING_INTERVAL_S"


def test_every_variable_is_documented() -> None:
    docs = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    text = docs.read_text()
    for field, var in ENV_FOR_FIELD.items():
        assert f"| `{field}` |" in text, field
        assert f"`{var}`" in text, var


def test_values_are_parsed_by_type() -> None:
    cfg = env_build(
        TRIO_CHANNEL_PORT="9001",
        TRIO_CHANNEL_PING_INTERVAL_S="7.5",
        TRIO_CHANNEL_WEBUI="false",
        TRIO_CHANNEL_STREAMING="0",
        TRIO_CHANNEL_WEBSOCKET_REQUIRES_TOKEN="FALSE",
        TRIO_CHANNEL_ALLOW_FROM=" alice, bob ,",
        TRIO_CHANNEL_SESSION_STORE="memory",
        TRIO_CHANNEL_LOG_FORMAT="json",
    )
    assert (cfg.port, cfg.ping_interval_s) == (9001, 7.5)
    assert (cfg.webui, cfg.streaming, cfg.websocket_requires_token) == (
        False,
        False,
        False,
    )
    assert cfg.allow_from == ("alice", "bob")
    assert (cfg.session_store, cfg.log_format) == ("memory", "json")


def test_a_json_list_can_be_empty() -> None:
    assert env_build(TRIO_CHANNEL_ALLOW_FROM="[]").allow_from == ()
    assert env_build(TRIO_CHANNEL_ALLOW_FROM='["a,b"]').allow_from == ("a,b",)


def test_an_empty_variable_is_ignored() -> None:
    assert env_build(TRIO_CHANNEL_PORT="").port == 8765


def test_flags_beat_the_environment_which_beats_the_file(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("port = 1000\nhistory_limit = 5\n")
    cfg, sources = build_config_with_sources(
        str(path),
        overrides={"port": 3000},
        environ={"TRIO_CHANNEL_PORT": "2000", "TRIO_CHANNEL_HISTORY_LIMIT": "6"},
    )
    assert (cfg.port, cfg.history_limit) == (3000, 6)
    assert sources == {"port": "flag", "history_limit": "TRIO_CHANNEL_HISTORY_LIMIT"}


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("TRIO_CHANNEL_PORT", "eighty", "expected a whole number"),
        ("TRIO_CHANNEL_WEBUI", "yes", "expected true, false, 1 or 0"),
        ("TRIO_CHANNEL_PING_TIMEOUT_S", "nan", "expected a finite number"),
        ("TRIO_CHANNEL_ALLOW_FROM", "[1]", "expected a JSON array of strings"),
        ("TRIO_CHANNEL_PORT", "70000", "expected int <= 65535"),
        ("TRIO_CHANNEL_SQLITE_SYNCHRONOUS", "sometimes", "invalid enum value"),
    ],
)
def test_a_bad_value_names_field_and_variable(var: str, value: str, message: str):
    with pytest.raises(ConfigError) as info:
        env_build(**{var: value})
    text = str(info.value)
    field = var.removeprefix("TRIO_CHANNEL_").lower()
    assert text.startswith(f"{field}: ")
    assert message in text
    assert f"(from {var})" in text
    assert "\n" not in text


def test_every_error_is_listed_not_only_the_first() -> None:
    with pytest.raises(ConfigErrors) as info:
        build_config(
            overrides={"path": "ws", "ping_interval_s": 1, "agent": "nope"},
            environ={"TRIO_CHANNEL_PORT": "x", "TRIO_CHANNEL_HOST": "0.0.0.0"},
        )
    fields = [e.field for e in info.value.errors]
    assert sorted(fields) == ["agent", "host", "path", "ping_interval_s", "port"]


def test_print_config_masks_secrets_and_says_where_values_came_from() -> None:
    cfg, sources = build_config_with_sources(
        overrides={"port": 9000},
        environ={"TRIO_CHANNEL_TOKEN": "hunter2", "TRIO_CHANNEL_WEBUI": "0"},
    )
    text = render_config(cfg, sources)
    assert "hunter2" not in text
    assert 'token = "********"  # TRIO_CHANNEL_TOKEN' in text
    assert "port = 9000  # flag" in text
    assert "webui = false  # TRIO_CHANNEL_WEBUI" in text
    assert 'token_issue_secret = ""\n' in text


# --- log lines ---------------------------------------------------------------


@pytest.fixture
def log_text():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)

    def setup(fmt: str = "text") -> io.StringIO:
        setup_logging("info", fmt, stream)
        return stream

    yield setup
    # Give pytest its handlers back (caplog in later tests relies on them).
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_access_lines_are_one_line_and_quote_what_a_client_chose(log_text) -> None:
    stream = log_text()
    log_connection_closed("evil\nclient_id=admin", 1000, 2.5, None)
    log_handshake_refused(401, "127.0.0.1:5", "Unauthorized")
    log_http_request("GET", "/api/sessions?token=secret", 200, "127.0.0.1:5")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert 'client_id="evil\\nclient_id=admin" code=1000 duration_s=2.500' in lines[0]
    assert (
        "handshake refused status=401 peer=127.0.0.1:5 reason=Unauthorized"
        in (lines[1])
    )
    assert "path=/api/sessions status=200" in lines[2]
    assert "secret" not in stream.getvalue()


def test_the_listening_line_is_written_at_any_level_and_in_json(log_text) -> None:
    stream = log_text("json")
    logging.getLogger().setLevel("ERROR")
    log_listening("ws://127.0.0.1:1/", page="http://127.0.0.1:1/", auth="open")
    doc = json.loads(stream.getvalue())
    assert (
        doc["msg"]
        == "listening on ws://127.0.0.1:1/ page=http://127.0.0.1:1/ auth=open"
    )
    assert doc["ws_url"] == "ws://127.0.0.1:1/"
    assert (doc["page"], doc["auth"], doc["level"]) == (
        "http://127.0.0.1:1/",
        "open",
        "info",
    )


def test_the_startup_summary_never_shows_a_redis_password() -> None:
    cfg = build_config(
        None, overrides={"session_store": "rediss://:hunter2@redis.internal:6380/1"}
    )
    summary = startup_summary(cfg, "ws://127.0.0.1:8765/")
    assert summary["store"] == "rediss://:********@redis.internal:6380/1"
