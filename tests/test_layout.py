"""The architecture as the tree shows it, kept true by a test.

``trio_channel.core`` is the sans-IO protocol core: it must never import
trio, a socket, a thread, SQLite or a network library, so every decision in
it stays a plain function tested without I/O. And no module of the package
reaches into a library's private names.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trio_channel"
CORE = PACKAGE / "core"
#: What the core may not import, at any depth (``trio.testing`` included).
BANNED_IN_CORE = {
    "trio",
    "trio_websocket",
    "wsproto",
    "h11",
    "socket",
    "ssl",
    "sqlite3",
    "threading",
    "asyncio",
    "anyio",
    "coredis",
    "time",
    "select",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_the_core_does_no_io(path: Path) -> None:
    assert not (_imports(path) & BANNED_IN_CORE), path.name


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_the_core_imports_nothing_above_it(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 2:
            # Only the configuration Struct, which is plain data.
            assert node.module == "config", (path.name, node.module)


def test_no_private_names_of_other_libraries() -> None:
    private = ("_wsproto", "_stream_lock", "_reader_task", "_get_request")
    private += ("_abort_web_socket", "_close_stream", "_impl")
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for name in private:
            assert f".{name}" not in text, (path, name)


def test_modules_stay_short() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 500
    }
    assert long == {}


def test_coredis_is_imported_only_for_a_redis_store() -> None:
    """A third of the daemon's import time: a single daemon never pays it."""
    code = (
        "import sys, trio_channel, trio_channel.cli, trio_channel.testing\n"
        "from trio_channel.store import open_store\n"
        "from trio_channel.config import build_config\n"
        "open_store(build_config(None, overrides={'session_store': 'memory'}))\n"
        "assert 'coredis' not in sys.modules, 'coredis imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
