"""Channel configuration: one frozen msgspec Struct, loaded and checked once.

Field names and defaults follow the wire protocol's configuration table
(PROTOCOL.md section 7), so a nanobot ``channels.websocket`` section, in
snake_case or camelCase, loads unchanged.

Loading is layered: defaults < config file < environment < command-line
overrides. msgspec enforces types and numeric bounds; :func:`validate_config`
adds the rules that involve several fields or the filesystem. Every problem
becomes one :class:`ConfigError` naming the field, so the CLI can print a
single line and exit 2 before anything binds.
"""

from __future__ import annotations

import keyword
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from .config_env import ENV_PREFIX, env_var, field_types, parse_env_value
from .config_errors import ConfigError, ConfigErrors
from .config_files import read_config_file

__all__ = [
    "ENV_FOR_FIELD",
    "ChannelConfig",
    "ConfigError",
    "ConfigErrors",
    "build_config",
    "load_config_file",
    "masked_url",
    "normalize_path",
    "validate_config",
]

Seconds5to300 = Annotated[float, msgspec.Meta(ge=5, le=300)]


class ChannelConfig(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    """Everything the server needs to know, checked before anything binds."""

    # --- nanobot-compatible fields -------------------------------------
    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8765
    unix_socket_path: str = ""
    path: str = "/"
    token: str = ""
    token_issue_path: str = ""
    token_issue_secret: str = ""
    token_ttl_s: Annotated[int, msgspec.Meta(ge=30, le=86_400)] = 300
    websocket_requires_token: bool = True
    allow_from: tuple[str, ...] = ("*",)
    streaming: bool = True
    max_message_bytes: Annotated[int, msgspec.Meta(ge=1024, le=41_943_040)] = 37_748_736
    ping_interval_s: Seconds5to300 = 20.0
    ping_timeout_s: Seconds5to300 = 20.0
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    # --- our own fields -------------------------------------------------
    data_dir: str = "~/.local/share/trio-channel"
    agent: str = "trio_channel.agents.echo:echo_agent"
    log_level: str = "info"
    #: ``text`` (one line per record) or ``json`` (one object per line).
    log_format: Literal["text", "json"] = "text"
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    handshake_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    slow_consumer_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    send_queue_frames: Annotated[int, msgspec.Meta(ge=16, le=1_000_000)] = 1024
    bus_capacity: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1024
    rate_limit: Annotated[float, msgspec.Meta(ge=0, le=1_000_000)] = 100.0
    shutdown_grace_s: Annotated[float, msgspec.Meta(ge=0, le=300)] = 10.0
    #: ``sqlite`` (a file in ``data_dir``), ``memory`` (nothing kept), or a
    #: Redis URL for several daemons: ``redis://HOST:PORT/DB`` (``rediss://``
    #: with TLS), ``redis+cluster://HOST:PORT,...`` or
    #: ``redis+sentinel://HOST:PORT,.../SERVICE/DB`` (store/redis_url.py).
    session_store: str = "sqlite"
    #: ``full`` also survives power loss, at a measured cost per commit.
    sqlite_synchronous: Literal["normal", "full"] = "normal"
    history_limit: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 10_000
    #: With a Redis store: partitions of the chats (every node must agree),
    #: the agents' partition lease, and how long an idle chat is kept.
    redis_partitions: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    redis_lease_ttl_s: Annotated[float, msgspec.Meta(ge=1, le=300)] = 10.0
    redis_chat_ttl_s: Annotated[float, msgspec.Meta(ge=60, le=10 * 365 * 86_400)] = (
        30 * 86_400.0
    )
    #: With a Redis store: how long a stream's deltas may wait to join into
    #: one append (SCALEOUT allows 50 ms); anything else is written at once.
    redis_delta_window_s: Annotated[float, msgspec.Meta(ge=0, le=0.05)] = 0.02
    #: Where attachments are kept; empty: ``<data_dir>/media``. Several
    #: daemons must share it (a directory every node mounts).
    media_dir: str = ""
    #: Host names (``Host`` header, any port) accepted besides loopback
    #: when no secret is set; PROTOCOL 1 and 6 (DNS rebinding).
    allowed_hosts: tuple[str, ...] = ()
    #: Browser origins (``scheme://host[:port]``) whose pages may open a
    #: WebSocket besides loopback ones; PROTOCOL 1.
    allowed_origins: tuple[str, ...] = ()
    workspace_dir: str = ""
    webui: bool = True
    #: A single-page app build (a directory holding ``index.html``, such as
    #: nanobot's web UI) to serve instead of the bundled page.
    webui_dir: str = ""


#: Every field name, in the snake_case the Struct uses.
FIELD_NAMES: frozenset[str] = frozenset(ChannelConfig.__struct_fields__)

#: Every field's environment variable (``TRIO_CHANNEL_<FIELD>``; parsing
#: rules in :mod:`trio_channel.config_env`).
ENV_FOR_FIELD: Mapping[str, str] = {
    f: env_var(f) for f in ChannelConfig.__struct_fields__
}

#: Fields whose values are secrets: masked by ``print-config``, never logged.
SECRET_FIELDS: frozenset[str] = frozenset({"token", "token_issue_secret"})

_FIELD_TYPES = field_types(ChannelConfig)

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

#: Hosts that bind every interface: exposing the channel there without a
#: secret would let anyone on the network drive the agent.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]"})


def normalize_path(p: str) -> str:
    """Return the request path as routing compares it.

    The query is dropped and every trailing ``/`` removed, but ``/`` stays
    ``/``: ``"/ws/"`` and ``"/ws?x=1"`` both become ``"/ws"``. The configured
    ``path`` and incoming request targets both go through this, so the
    comparison never depends on how either was spelled.
    """
    return p.split("?", 1)[0].rstrip("/") or "/"


# --- files ---------------------------------------------------------------


def load_config_file(path: str | os.PathLike[str]) -> dict[str, object]:
    """Read a config file into a mapping of :class:`ChannelConfig` field names.

    ``.toml`` is read as TOML, ``.json`` as JSON, anything else as JSON and
    then TOML. A whole nanobot config (``{"channels": {"websocket": {...}}}``)
    is unwrapped to that section, so users can point at the file they already
    have. camelCase keys of known fields become snake_case; the values are
    not checked here (:func:`build_config` does that after layering).
    """
    return read_config_file(path, FIELD_NAMES)


# --- building ------------------------------------------------------------

_AT_PATH = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>.*)`$", re.DOTALL)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>.*)`$", re.DOTALL)
_PATH_HEAD = re.compile(r"^\.(?P<field>\w+)(?P<rest>.*)$", re.DOTALL)
_WHOLE_FLOAT = re.compile(r"(?<![\d.])(\d+)\.0(?!\d)")


def _from_validation_error(exc: msgspec.ValidationError) -> ConfigError:
    """Turn msgspec's message into ``field: expected int >= 1024`` form."""
    text = str(exc)
    unknown = _UNKNOWN.match(text)
    if unknown:
        return ConfigError(unknown["name"], "unknown field")
    field, rest, msg = "config", "", text
    at = _AT_PATH.match(text)
    if at:
        msg = at["msg"]
        head = _PATH_HEAD.match(at["path"])
        if head:
            field, rest = head["field"], head["rest"]
    msg = _WHOLE_FLOAT.sub(r"\1", msg.replace("`", ""))
    msg = msg[:1].lower() + msg[1:]
    if rest:
        msg = f"{msg} (at {field}{rest})"
    return ConfigError(field, msg)


def build_config(
    file_path: str | None = None,
    *,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ChannelConfig:
    """Build the validated configuration the server starts with.

    Layers, later wins: defaults < the file at *file_path* < environment
    (``TRIO_CHANNEL_<FIELD>`` for every field, when set and non-empty; see
    :mod:`trio_channel.config_env`) < *overrides* (command-line flags;
    ``None`` values mean "not given" and are skipped). *environ* defaults to
    :data:`os.environ`; tests pass a dict. Every problem is collected: one
    raises :class:`ConfigError`, several raise :class:`ConfigErrors` (a
    ``ConfigError`` listing them all). A bad value from the environment names
    its variable.
    """
    return build_config_with_sources(file_path, overrides=overrides, environ=environ)[0]


def build_config_with_sources(
    file_path: str | None = None,
    *,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[ChannelConfig, dict[str, str]]:
    """:func:`build_config`, plus where each non-default field came from.

    The mapping is field -> ``file``, the variable name, or ``flag``
    (``print-config`` shows it).
    """
    merged: dict[str, object] = {}
    sources: dict[str, str] = {}
    errors: list[ConfigError] = []
    if file_path is not None:
        from_file = load_config_file(file_path)
        merged.update(from_file)
        sources.update(dict.fromkeys(from_file, "file"))
    env = os.environ if environ is None else environ
    for field, var in ENV_FOR_FIELD.items():
        raw = env.get(var)
        if not raw:
            continue
        try:
            merged[field] = parse_env_value(_FIELD_TYPES[field], raw)
        except ValueError as exc:
            errors.append(ConfigError(field, f"{exc} (from {var})"))
            merged.pop(field, None)
        sources[field] = var
    if overrides is not None:
        given = {k: v for k, v in overrides.items() if v is not None}
        merged.update(given)
        sources.update(dict.fromkeys(given, "flag"))
    bad = {e.field for e in errors}
    good: dict[str, object] = {}
    for field, value in merged.items():
        if field in bad:
            continue
        try:
            msgspec.convert({field: value}, ChannelConfig)
        except msgspec.ValidationError as exc:
            error = _from_validation_error(exc)
            source = sources.get(field, "")
            if source.startswith(ENV_PREFIX):
                error = ConfigError(error.field, f"{error.message} (from {source})")
            errors.append(error)
            bad.add(error.field)
            continue
        good[field] = value
    cfg = msgspec.convert(good, ChannelConfig)
    try:
        cfg = validate_config(cfg)
    except ConfigErrors as exc:
        errors.extend(e for e in exc.errors if e.field not in bad)
    if errors:
        raise ConfigErrors(errors)
    return cfg, {f: s for f, s in sources.items() if f in FIELD_NAMES}


# --- semantic rules ------------------------------------------------------


def _expand(field: str, value: str) -> str:
    if "\0" in value:
        raise ConfigError(field, "must not contain NUL")
    return os.path.expanduser(value)


def _is_agent_spec(spec: str) -> bool:
    module, sep, func = spec.partition(":")
    names = [*module.split("."), func]
    return bool(sep) and all(
        n.isidentifier() and not keyword.iskeyword(n) for n in names
    )


def _check_tls(
    cfg: ChannelConfig, certfile: str, keyfile: str, errors: list[ConfigError]
) -> None:
    if not (certfile or keyfile):
        return
    # An incomplete pair is the one thing to fix first: say only that.
    if not keyfile:
        errors.append(ConfigError("ssl_keyfile", "required when ssl_certfile is set"))
        return
    if not certfile:
        errors.append(ConfigError("ssl_certfile", "required when ssl_keyfile is set"))
        return
    if cfg.unix_socket_path:
        errors.append(ConfigError("ssl_certfile", "no TLS on a unix socket"))
        return
    for field, value in (("ssl_certfile", certfile), ("ssl_keyfile", keyfile)):
        if not os.path.isfile(value):
            errors.append(ConfigError(field, f"no such file: {value}"))


def _expanded(field: str, value: str, errors: list[ConfigError]) -> str:
    try:
        return _expand(field, value) if value else ""
    except ConfigError as exc:
        errors.append(exc)
        return value


_ORIGIN_RE = re.compile(r"https?://[^/\s?#]+")


def _check_store(value: str, errors: list[ConfigError]) -> None:
    # Imported here: the store package imports this module.
    from .store.redis_url import is_redis_url, parse_redis_url

    if value in ("sqlite", "memory"):
        return
    if not is_redis_url(value):
        errors.append(
            ConfigError(
                "session_store",
                "must be sqlite, memory or a Redis URL: redis://, rediss://, "
                f"redis+cluster:// or redis+sentinel:// (got {masked_url(value)!r})",
            )
        )
        return
    try:
        parse_redis_url(value)
    except ValueError as exc:
        errors.append(ConfigError("session_store", f"{exc} (in {masked_url(value)!r})"))


def masked_url(value: str) -> str:
    """A URL with any password in it replaced, for messages and logs."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1********@", value)


def _check_webui_dir(cfg: ChannelConfig, errors: list[ConfigError]) -> str:
    """``webui_dir`` made absolute; it must hold a regular ``index.html``."""
    webui_dir = os.path.abspath(_expanded("webui_dir", cfg.webui_dir, errors))
    if not cfg.webui:
        errors.append(ConfigError("webui_dir", "set, but webui is off (--no-webui)"))
    elif not Path(webui_dir).is_dir():
        errors.append(ConfigError("webui_dir", f"not a directory: {webui_dir}"))
    else:
        try:
            index = os.lstat(os.path.join(webui_dir, "index.html"))
        except OSError:
            errors.append(ConfigError("webui_dir", f"no index.html in {webui_dir}"))
        else:
            if not stat.S_ISREG(index.st_mode):
                errors.append(
                    ConfigError(
                        "webui_dir", f"index.html in {webui_dir} is not a regular file"
                    )
                )
    return webui_dir


def validate_config(cfg: ChannelConfig) -> ChannelConfig:
    """Apply the rules msgspec's per-field bounds cannot express.

    Returns a copy with ``~`` expanded in ``unix_socket_path``, ``data_dir``,
    ``ssl_certfile``, ``ssl_keyfile`` and ``workspace_dir``, ``webui_dir``
    made absolute and ``log_level`` lower-cased, so the rest of the server
    never re-interprets them. Raises :class:`ConfigErrors` naming the field
    of every rule broken.
    """
    errors: list[ConfigError] = []
    if not cfg.path.startswith("/"):
        errors.append(ConfigError("path", f"must start with '/' (got {cfg.path!r})"))
    issue = cfg.token_issue_path
    if issue and not issue.startswith("/"):
        errors.append(
            ConfigError("token_issue_path", f"must start with '/' (got {issue!r})")
        )
    elif issue and normalize_path(issue) == normalize_path(cfg.path):
        errors.append(ConfigError("token_issue_path", "must differ from path"))
    if not cfg.host:
        errors.append(
            ConfigError("host", "must not be empty (use 0.0.0.0 or :: for all)")
        )
    if cfg.host in WILDCARD_HOSTS and not (cfg.token or cfg.token_issue_secret):
        errors.append(
            ConfigError(
                "host", f"{cfg.host} requires token or token_issue_secret to be set"
            )
        )
    unix_socket_path = _expanded("unix_socket_path", cfg.unix_socket_path, errors)
    if unix_socket_path and not os.path.isabs(unix_socket_path):
        errors.append(
            ConfigError(
                "unix_socket_path", f"must be absolute (got {cfg.unix_socket_path!r})"
            )
        )
    certfile = _expanded("ssl_certfile", cfg.ssl_certfile, errors)
    keyfile = _expanded("ssl_keyfile", cfg.ssl_keyfile, errors)
    _check_tls(cfg, certfile, keyfile, errors)
    log_level = cfg.log_level.lower()
    if log_level not in LOG_LEVELS:
        errors.append(
            ConfigError("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        )
    if not _is_agent_spec(cfg.agent):
        errors.append(
            ConfigError(
                "agent", f"must look like package.module:function (got {cfg.agent!r})"
            )
        )
    data_dir = cfg.data_dir
    if not data_dir:
        errors.append(ConfigError("data_dir", "must not be empty"))
    else:
        data_dir = _expanded("data_dir", data_dir, errors)
    media_dir = _expanded("media_dir", cfg.media_dir, errors)
    workspace_dir = _expanded("workspace_dir", cfg.workspace_dir, errors)
    if workspace_dir and not Path(workspace_dir).is_dir():
        errors.append(ConfigError("workspace_dir", f"not a directory: {workspace_dir}"))
    _check_store(cfg.session_store, errors)
    for origin in cfg.allowed_origins:
        if not _ORIGIN_RE.fullmatch(origin):
            errors.append(
                ConfigError(
                    "allowed_origins",
                    f"{origin!r} is not an origin like https://chat.example.com[:port]",
                )
            )
    webui_dir = _check_webui_dir(cfg, errors) if cfg.webui_dir else ""
    if errors:
        raise ConfigErrors(errors)
    return msgspec.structs.replace(
        cfg,
        webui_dir=webui_dir,
        media_dir=media_dir,
        workspace_dir=workspace_dir,
        unix_socket_path=unix_socket_path,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        data_dir=data_dir,
        log_level=log_level,
    )
