"""Developer sessions: ``nox -s lint typecheck tests`` must be clean before a merge."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

SOURCES = ["trio_channel", "tests", "benchmarks", "docs/examples", "noxfile.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (unit, in-memory server, end-to-end)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".", "mypy")
    session.run("mypy", "--strict", "trio_channel")


@nox.session
def bench(session: nox.Session) -> None:
    """trio_channel against a bare trio-websocket server (docs/benchmarks.md).

    Not part of the default sessions: it takes about 3 minutes on 2 cores.
    ``nox -s bench -- --quick`` is a 30-second smoke run.
    """
    session.install("-e", ".", "websockets", "psutil")
    session.run("python", "benchmarks/run.py", *session.posargs)
