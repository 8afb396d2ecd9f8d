"""``trio-channel``: ``serve`` runs the daemon, ``check-config FILE`` validates a file.

Every configuration mistake ends as one line ``config error: FIELD: ...`` and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from .bus import AgentBusEnds, open_bus
from .config import ChannelConfig, ConfigError, build_config
from .flags import add_serve_arguments, overrides_from_args
from .server import Channel
from .store.base import StoreError

log = logging.getLogger("trio_channel")

AgentFunction = Callable[[Any, Any], Awaitable[None]]

EXIT_CONFIG = 2


def load_agent(spec: str) -> AgentFunction:
    """Import ``package.module:function`` and check it is an async function."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError("agent", f"cannot import {module_name!r}: {exc}") from None
    func = getattr(module, attr, None)
    if func is None:
        raise ConfigError("agent", f"{module_name!r} has no attribute {attr!r}")
    if not inspect.iscoroutinefunction(func):
        raise ConfigError("agent", f"{spec!r} is not an async function")
    return func  # type: ignore[no-any-return]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-channel",
        description="A trio WebSocket channel between an AI agent and its clients.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the daemon")
    add_serve_arguments(serve)
    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file", help="TOML or JSON file (a nanobot config works too)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            build_config(args.file)
            print(f"{args.file}: ok")
            return 0
        cfg = build_config(args.config, overrides=overrides_from_args(args))
        agent = load_agent(cfg.agent)
        _make_data_dir(cfg)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(cfg.log_level)
    status = 0
    try:
        trio.run(_serve, cfg, agent)
    except* StoreError as group:
        # A corrupt, unreadable or unreachable store: name it, exit 2.
        print(f"error: session store: {_first(group)}", file=sys.stderr)
        status = EXIT_CONFIG
    except* OSError as group:
        # Binding failed (address in use, permission denied, bad TLS files).
        print(f"error: cannot listen: {_first(group)}", file=sys.stderr)
        status = 1
    except* Exception as group:
        log.debug("the daemon failed", exc_info=group)
        print(
            f"error: {_first(group)!r} (--log-level debug shows where)", file=sys.stderr
        )
        status = 1
    return status


def _first(group: BaseExceptionGroup[Exception]) -> Exception:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, Exception)
    return exc


def _make_data_dir(cfg: ChannelConfig) -> None:
    try:
        Path(cfg.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError("data_dir", f"cannot create {cfg.data_dir}: {exc}") from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _serve(cfg: ChannelConfig, agent: AgentFunction) -> None:
    server_ends, agent_ends = open_bus(cfg.bus_capacity)
    channel = Channel(cfg, server_ends)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_run_agent, agent, agent_ends, nursery.cancel_scope)
            urls: list[str] = await nursery.start(channel.serve)
            for url in urls:
                # Printed whatever the log level: scripts wait for this line.
                print(f"trio-channel: listening on {url}", file=sys.stderr, flush=True)
            async for signum in signals:
                log.info(
                    "%s: closing every connection (1001)", signal.Signals(signum).name
                )
                break
            nursery.cancel_scope.cancel()


async def _run_agent(
    agent: AgentFunction, ends: AgentBusEnds, scope: trio.CancelScope
) -> None:
    await agent(ends.inbound, ends.outbound)
    log.warning("the agent returned; shutting down")
    scope.cancel()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
