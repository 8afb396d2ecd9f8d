"""``trio-channel``: ``serve``, ``check-config FILE``, ``print-config``,
``health [URL]`` and ``chat [URL]``.

Every configuration mistake ends as one line ``config error: FIELD: ...`` per
problem and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from . import __version__
from .app import AgentFunction, serve
from .client.chat import add_chat_arguments, chat_main
from .client.health import DEFAULT_URL, health_main
from .config import (
    SECRET_FIELDS,
    ChannelConfig,
    ConfigError,
    ConfigErrors,
    build_config,
    build_config_with_sources,
    masked_url,
)
from .flags import add_serve_arguments, overrides_from_args
from .logs import setup_logging
from .store.base import StoreError

log = logging.getLogger("trio_channel")

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
    parser.add_argument(
        "--version", action="version", version=f"trio-channel {__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the daemon")
    add_serve_arguments(serve)
    check = commands.add_parser(
        "check-config", help="validate a config file (and the environment) and exit"
    )
    check.add_argument("file", help="TOML or JSON file (a nanobot config works too)")
    show = commands.add_parser(
        "print-config",
        help="print the effective config as TOML (secrets masked) and exit",
    )
    add_serve_arguments(show)
    health = commands.add_parser(
        "health", help="exit 0 when the daemon's /healthz answers ok (for probes)"
    )
    health.add_argument(
        "url",
        nargs="?",
        default=DEFAULT_URL,
        help=f"the daemon's http(s):// or ws(s):// URL (default {DEFAULT_URL})",
    )
    health.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="give up after this long (default 5)",
    )
    chat = commands.add_parser("chat", help="chat with the agent from this terminal")
    add_chat_arguments(chat)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "health":
        return health_main(args.url, args.timeout)
    if args.command == "chat":
        return chat_main(args)
    try:
        if args.command == "check-config":
            build_config(args.file)
            print(f"{args.file}: ok")
            return 0
        overrides = overrides_from_args(args)
        if args.command == "print-config":
            cfg, sources = build_config_with_sources(args.config, overrides=overrides)
            sys.stdout.write(render_config(cfg, sources))
            return 0
        cfg = build_config(args.config, overrides=overrides)
        agent = load_agent(cfg.agent)
        _make_data_dir(cfg)
    except ConfigError as exc:
        for error in exc.errors if isinstance(exc, ConfigErrors) else [exc]:
            print(f"config error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(cfg.log_level, cfg.log_format)
    status = 0
    try:
        trio.run(serve, cfg, agent)
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


def render_config(cfg: ChannelConfig, sources: dict[str, str]) -> str:
    """The effective config as TOML ``--config`` reads, secrets masked.

    Each line says where a value came from (``# file``, ``# flag``, ``# TRIO_...``)
    unless it is the default.
    """
    lines = ["# trio-channel effective configuration (secrets masked)"]
    for field in ChannelConfig.__struct_fields__:
        value = getattr(cfg, field)
        if field in SECRET_FIELDS and value:
            text = '"********"'
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, tuple):
            text = "[" + ", ".join(json.dumps(v) for v in value) + "]"
        elif isinstance(value, str):
            text = json.dumps(masked_url(value))
        else:
            text = repr(value)
        source = sources.get(field)
        lines.append(f"{field} = {text}" + (f"  # {source}" if source else ""))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
