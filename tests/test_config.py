"""Config loading as a user meets it: files, environment, overrides, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import pytest

from trio_channel.config import (
    ChannelConfig,
    ConfigError,
    build_config,
    load_config_file,
    normalize_path,
    validate_config,
)


def build(**overrides: object) -> ChannelConfig:
    """Build from defaults plus *overrides*, ignoring the real environment."""
    return build_config(overrides=overrides, environ={})


def refused(**overrides: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build(**overrides)
    return info.value


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- defaults and paths -----------------------------------------------------


def test_defaults_match_protocol_section_7() -> None:
    cfg = build()
    assert cfg.enabled is False
    assert (cfg.host, cfg.port) == ("127.0.0.1", 8765)
    assert cfg.unix_socket_path == ""
    assert cfg.path == "/"
    assert (cfg.token, cfg.token_issue_path, cfg.token_issue_secret) == ("", "", "")
    assert cfg.token_ttl_s == 300
    assert cfg.websocket_requires_token is True
    assert cfg.allow_from == ("*",)
    assert cfg.streaming is True
    assert cfg.max_message_bytes == 37_748_736
    assert (cfg.ping_interval_s, cfg.ping_timeout_s) == (20.0, 20.0)
    assert (cfg.ssl_certfile, cfg.ssl_keyfile) == ("", "")


def test_defaults_expand_data_dir() -> None:
    cfg = build()
    assert cfg.data_dir == os.path.expanduser("~/.local/share/trio-channel")
    assert cfg.log_level == "info"


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/", "/"),
        ("//", "/"),
        ("/ws", "/ws"),
        ("/ws/", "/ws"),
        ("/ws//", "/ws"),
        ("/ws?x=1", "/ws"),
        ("/ws/?x=1/", "/ws"),
        ("/?token=a", "/"),
        ("/a/b/", "/a/b"),
    ],
)
def test_normalize_path(raw: str, normal: str) -> None:
    assert normalize_path(raw) == normal


# --- files -------------------------------------------------------------------


def test_toml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.toml",
        'host = "127.0.0.2"\nport = 9000\npath = "/ws"\nallow_from = ["a", "b"]\n'
        "ping_interval_s = 30\n",
    )
    cfg = build_config(path, environ={})
    assert (cfg.host, cfg.port, cfg.path) == ("127.0.0.2", 9000, "/ws")
    assert cfg.allow_from == ("a", "b")
    assert cfg.ping_interval_s == 30.0


def test_json_file(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", '{"port": 9001, "streaming": false}')
    cfg = build_config(path, environ={})
    assert (cfg.port, cfg.streaming) == (9001, False)


@pytest.mark.parametrize(
    "text", ['{"port": 9002}', "port = 9002\n"], ids=["json", "toml"]
)
def test_other_extension_tries_json_then_toml(tmp_path: Path, text: str) -> None:
    assert build_config(write(tmp_path, "c.conf", text), environ={}).port == 9002


def test_camel_case_keys(tmp_path: Path) -> None:
    doc = {
        "websocketRequiresToken": False,
        "allowFrom": ["me"],
        "maxMessageBytes": 2048,
        "pingIntervalS": 6,
        "pingTimeoutS": 7.5,
        "tokenTtlS": 60,
        "tokenIssuePath": "/auth/token",
        "unixSocketPath": "/tmp/x.sock",
        "maxConnections": 5,
    }
    cfg = build_config(write(tmp_path, "c.json", json.dumps(doc)), environ={})
    assert cfg.websocket_requires_token is False
    assert cfg.allow_from == ("me",)
    assert cfg.max_message_bytes == 2048
    assert (cfg.ping_interval_s, cfg.ping_timeout_s) == (6.0, 7.5)
    assert cfg.token_ttl_s == 60
    assert cfg.token_issue_path == "/auth/token"
    assert cfg.unix_socket_path == "/tmp/x.sock"
    assert cfg.max_connections == 5


def test_nanobot_json_file_loads_as_is(tmp_path: Path) -> None:
    doc = {
        "agents": {"defaults": {"model": "x"}},
        "channels": {
            "websocket": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": 8765,
                "allowFrom": ["*"],
                "websocketRequiresToken": False,
                "streaming": True,
            }
        },
    }
    cfg = build_config(write(tmp_path, "config.json", json.dumps(doc)), environ={})
    assert cfg.enabled is True
    assert cfg.websocket_requires_token is False
    assert cfg.allow_from == ("*",)


def test_nanobot_toml_file(tmp_path: Path) -> None:
    text = '[channels.websocket]\nport = 8766\ntokenIssueSecret = "s"\n'
    cfg = build_config(write(tmp_path, "c.toml", text), environ={})
    assert (cfg.port, cfg.token_issue_secret) == (8766, "s")


def test_load_config_file_returns_snake_case_section(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", '{"channels":{"websocket":{"pingIntervalS":9}}}')
    assert load_config_file(Path(path)) == {"ping_interval_s": 9}


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("c.toml", "port = ", "config: invalid TOML: "),
        ("c.json", "{port", "config: invalid JSON: "),
        ("c.conf", "{port", "config: neither JSON ("),
        ("c.json", "[1, 2]", "config: top level must be an object"),
        ("c.toml", "channels = 1", "config: channels.websocket must be an object"),
        ("c.json", '{"channels": {}}', "config: channels.websocket must be"),
        ("c.json", '{"port": 1, "Port": 2}', "Port: unknown field"),
        ("c.json", '{"allowFrom": [], "allow_from": []}', "allow_from: given twice"),
        ("c.json", '{"fooBar": 1}', "fooBar: unknown field"),
    ],
)
def test_bad_file(tmp_path: Path, name: str, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(write(tmp_path, name, text), environ={})
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "x.toml"
    with pytest.raises(ConfigError) as info:
        build_config(str(missing), environ={})
    reason = "No such file or directory"
    assert str(info.value) == f"config: cannot read {missing}: {reason}"
    assert info.value.field == "config"


# --- layering ----------------------------------------------------------------


def test_environment_supplies_secrets(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", 'token = "file"\ntoken_issue_secret = "file"\n')
    env = {"TRIO_CHANNEL_TOKEN": "env", "TRIO_CHANNEL_TOKEN_ISSUE_SECRET": "env2"}
    cfg = build_config(path, environ=env)
    assert (cfg.token, cfg.token_issue_secret) == ("env", "env2")


def test_empty_environment_value_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", 'token = "file"\n')
    assert build_config(path, environ={"TRIO_CHANNEL_TOKEN": ""}).token == "file"


def test_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIO_CHANNEL_TOKEN", "from-os")
    assert build_config().token == "from-os"


def test_overrides_beat_file_and_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", 'port = 9000\ntoken = "file"\nhost = "::1"\n')
    cfg = build_config(
        path,
        overrides={"port": 9100, "token": "flag", "host": None},
        environ={"TRIO_CHANNEL_TOKEN": "env"},
    )
    assert (cfg.port, cfg.token, cfg.host) == (9100, "flag", "::1")


# --- bounds (PROTOCOL 7 and our own) -----------------------------------------

BOUNDS = [
    ("port", 0, 65535, None, 65536),
    ("token_ttl_s", 30, 86_400, 29, 86_401),
    ("max_message_bytes", 1024, 41_943_040, 1023, 41_943_041),
    ("ping_interval_s", 5.0, 300.0, 4.9, 301.0),
    ("ping_timeout_s", 5.0, 300.0, 4.9, 301.0),
    ("max_connections", 1, 1_000_000, 0, 1_000_001),
    ("handshake_timeout_s", 0.001, 300.0, 0.0, 300.5),
    ("slow_consumer_timeout_s", 0.001, 3600.0, 0.0, 3600.5),
    ("send_queue_frames", 16, 1_000_000, 15, 1_000_001),
    ("bus_capacity", 1, 1_000_000, 0, 1_000_001),
    ("rate_limit", 0.0, 1_000_000.0, -0.1, 1_000_000.5),
    ("shutdown_grace_s", 0.0, 300.0, -0.1, 300.5),
]


@pytest.mark.parametrize(("field", "low", "high", "_below", "_above"), BOUNDS)
def test_bound_edges_accepted(
    field: str, low: object, high: object, _below: object, _above: object
) -> None:
    for value in (low, high):
        assert getattr(build(**{field: value}), field) == value


def _past_edges() -> list[tuple[str, object]]:
    return [
        (field, value)
        for field, _, _, below, above in BOUNDS
        for value in (below, above)
        if value is not None
    ]


@pytest.mark.parametrize(("field", "value"), _past_edges())
def test_one_past_each_bound_refused(field: str, value: object) -> None:
    err = refused(**{field: value})
    assert err.field == field
    assert str(err).startswith(f"{field}: expected ")


@pytest.mark.parametrize(
    ("overrides", "text"),
    [
        ({"ping_interval_s": 4.9}, "ping_interval_s: expected float >= 5"),
        ({"max_message_bytes": 1023}, "max_message_bytes: expected int >= 1024"),
        ({"port": 65536}, "port: expected int <= 65535"),
        ({"port": "80"}, "port: expected int, got str"),
        ({"enabled": "yes"}, "enabled: expected bool, got str"),
        ({"allow_from": "*"}, "allow_from: expected array, got str"),
        ({"foo": 1}, "foo: unknown field"),
    ],
)
def test_type_error_messages(overrides: dict[str, object], text: str) -> None:
    assert str(refused(**overrides)) == text


def test_allow_from_entries_must_be_strings() -> None:
    err = refused(allow_from=["a", 1])
    assert err.field == "allow_from"
    assert "\n" not in str(err)


def test_empty_allow_from_is_valid() -> None:
    assert build(allow_from=[]).allow_from == ()


# --- semantic rules ----------------------------------------------------------


@pytest.fixture
def pem_pair(tmp_path: Path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("cert")
    key.write_text("key")
    return str(cert), str(key)


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"path": "ws"}, "path", "must start with '/'"),
        ({"path": ""}, "path", "must start with '/'"),
        ({"token_issue_path": "token"}, "token_issue_path", "must start with '/'"),
        ({"token_issue_path": "/"}, "token_issue_path", "must differ from path"),
        (
            {"path": "/ws", "token_issue_path": "/ws/?x=1"},
            "token_issue_path",
            "must differ from path",
        ),
        ({"host": "0.0.0.0"}, "host", "requires token or token_issue_secret"),
        ({"host": "::"}, "host", "requires token or token_issue_secret"),
        ({"host": ""}, "host", "must not be empty"),
        ({"unix_socket_path": "rel.sock"}, "unix_socket_path", "must be absolute"),
        ({"unix_socket_path": "/a\0b"}, "unix_socket_path", "NUL"),
        ({"ssl_certfile": "/c.pem"}, "ssl_keyfile", "required when ssl_certfile"),
        ({"ssl_keyfile": "/k.pem"}, "ssl_certfile", "required when ssl_keyfile"),
        (
            {"ssl_certfile": "/nope/c.pem", "ssl_keyfile": "/nope/k.pem"},
            "ssl_certfile",
            "no such file: /nope/c.pem",
        ),
        ({"log_level": "loud"}, "log_level", "must be one of debug, info"),
        ({"agent": "echo"}, "agent", "package.module:function"),
        ({"agent": "a.b:"}, "agent", "package.module:function"),
        ({"agent": "a..b:f"}, "agent", "package.module:function"),
        ({"agent": "a.b:f:g"}, "agent", "package.module:function"),
        ({"agent": "a.b:f()"}, "agent", "package.module:function"),
        ({"agent": "a-b:f"}, "agent", "package.module:function"),
        ({"agent": "a.class:f"}, "agent", "package.module:function"),
        ({"data_dir": ""}, "data_dir", "must not be empty"),
        ({"data_dir": "/a\0b"}, "data_dir", "NUL"),
    ],
)
def test_semantic_rule_refused(
    overrides: dict[str, object], field: str, fragment: str
) -> None:
    err = refused(**overrides)
    assert err.field == field
    assert str(err).startswith(f"{field}: ")
    assert fragment in err.message


def test_missing_keyfile_named(pem_pair: tuple[str, str]) -> None:
    cert, key = pem_pair
    assert str(refused(ssl_keyfile=key + ".missing", ssl_certfile=cert)) == (
        f"ssl_keyfile: no such file: {key}.missing"
    )


def test_tls_on_unix_socket_refused(pem_pair: tuple[str, str]) -> None:
    cert, key = pem_pair
    err = refused(ssl_certfile=cert, ssl_keyfile=key, unix_socket_path="/tmp/s")
    assert str(err) == "ssl_certfile: no TLS on a unix socket"


def test_tls_pair_accepted(pem_pair: tuple[str, str]) -> None:
    cert, key = pem_pair
    cfg = build(ssl_certfile=cert, ssl_keyfile=key)
    assert (cfg.ssl_certfile, cfg.ssl_keyfile) == (cert, key)


@pytest.mark.parametrize(
    "overrides",
    [
        {"host": "0.0.0.0", "token": "t"},
        {"host": "::", "token_issue_secret": "s"},
        {"path": "/ws", "token_issue_path": "/token"},
        {"log_level": "WARNING"},
        {"agent": "pkg.mod_2:run"},
        {"agent": "mod:_f"},
        {"unix_socket_path": "~/run/c.sock"},
    ],
)
def test_valid_combinations_accepted(overrides: dict[str, object]) -> None:
    build(**overrides)


def test_tilde_expanded_and_log_level_lowered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "c.pem").write_text("c")
    (tmp_path / "k.pem").write_text("k")
    cfg = build(
        data_dir="~/data",
        ssl_certfile="~/c.pem",
        ssl_keyfile="~/k.pem",
        log_level="DEBUG",
    )
    assert cfg.data_dir == str(tmp_path / "data")
    assert cfg.ssl_certfile == str(tmp_path / "c.pem")
    assert cfg.ssl_keyfile == str(tmp_path / "k.pem")
    assert cfg.log_level == "debug"
    # TLS on a unix socket is refused, so the socket path gets its own build.
    assert build(unix_socket_path="~/s.sock").unix_socket_path == str(
        tmp_path / "s.sock"
    )


def test_validate_config_returns_a_copy() -> None:
    raw = ChannelConfig(log_level="ERROR")
    checked = validate_config(raw)
    assert raw.log_level == "ERROR"
    assert checked.log_level == "error"


def test_validate_config_checks_structs_built_directly() -> None:
    with pytest.raises(ConfigError, match=r"^path: "):
        validate_config(ChannelConfig(path="nope"))


# --- the error itself ---------------------------------------------------------


def test_config_error_is_one_line() -> None:
    err = ConfigError("path", "line one\nline two\r\n  three")
    assert str(err) == "path: line one line two three"
    assert (err.field, err.message) == ("path", "line one line two three")


def test_config_error_survives_pickling() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(ConfigError("port", "bad")))
    assert str(err) == "port: bad"


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        build().port = 1  # type: ignore[misc]


def test_config_roundtrips_through_json() -> None:
    cfg = build(allow_from=["a"])
    again = msgspec.json.decode(msgspec.json.encode(cfg), type=ChannelConfig)
    assert again == cfg


# --- webui_dir -------------------------------------------------------------------


@pytest.fixture
def ui_build(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html>")
    return root


def test_webui_dir_is_made_absolute(
    ui_build: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert build().webui_dir == ""
    assert build(webui_dir=str(ui_build)).webui_dir == str(ui_build)
    monkeypatch.chdir(ui_build.parent)
    assert build(webui_dir="dist").webui_dir == str(ui_build)
    monkeypatch.setenv("HOME", str(ui_build.parent))
    assert build(webui_dir="~/dist").webui_dir == str(ui_build)


def test_webui_dir_must_hold_an_index(ui_build: Path) -> None:
    (ui_build / "index.html").unlink()
    err = refused(webui_dir=str(ui_build))
    assert str(err) == f"webui_dir: no index.html in {ui_build}"
    (ui_build / "index.html").mkdir()
    err = refused(webui_dir=str(ui_build))
    assert str(err) == f"webui_dir: index.html in {ui_build} is not a regular file"
    (ui_build / "index.html").rmdir()
    (ui_build / "real.html").write_text("x")
    (ui_build / "index.html").symlink_to(ui_build / "real.html")
    err = refused(webui_dir=str(ui_build))
    assert str(err) == f"webui_dir: index.html in {ui_build} is not a regular file"


@pytest.mark.parametrize(
    ("overrides", "text"),
    [
        ({"webui_dir": "/no/such/dir"}, "webui_dir: not a directory: /no/such/dir"),
        ({"webui_dir": "/a\0b"}, "webui_dir: must not contain NUL"),
    ],
)
def test_webui_dir_refusals(overrides: dict[str, object], text: str) -> None:
    assert str(refused(**overrides)) == text


def test_webui_dir_needs_the_page_on(ui_build: Path) -> None:
    err = refused(webui_dir=str(ui_build), webui=False)
    assert str(err) == "webui_dir: set, but webui is off (--no-webui)"


def test_webui_dir_loads_from_a_file_in_camel_case(
    tmp_path: Path, ui_build: Path
) -> None:
    path = write(tmp_path, "c.json", json.dumps({"webuiDir": str(ui_build)}))
    assert build_config(path, environ={}).webui_dir == str(ui_build)
