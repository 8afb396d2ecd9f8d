"""Developer sessions: ``nox -s lint typecheck tests`` must be clean before a merge."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

SOURCES = ["trio_channel", "tests", "benchmarks", "docs/examples", "noxfile.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite: unit, in-memory server, end-to-end, browser, and
    the several-daemons scenarios (``-m cluster``).

    Two pytest-xdist workers for everything but the cluster scenarios, which
    then run alone: two daemons and a Redis each, with lease and feed
    timings that should not share two cores with the rest. The workers
    steal from each other's queues (``--dist worksteal``): xdist's default
    hands each worker a first block of a quarter of its share in collection
    order, so one worker got every browser and end-to-end test and ran them
    alone for 36 of the suite's 60 s while the other, done with the unit
    tests, sat idle (44 s with stealing). Arguments replace all that:
    ``nox -s tests -- tests/test_hub.py -x``.
    """
    session.install("-e", ".[test]")
    if session.posargs:
        session.run("pytest", *session.posargs)
        return
    session.run("pytest", "-n", "2", "--dist", "worksteal", "-m", "not cluster")
    session.run("pytest", "-m", "cluster")


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session
def typecheck(session: nox.Session) -> None:
    # The redis extra too: store/_coredis.py is checked against coredis.
    session.install("-e", ".[redis]", "mypy")
    session.run("mypy", "--strict", "trio_channel")


#: The reference the benchmark measures trio_channel against, in a venv of its
#: own (it brings heavy dependencies of its own: LLM SDKs, chat platforms).
NANOBOT_REQUIREMENT = "nanobot-ai==0.2.2"
NODE_DIR = Path("benchmarks/node")


def _npm_ci(session: nox.Session) -> None:
    """``npm ci`` in benchmarks/node when node_modules is missing or stale."""
    lock = NODE_DIR / "package-lock.json"
    stamp = NODE_DIR / "node_modules" / ".bench-lock-sha256"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest:
        return
    with session.chdir(NODE_DIR):
        session.run(
            "timeout", "600", "npm", "ci", "--no-audit", "--no-fund", external=True
        )
    stamp.write_text(digest + "\n")


def _nanobot_python(session: nox.Session) -> str:
    """A venv with nanobot-ai for benchmarks/nanobot_server.py; made once."""
    venv = Path(session.virtualenv.location).parent / "bench-nanobot"
    python = venv / "bin" / "python"
    stamp = venv / ".bench-requirement"
    if stamp.exists() and stamp.read_text().strip() == NANOBOT_REQUIREMENT:
        return str(python)
    session.run("python", "-m", "venv", "--clear", str(venv))
    session.run(
        "timeout",
        "1800",
        str(python),
        "-m",
        "pip",
        "install",
        "--quiet",
        NANOBOT_REQUIREMENT,
        external=True,
    )
    stamp.write_text(NANOBOT_REQUIREMENT + "\n")
    return str(python)


@nox.session
def bench(session: nox.Session) -> None:
    """trio_channel against nanobot, websockets and trio-websocket servers.

    See docs/benchmarks.md. Not part of the default sessions: it takes about
    8 minutes on 2 cores. ``nox -s bench -- --quick`` is a 90-second smoke
    run, ``-- --only KEY ...`` runs chosen rows (``--only chats_rss``: the
    chat-metadata memory scenario, a few minutes; ``--only two_nodes``: two
    daemons over one Redis against one over SQLite).
    """
    # The redis extra for the two-node rows (redis-server from Debian).
    session.install("-e", ".[redis]", "websockets", "psutil")
    _npm_ci(session)
    nanobot = _nanobot_python(session)
    session.run(
        "python", "benchmarks/run.py", "--nanobot-python", nanobot, *session.posargs
    )
