"""``trio-channel`` refuses bad configuration with one line and status 2.

Every case is a fresh interpreter, so they all run at once (the ``outcomes``
fixture) and each test only reads its own result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import daemon_env, serve_command

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

Outcomes = dict[str, subprocess.CompletedProcess[str]]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "trio_channel", *args]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def outcomes(root: Path) -> Outcomes:
    """Run every case concurrently; case name -> finished process."""
    commands: dict[str, list[str]] = {}
    for case, (flags, _) in BAD_FLAGS.items():
        commands[case] = serve_command(root / case, *flags)
    for name, text in GOOD_FILES.items():
        (root / name).write_text(text)
        commands[name] = _cli("check-config", str(root / name))
    for name, (text, _) in BAD_FILES.items():
        (root / name).write_text(text)
        commands[name] = _cli("check-config", str(root / name))
    commands["missing"] = _cli("check-config", str(root / "nope.toml"))
    commands["serve-bad-file"] = _cli(
        "serve", "--config", str(root / "range.toml"), "--data-dir", str(root / "d")
    )
    running = {
        case: subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=daemon_env(),
        )
        for case, argv in commands.items()
    }
    results: Outcomes = {}
    try:
        for case, proc in running.items():
            stdout, stderr = proc.communicate(timeout=30)
            results[case] = subprocess.CompletedProcess(
                proc.args, proc.returncode, stdout, stderr
            )
    finally:
        for proc in running.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def assert_config_error(result: subprocess.CompletedProcess[str], field: str) -> None:
    assert result.returncode == CONFIG_ERROR, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"config error: {field}: "), lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_serve_refuses_bad_flags(outcomes: Outcomes, root: Path, case):
    assert_config_error(outcomes[case], BAD_FLAGS[case][1])
    assert not (root / case).exists()  # refused before the data dir is made


def test_serve_refuses_a_bad_config_file(outcomes: Outcomes):
    assert_config_error(outcomes["serve-bad-file"], "ping_interval_s")


@pytest.mark.parametrize("name", GOOD_FILES)
def test_check_config_accepts_a_good_file(outcomes: Outcomes, root: Path, name):
    result = outcomes[name]
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{root / name}: ok\n"
    assert result.stderr == ""


@pytest.mark.parametrize("name", BAD_FILES)
def test_check_config_refuses_a_bad_file(outcomes: Outcomes, name):
    assert_config_error(outcomes[name], BAD_FILES[name][1])


def test_check_config_refuses_a_missing_file(outcomes: Outcomes):
    assert_config_error(outcomes["missing"], "config")
