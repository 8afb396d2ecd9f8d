"""``trio-channel serve`` flags: each parses and lands on its config field."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from trio_channel.config import ChannelConfig, ConfigError, build_config
from trio_channel.flags import (
    FLAG_FOR_FIELD,
    add_serve_arguments,
    overrides_from_args,
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trio-channel serve")
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


# (argv, field, expected override value)
CASES: list[tuple[list[str], str, object]] = [
    (["--host", "::1"], "host", "::1"),
    (["--port", "0"], "port", 0),
    (["--path", "/ws"], "path", "/ws"),
    (["--unix-socket", "/run/c.sock"], "unix_socket_path", "/run/c.sock"),
    (["--token", "t"], "token", "t"),
    (["--token-issue-path", "/auth"], "token_issue_path", "/auth"),
    (["--token-issue-secret", "s"], "token_issue_secret", "s"),
    (["--no-require-token"], "websocket_requires_token", False),
    (["--allow-from", "a", "--allow-from", "b"], "allow_from", ("a", "b")),
    (["--ssl-certfile", "c.pem"], "ssl_certfile", "c.pem"),
    (["--ssl-keyfile", "k.pem"], "ssl_keyfile", "k.pem"),
    (["--max-message-bytes", "2048"], "max_message_bytes", 2048),
    (["--ping-interval", "7.5"], "ping_interval_s", 7.5),
    (["--ping-timeout", "9"], "ping_timeout_s", 9.0),
    (["--data-dir", "/var/lib/tc"], "data_dir", "/var/lib/tc"),
    (["--agent", "pkg.mod:run"], "agent", "pkg.mod:run"),
    (["--log-level", "debug"], "log_level", "debug"),
    (["--log-format", "json"], "log_format", "json"),
    (["--max-connections", "5"], "max_connections", 5),
    (["--handshake-timeout", "2.5"], "handshake_timeout_s", 2.5),
    (["--rate-limit", "0"], "rate_limit", 0.0),
    (["--slow-consumer-timeout", "3"], "slow_consumer_timeout_s", 3.0),
    (["--shutdown-grace", "1.5"], "shutdown_grace_s", 1.5),
    (["--session-store", "memory"], "session_store", "memory"),
    (["--history-limit", "50"], "history_limit", 50),
    (["--workspace", "/srv/ws"], "workspace_dir", "/srv/ws"),
    (["--no-webui"], "webui", False),
    (["--webui-dir", "/srv/ui"], "webui_dir", "/srv/ui"),
    (["--sqlite-synchronous", "full"], "sqlite_synchronous", "full"),
    (["--redis-partitions", "8"], "redis_partitions", 8),
    (["--redis-lease-ttl", "2.5"], "redis_lease_ttl_s", 2.5),
    (["--redis-chat-ttl", "600"], "redis_chat_ttl_s", 600.0),
    (["--redis-delta-window", "0"], "redis_delta_window_s", 0.0),
    (["--media-dir", "/srv/media"], "media_dir", "/srv/media"),
    (
        ["--allowed-host", "chat.lan", "--allowed-host", "box"],
        "allowed_hosts",
        ("chat.lan", "box"),
    ),
    (
        ["--allowed-origin", "https://a.example"],
        "allowed_origins",
        ("https://a.example",),
    ),
]


@pytest.mark.parametrize(("argv", "field", "value"), CASES)
def test_flag_lands_on_field(argv: list[str], field: str, value: object) -> None:
    overrides = overrides_from_args(parse(*argv))
    assert overrides == {field: value}
    assert type(overrides[field]) is type(value)


def test_every_flag_has_a_case() -> None:
    assert sorted(field for _, field, _ in CASES) == sorted(FLAG_FOR_FIELD)


def test_every_mapped_field_exists() -> None:
    assert set(FLAG_FOR_FIELD) <= set(ChannelConfig.__struct_fields__)


def test_flags_are_unique() -> None:
    assert len(set(FLAG_FOR_FIELD.values())) == len(FLAG_FOR_FIELD)


def test_no_flags_no_overrides() -> None:
    ns = parse()
    assert overrides_from_args(ns) == {}
    assert ns.config is None


def test_config_flag() -> None:
    assert parse("--config", "c.toml").config == "c.toml"


@pytest.mark.parametrize(
    "argv", [["--port", "x"], ["--ping-interval", "soon"], ["--no-require-token=1"]]
)
def test_unparsable_value_exits_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code == 2


def test_help_says_what_each_flag_sets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--help")
    text = " ".join(capsys.readouterr().out.split())
    for field, flag in FLAG_FOR_FIELD.items():
        assert flag in text
        assert f"sets {field}" in text


def test_flags_override_file_but_absent_flags_do_not(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('port = 9000\npath = "/ws"\nallow_from = ["x"]\n')
    ns = parse("--config", str(path), "--port", "9100", "--no-require-token")
    cfg = build_config(ns.config, overrides=overrides_from_args(ns), environ={})
    assert (cfg.port, cfg.path, cfg.allow_from) == (9100, "/ws", ("x",))
    assert cfg.websocket_requires_token is False


def test_out_of_bounds_flag_is_a_config_error() -> None:
    ns = parse("--ping-interval", "4")
    with pytest.raises(ConfigError) as info:
        build_config(overrides=overrides_from_args(ns), environ={})
    assert str(info.value) == "ping_interval_s: expected float >= 5"
