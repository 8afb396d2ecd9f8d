"""``trio-channel`` refuses bad configuration with one line and status 2.

In-process (the ``cli`` fixture): every case is refused before the daemon
would start, so a fresh interpreter per case would only add start-up time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import CliResult, CliRunner

CONFIG_ERROR = 2

#: case -> (serve flags, the field the one error line must name)
BAD_FLAGS = {
    "ping-interval": (["--ping-interval", "1"], "ping_interval_s"),
    "ping-timeout": (["--ping-timeout", "301"], "ping_timeout_s"),
    "max-message-bytes": (["--max-message-bytes", "1023"], "max_message_bytes"),
    "wildcard-host": (["--host", "0.0.0.0"], "host"),
    "tls-pair": (["--ssl-certfile", "/nonexistent/cert.pem"], "ssl_keyfile"),
    "path": (["--path", "ws"], "path"),
    "issue-path": (["--token-issue-path", "/"], "token_issue_path"),
    "unix-socket": (["--unix-socket", "relative.sock"], "unix_socket_path"),
}

#: file name -> text; ``check-config`` accepts these.
GOOD_FILES = {
    "plain.toml": 'host = "127.0.0.1"\nport = 9000\nallow_from = ["alice"]\n',
    "nanobot.json": json.dumps(
        {
            "channels": {
                "websocket": {
                    "enabled": True,
                    "pingIntervalS": 30,
                    "websocketRequiresToken": False,
                    "allowFrom": ["*"],
                }
            }
        }
    ),
}

#: file name -> (text, the field named); ``check-config`` refuses these.
BAD_FILES = {
    "range.toml": ("ping_interval_s = 1\n", "ping_interval_s"),
    "type.json": ('{"port": "eighty"}', "port"),
    "unknown.toml": ("bogus = 1\n", "bogus"),
    "tls.toml": ('ssl_keyfile = "/nonexistent/key.pem"\n', "ssl_certfile"),
    "syntax.toml": ("port = \n", "config"),
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path


def serve(root: Path, case: str, *flags: str) -> list[str]:
    return ["serve", "--port", "0", "--data-dir", str(root / case), *flags]


def assert_config_error(result: CliResult, field: str) -> None:
    assert result.returncode == CONFIG_ERROR, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"config error: {field}: "), lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_serve_refuses_bad_flags(cli: CliRunner, root: Path, case):
    flags, field = BAD_FLAGS[case]
    assert_config_error(cli(*serve(root, case, *flags)), field)
    assert not (root / case).exists()  # refused before the data dir is made


def test_serve_refuses_a_bad_config_file(cli: CliRunner, root: Path):
    text, field = BAD_FILES["range.toml"]
    (root / "range.toml").write_text(text)
    result = cli(*serve(root, "d", "--config", str(root / "range.toml")))
    assert_config_error(result, field)
    assert not (root / "d").exists()


@pytest.mark.parametrize("name", GOOD_FILES)
def test_check_config_accepts_a_good_file(cli: CliRunner, root: Path, name):
    (root / name).write_text(GOOD_FILES[name])
    result = cli("check-config", str(root / name))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{root / name}: ok\n"
    assert result.stderr == ""


@pytest.mark.parametrize("name", BAD_FILES)
def test_check_config_refuses_a_bad_file(cli: CliRunner, root: Path, name):
    text, field = BAD_FILES[name]
    (root / name).write_text(text)
    assert_config_error(cli("check-config", str(root / name)), field)


def test_check_config_refuses_a_missing_file(cli: CliRunner, root: Path):
    assert_config_error(cli("check-config", str(root / "nope.toml")), "config")
