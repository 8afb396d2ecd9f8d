"""Operator conveniences of the ``trio-channel`` command, as an operator meets
them: --version, --help defaults, print-config, every check-config error,
the environment, health, the start-up line, access lines, JSON logs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from trio_channel import __version__

from ..conftest import CliRunner
from ._client import connect, http_get
from .conftest import REPO_ROOT, Daemon, DaemonFactory, daemon_env


def wait_for_stderr(daemon: Daemon, text: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in daemon.stderr:
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not logged:\n{daemon.stderr}")
        time.sleep(0.02)


def test_the_module_runs_as_a_program() -> None:
    """The one case in a fresh interpreter: ``python -m trio_channel``."""
    result = subprocess.run(
        [sys.executable, "-m", "trio_channel", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        env=daemon_env(),
        stdin=subprocess.DEVNULL,
    )
    assert (result.returncode, result.stdout) == (0, f"trio-channel {__version__}\n")


def test_version(cli: CliRunner) -> None:
    result = cli("--version")
    assert (result.returncode, result.stdout) == (0, f"trio-channel {__version__}\n")


def test_help_shows_defaults_and_variables(cli: CliRunner) -> None:
    result = cli("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "default 8765; env TRIO_CHANNEL_PORT" in text
    assert "default info; env TRIO_CHANNEL_LOG_LEVEL" in text


def test_print_config_masks_secrets(cli: CliRunner, tmp_path: Path) -> None:
    result = cli(
        "print-config",
        "--port",
        "9100",
        env={"TRIO_CHANNEL_TOKEN_ISSUE_SECRET": "hunter2", "TRIO_CHANNEL_WEBUI": "0"},
    )
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert "port = 9100  # flag" in result.stdout
    assert 'token_issue_secret = "********"' in result.stdout
    # The output is a config file the daemon reads back.
    path = tmp_path / "effective.toml"
    path.write_text(result.stdout.replace('"********"', '"x"'))
    assert cli("check-config", str(path)).returncode == 0


def test_print_config_masks_a_redis_password(cli: CliRunner) -> None:
    result = cli(
        "print-config",
        env={"TRIO_CHANNEL_SESSION_STORE": "redis://:hunter2@127.0.0.1:6379/0"},
    )
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert 'session_store = "redis://:********@127.0.0.1:6379/0"' in result.stdout


def test_check_config_lists_every_error(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('ping_interval_s = 1\npath = "ws"\nbogus = 1\n')
    result = cli("check-config", str(path), env={"TRIO_CHANNEL_PORT": "eighty"})
    assert result.returncode == 2
    lines = sorted(result.stderr.splitlines())
    assert [line.split(":")[1].strip() for line in lines] == [
        "bogus",
        "path",
        "ping_interval_s",
        "port",
    ]
    assert "(from TRIO_CHANNEL_PORT)" in result.stderr


def test_health_exit_status(cli: CliRunner, spawn_module_daemon: DaemonFactory) -> None:
    daemon = spawn_module_daemon()
    ok = cli("health", f"http://127.0.0.1:{daemon.port}/")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("healthy: HTTP 200")
    down = cli("health", "http://127.0.0.1:9/", "--timeout", "2")
    assert down.returncode == 1
    assert down.stderr.startswith("unhealthy: cannot reach")


def test_startup_line_and_access_lines(spawn_module_daemon: DaemonFactory) -> None:
    daemon = spawn_module_daemon()
    (line,) = [x for x in daemon.stderr.splitlines() if "listening on" in x]
    assert f"INFO trio_channel.startup: listening on {daemon.url} " in line
    for field in (
        "page=http://127.0.0.1:",
        "auth=loopback-bootstrap",
        "data_dir=",
        "store=sqlite",
        "agent=trio_channel.agents.echo:echo_agent",
    ):
        assert field in line
    status, _, _ = http_get(daemon.host, daemon.port, "/healthz")
    assert status == 200
    with pytest.raises(InvalidStatus):  # no token: 401
        connect(daemon.ws_url("client_id=nobody")).close()
    _, _, body = http_get(daemon.host, daemon.port, "/api/bootstrap")
    token = json.loads(body)["token"]
    with connect(daemon.ws_url(f"client_id=ops-test&token={token}")) as ws:
        ws.recv(timeout=5)
    wait_for_stderr(daemon, "connection closed client_id=ops-test code=1000")
    text = daemon.stderr
    assert "access: http request method=GET path=/healthz status=200" in text
    assert "access: handshake refused status=401" in text
    assert "access: connection opened client_id=ops-test peer=127.0.0.1:" in text
    assert "duration_s=" in text
    assert token not in text


def test_json_log_format(spawn_daemon: DaemonFactory) -> None:
    daemon = spawn_daemon("--log-format", "json")
    http_get(daemon.host, daemon.port, "/healthz")
    wait_for_stderr(daemon, '"path": "/healthz"')
    docs = [json.loads(line) for line in daemon.stderr.splitlines()]
    assert docs[0]["msg"].startswith(f"listening on {daemon.url} page=http://")
    assert docs[0]["ws_url"] == daemon.url
    assert docs[0]["auth"] == "loopback-bootstrap"
    assert any(d.get("status") == 200 for d in docs)


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="no systemd-analyze"
)
def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (REPO_ROOT / "deploy/trio-channel.service").read_text()
    executable = shutil.which("trio-channel") or sys.executable
    unit = unit.replace("/usr/local/bin/trio-channel", executable)
    (tmp_path / "trio-channel.service").write_text(unit)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "trio-channel.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "trio-channel.service" not in result.stderr, result.stderr


def test_chat_reads_lines_from_a_pipe(spawn_module_daemon: DaemonFactory) -> None:
    daemon = spawn_module_daemon()
    result = subprocess.run(
        [sys.executable, "-m", "trio_channel", "chat", daemon.ws_url()],
        input="hello from a pipe\nstream:3\n/chats\n/quit\n",
        capture_output=True,
        text=True,
        timeout=30,
        env=daemon_env(),
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "agent: hello from a pipe" in out
    assert "agent: chunk 1 chunk 2 chunk 3" in out
    assert "[chat " in out and "idle" in out  # status changes as lines


def test_chat_without_a_daemon_says_what_to_do(cli: CliRunner) -> None:
    result = cli("chat", "http://127.0.0.1:9/")
    assert result.returncode == 1
    assert "cannot reach http://127.0.0.1:9/" in result.stderr
    assert "trio-channel serve" in result.stderr
