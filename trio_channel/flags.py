"""Command-line flags of ``trio-channel serve``, mapped onto config fields.

Every flag defaults to ``None`` so that a flag the user did not give never
hides the value from the config file or the environment: only flags that
were given become overrides (see :func:`trio_channel.config.build_config`).
Each flag stores into the namespace under its :class:`ChannelConfig` field
name, so :func:`overrides_from_args` is a plain lookup and
:data:`FLAG_FOR_FIELD` is the single place that ties the two together.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping

from .config import ENV_FOR_FIELD, SECRET_FIELDS, ChannelConfig

__all__ = [
    "CONFIG_DEST",
    "FLAG_FOR_FIELD",
    "add_serve_arguments",
    "overrides_from_args",
]

#: Namespace attribute that holds ``--config FILE`` (not a config field).
CONFIG_DEST = "config"

#: Config field -> the flag that sets it. Docs and tests check it against
#: :class:`ChannelConfig`, so a renamed field cannot leave a dead flag.
FLAG_FOR_FIELD: Mapping[str, str] = {
    "host": "--host",
    "port": "--port",
    "path": "--path",
    "unix_socket_path": "--unix-socket",
    "token": "--token",
    "token_issue_path": "--token-issue-path",
    "token_issue_secret": "--token-issue-secret",
    "websocket_requires_token": "--no-require-token",
    "allow_from": "--allow-from",
    "ssl_certfile": "--ssl-certfile",
    "ssl_keyfile": "--ssl-keyfile",
    "max_message_bytes": "--max-message-bytes",
    "ping_interval_s": "--ping-interval",
    "ping_timeout_s": "--ping-timeout",
    "data_dir": "--data-dir",
    "agent": "--agent",
    "log_level": "--log-level",
    "log_format": "--log-format",
    "max_connections": "--max-connections",
    "handshake_timeout_s": "--handshake-timeout",
    "rate_limit": "--rate-limit",
    "slow_consumer_timeout_s": "--slow-consumer-timeout",
    "shutdown_grace_s": "--shutdown-grace",
    "session_store": "--session-store",
    "history_limit": "--history-limit",
    "sqlite_synchronous": "--sqlite-synchronous",
    "redis_partitions": "--redis-partitions",
    "redis_lease_ttl_s": "--redis-lease-ttl",
    "redis_chat_ttl_s": "--redis-chat-ttl",
    "redis_delta_window_s": "--redis-delta-window",
    "media_dir": "--media-dir",
    "allowed_hosts": "--allowed-host",
    "allowed_origins": "--allowed-origin",
    "workspace_dir": "--workspace",
    "webui": "--no-webui",
    "webui_dir": "--webui-dir",
}

# List fields set by a repeatable flag: field -> (metavar, help).
_REPEATED: Mapping[str, tuple[str, str]] = {
    "allowed_hosts": ("HOST", "also accept this Host header without a secret"),
    "allowed_origins": ("ORIGIN", "also accept WebSocket upgrades from this origin"),
}

# Boolean fields that a flag can only turn off: field -> help.
_SWITCHES_OFF: Mapping[str, str] = {
    "websocket_requires_token": "accept WebSocket clients without a token",
    "webui": "do not serve the bundled chat page",
}

# field -> (type, metavar, help). Types only parse; bounds are checked once,
# by build_config, so a flag and a file value get the same error message.
_VALUED: Mapping[str, tuple[type[str] | type[int] | type[float], str, str]] = {
    "host": (str, "HOST", "TCP address to bind; 0.0.0.0 or :: need a token"),
    "port": (int, "PORT", "TCP port to bind; 0 picks any free port"),
    "path": (str, "PATH", "URL path of the WebSocket endpoint"),
    "unix_socket_path": (str, "FILE", "listen on this Unix socket instead of TCP"),
    "token": (str, "TOKEN", "static token clients may send (prefer the env var)"),
    "token_issue_path": (str, "PATH", "HTTP path that issues one-time tokens"),
    "token_issue_secret": (str, "SECRET", "secret the token-issue route requires"),
    "ssl_certfile": (str, "FILE", "TLS certificate chain (PEM); needs --ssl-keyfile"),
    "ssl_keyfile": (str, "FILE", "TLS private key (PEM); needs --ssl-certfile"),
    "max_message_bytes": (int, "N", "largest client message; bigger closes 1009"),
    "ping_interval_s": (float, "SECONDS", "seconds between keepalive pings"),
    "ping_timeout_s": (float, "SECONDS", "seconds to wait for a pong"),
    "data_dir": (str, "DIR", "directory for sessions, media and secrets"),
    "agent": (str, "MODULE:FUNCTION", "agent coroutine to run"),
    "log_level": (str, "LEVEL", "debug, info, warning, error or critical"),
    "log_format": (str, "FORMAT", "text (one line per record) or json"),
    "max_connections": (int, "N", "open WebSocket connections before 503"),
    "handshake_timeout_s": (float, "SECONDS", "deadline for the HTTP request head"),
    "rate_limit": (float, "PER_SECOND", "messages per second per connection; 0=off"),
    "slow_consumer_timeout_s": (
        float,
        "SECONDS",
        "close (1013) a connection whose socket takes no bytes this long",
    ),
    "shutdown_grace_s": (float, "SECONDS", "time clients get to close on shutdown"),
    "session_store": (
        str,
        "KIND",
        "sqlite (in data_dir), memory (nothing kept), redis://HOST:PORT/DB, "
        "redis+cluster://HOST:PORT,... or redis+sentinel://HOST:PORT,.../SERVICE",
    ),
    "redis_partitions": (int, "N", "chat partitions in Redis (every node the same)"),
    "redis_lease_ttl_s": (
        float,
        "SECONDS",
        "a dead node's chats move to the others after this long",
    ),
    "redis_chat_ttl_s": (float, "SECONDS", "an idle chat is kept this long in Redis"),
    "redis_delta_window_s": (
        float,
        "SECONDS",
        "a stream's deltas wait up to this long (at most 0.05) to join one write",
    ),
    "media_dir": (str, "DIR", "attachments; several daemons must share it"),
    "sqlite_synchronous": (
        str,
        "MODE",
        "normal (survives kill -9) or full (also power loss, slower)",
    ),
    "history_limit": (int, "N", "persisted events kept per chat"),
    "workspace_dir": (
        str,
        "DIR",
        "local images in agent markdown are served from here",
    ),
    "webui_dir": (
        str,
        "DIR",
        "serve this web UI build (a directory with index.html, such as "
        "nanobot's webui/dist) instead of the bundled page",
    ),
}


def _default_text(field: str) -> str:
    if field in SECRET_FIELDS:
        return "none"
    value = getattr(ChannelConfig(), field)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, str):
        return json.dumps(value) if value == "" or " " in value else value
    return str(value)


def _where(field: str) -> str:
    """``sets FIELD; default D; env VAR``: the tail of every flag's help."""
    return f"(sets {field}; default {_default_text(field)}; env {ENV_FOR_FIELD[field]})"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` flags to *parser*; every default is ``None``.

    ``--config`` lands in ``ns.config``; every other flag lands under its
    config field name (``--ping-interval`` in ``ns.ping_interval_s``).
    """
    parser.add_argument(
        "--config",
        dest=CONFIG_DEST,
        metavar="FILE",
        default=None,
        help="TOML or JSON config file (a whole nanobot config works too)",
    )
    for field, flag in FLAG_FOR_FIELD.items():
        if field in _REPEATED:
            metavar, text = _REPEATED[field]
            parser.add_argument(
                flag,
                dest=field,
                action="append",
                metavar=metavar,
                default=None,
                help=f"{text}; repeat for more (sets {field})",
            )
        elif field == "allow_from":
            parser.add_argument(
                flag,
                dest=field,
                action="append",
                metavar="ID",
                default=None,
                help="admit this client_id; repeat for more, '*' for all "
                + _where(field),
            )
        elif field in _SWITCHES_OFF:
            parser.add_argument(
                flag,
                dest=field,
                action="store_const",
                const=False,
                default=None,
                help=f"{_SWITCHES_OFF[field]} {_where(field)}",
            )
        else:
            kind, metavar, text = _VALUED[field]
            parser.add_argument(
                flag,
                dest=field,
                type=kind,
                metavar=metavar,
                default=None,
                help=f"{text} {_where(field)}",
            )


def overrides_from_args(ns: argparse.Namespace) -> dict[str, object]:
    """Return the config overrides for the flags that were actually given."""
    overrides: dict[str, object] = {}
    for field in FLAG_FOR_FIELD:
        value = getattr(ns, field, None)
        if value is None:
            continue
        overrides[field] = tuple(value) if isinstance(value, list) else value
    return overrides
