"""Plain HTTP routes on the WebSocket port: the pure decisions (PROTOCOL 6).

Everything here is sans-IO: a request head (or parts of it) in, a value out.
:mod:`trio_channel.http.api` does the I/O (store reads, files, sockets)
around these functions, so the rules that matter for security (who may call
what, which session key is valid) are tested without a socket.

- :func:`match_route` names the endpoint a path addresses and the methods it
  allows; :func:`issue_token` answers the token-issue route.
- Auth: :func:`bootstrap_refusal`, :func:`host_refusal`,
  :func:`request_api_token`, :func:`api_token_valid`.
- Parsing: :func:`parse_session_key`, :func:`parse_since_seq`.
- Shaping: :func:`ws_url`, :func:`bootstrap_body`, :func:`session_rows`
  (with :func:`iso_time`, :func:`clip`), :func:`health_response`.

Media files: :mod:`.mediafiles`; the page's files: :mod:`.static`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, tzinfo
from typing import Final
from urllib.parse import unquote

import attrs
import msgspec

from ..config import WILDCARD_HOSTS, ChannelConfig, normalize_path
from ..core.auth import (
    IssuedTokenStore,
    bearer_value,
    host_allowed,
    issue_route_authorized,
    parse_authority,
    secret_matches,
)
from ..store.base import ChatMeta
from .head import RequestHead

JSON = "application/json"
_json = msgspec.json.Encoder()


@attrs.frozen
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


def _text(status: int, body: str) -> HttpResponse:
    return HttpResponse(status, body.encode())


def _json_response(status: int, value: object) -> HttpResponse:
    return HttpResponse(status, _json.encode(value), JSON)


NOT_FOUND = _text(404, "Not Found")
API_NOT_FOUND = _text(404, "API route not found")
UNAUTHORIZED = _text(401, "Unauthorized")
METHOD_NOT_ALLOWED = _text(405, "Method Not Allowed")
BOOTSTRAP_LOCALHOST_ONLY = _text(403, "bootstrap is localhost-only")
HOST_NOT_ALLOWED = _text(403, "host not allowed")
INVALID_SESSION_KEY = _text(400, "invalid session key")
INVALID_SINCE_SEQ = _text(400, "invalid since_seq")
SESSION_NOT_FOUND = _text(404, "session not found")
WEBUI_THREAD_NOT_FOUND = _text(404, "webui thread not found")
MEDIA_NOT_FOUND = _text(404, "not found")
TOO_MANY_TOKENS = _json_response(429, {"error": "too many outstanding tokens"})
HEALTHY = _json_response(200, {"status": "ok"})


def health_response(degraded_reason: str | None) -> HttpResponse:
    """``/healthz``: 200 ok, or 503 while the store cannot take writes."""
    if degraded_reason is None:
        return HEALTHY
    return _json_response(503, {"status": "degraded", "reason": degraded_reason})


# --- which endpoint --------------------------------------------------------


class Endpoint(enum.Enum):
    ISSUE_TOKEN = enum.auto()
    HEALTHZ = enum.auto()
    METRICS = enum.auto()
    BOOTSTRAP = enum.auto()
    SESSIONS = enum.auto()
    #: ``DELETE /api/sessions/{key}``.
    SESSION = enum.auto()
    SESSION_MESSAGES = enum.auto()
    #: ``GET /api/sessions/{key}/webui-thread``: nanobot's web UI's history.
    SESSION_WEBUI_THREAD = enum.auto()
    #: ``GET /api/sessions/{key}/delete``.
    SESSION_DELETE = enum.auto()
    MEDIA = enum.auto()
    API_NOT_FOUND = enum.auto()
    #: Any other path: the chat page (when it is on).
    PAGE = enum.auto()


_GET: Final = ("GET",)
_GET_HEAD: Final = ("GET", "HEAD")
#: Methods each endpoint answers; any other gets 405 with ``Allow``.
ALLOWED_METHODS: Final[Mapping[Endpoint, tuple[str, ...]]] = {
    Endpoint.ISSUE_TOKEN: _GET,
    Endpoint.HEALTHZ: _GET_HEAD,
    Endpoint.METRICS: _GET,
    Endpoint.BOOTSTRAP: _GET,
    Endpoint.SESSIONS: _GET,
    Endpoint.SESSION: ("DELETE",),
    Endpoint.SESSION_MESSAGES: _GET,
    Endpoint.SESSION_WEBUI_THREAD: _GET,
    Endpoint.SESSION_DELETE: _GET,
    Endpoint.MEDIA: _GET_HEAD,
    Endpoint.PAGE: _GET_HEAD,
}

BOOTSTRAP_PATHS: Final = frozenset({"/webui/bootstrap", "/api/bootstrap"})


@attrs.frozen
class Match:
    """The endpoint a path names, with its raw (still percent-encoded) parts.

    ``args`` is ``(key,)`` for the session routes, ``(sig, payload)`` for
    media, ``(path,)`` for the page (the normalized, still percent-encoded
    path; :mod:`trio_channel.http.static` decides what it names), else
    ``()``.
    """

    endpoint: Endpoint
    args: tuple[str, ...] = ()

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods this endpoint answers; ``()`` means any (404 routes)."""
        return ALLOWED_METHODS.get(self.endpoint, ())


def match_route(cfg: ChannelConfig, raw_path: str) -> Match:
    """Name the endpoint of a request path (no query), PROTOCOL 6.

    Paths compare after :func:`normalize_path`. Segments are split *before*
    any percent-decoding, so ``%2F`` inside a session key never makes a new
    segment. The token-issue path wins over everything else.
    """
    path = normalize_path(raw_path)
    if cfg.token_issue_path and path == normalize_path(cfg.token_issue_path):
        return Match(Endpoint.ISSUE_TOKEN)
    if path == "/healthz":
        return Match(Endpoint.HEALTHZ)
    if path == "/metrics":
        return Match(Endpoint.METRICS)
    if path in BOOTSTRAP_PATHS:
        return Match(Endpoint.BOOTSTRAP)
    if path == "/api" or path.startswith("/api/"):
        match path.split("/")[2:]:
            case ["sessions"]:
                return Match(Endpoint.SESSIONS)
            case ["sessions", key]:
                return Match(Endpoint.SESSION, (key,))
            case ["sessions", key, "messages"]:
                return Match(Endpoint.SESSION_MESSAGES, (key,))
            case ["sessions", key, "webui-thread"]:
                return Match(Endpoint.SESSION_WEBUI_THREAD, (key,))
            case ["sessions", key, "delete"]:
                return Match(Endpoint.SESSION_DELETE, (key,))
            case ["media", sig, payload]:
                return Match(Endpoint.MEDIA, (sig, payload))
            case _:
                return Match(Endpoint.API_NOT_FOUND)
    return Match(Endpoint.PAGE, (path,))


def host_refusal(
    cfg: ChannelConfig, headers: Mapping[str, str], tcp: bool
) -> HttpResponse | None:
    """403 for a ``Host`` a DNS-rebinding page could send (PROTOCOL 1, 6).

    Only with no secret set, and only on TCP: no browser reaches a unix
    socket.
    """
    if not tcp or host_allowed(cfg, headers.get("host", "")):
        return None
    return HOST_NOT_ALLOWED


def issue_token(
    head: RequestHead,
    cfg: ChannelConfig,
    tokens: IssuedTokenStore,
    now: float,
    *,
    tcp: bool = True,
) -> HttpResponse:
    """``GET {token_issue_path}``: a single-use WebSocket token, or 401/403/429."""
    refused = host_refusal(cfg, head.headers, tcp)
    if refused is not None:
        return refused
    if not issue_route_authorized(cfg, head.headers):
        return UNAUTHORIZED
    token = tokens.issue(now)
    if token is None:
        return TOO_MANY_TOKENS
    return _json_response(200, {"token": token, "expires_in": cfg.token_ttl_s})


# --- auth -------------------------------------------------------------------


def bootstrap_refusal(
    cfg: ChannelConfig, headers: Mapping[str, str], peer_is_loopback: bool
) -> HttpResponse | None:
    """Why a bootstrap request is refused, or None when it may have a token.

    With a secret (``token_issue_secret``, else ``token``) every caller must
    present it as the issue route wants it, loopback included (401). With
    none, only loopback peers may (403; a unix-socket peer is not loopback),
    and only under a loopback ``Host`` or one in ``allowed_hosts`` (403):
    a DNS-rebinding page must not get a token.
    """
    if cfg.token_issue_secret or cfg.token:
        return None if issue_route_authorized(cfg, headers) else UNAUTHORIZED
    if not peer_is_loopback:
        return BOOTSTRAP_LOCALHOST_ONLY
    return host_refusal(cfg, headers, tcp=True)


def request_api_token(
    headers: Mapping[str, str], query: Mapping[str, str]
) -> str | None:
    """The API token a request carries: ``Authorization: Bearer``, else ``?token=``."""
    bearer = bearer_value(headers)
    if bearer:
        return bearer
    return query.get("token")


def api_token_valid(
    cfg: ChannelConfig, api_tokens: IssuedTokenStore, token: str | None, now: float
) -> bool:
    """An unexpired bootstrap token (not spent by use), or the static ``token``."""
    return api_tokens.is_valid(token, now) or secret_matches(cfg.token, token)


# --- bootstrap --------------------------------------------------------------


def ws_url(cfg: ChannelConfig, headers: Mapping[str, str]) -> str:
    """Where the page should open its WebSocket; never carries a token.

    ``wss`` when the first ``X-Forwarded-Proto`` is https/wss or TLS is on.
    The ``Host`` header when it is a plain ``host[:port]`` or
    ``[v6][:port]``, else the configured ``host:port`` (a wildcard host
    becomes ``127.0.0.1``). Then the configured ``path``.
    """
    forwarded = headers.get("x-forwarded-proto", "").split(",", 1)[0].strip().lower()
    secure = forwarded in ("https", "wss") or bool(cfg.ssl_certfile)
    host_header = headers.get("host", "").strip()
    if parse_authority(host_header) is not None:
        authority = host_header
    else:
        host = "127.0.0.1" if not cfg.host or cfg.host in WILDCARD_HOSTS else cfg.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        authority = f"{host}:{cfg.port}"
    return f"{'wss' if secure else 'ws'}://{authority}{cfg.path}"


def bootstrap_body(
    cfg: ChannelConfig, headers: Mapping[str, str], token: str, model_name: str | None
) -> bytes:
    """The bootstrap answer (PROTOCOL 6).

    ``api_token`` is ``token`` again: the seed's nanobot UI sends ``token``
    as its API Bearer, today's sends ``api_token`` (and opens the WebSocket
    with ``token``); one token does both, opening one WebSocket and staying
    an API token until it expires.
    """
    return _json.encode(
        {
            "token": token,
            "api_token": token,
            "ws_path": cfg.path,
            "ws_url": ws_url(cfg, headers),
            "expires_in": cfg.token_ttl_s,
            "model_name": model_name,
        }
    )


# --- sessions ---------------------------------------------------------------

SESSION_KEY_PREFIX: Final = "websocket:"
_SESSION_KEY_RE: Final = re.compile(r"[A-Za-z0-9_:.-]{1,128}")


def parse_session_key(raw: str) -> str | None:
    """The chat id a path segment names, or None (400 ``invalid session key``).

    The segment is percent-decoded exactly once, must then match
    ``[A-Za-z0-9_:.-]{1,128}``, and loses one ``websocket:`` prefix. No
    ``/``, ``%`` or ``\\`` survives, so ``..%2F..%2Fetc`` is refused here and
    ``%2e%2e`` becomes the chat id ``..``, which no chat has. The result is
    only ever looked up in the store, never used as a path.
    """
    key = unquote(raw)
    if _SESSION_KEY_RE.fullmatch(key) is None:
        return None
    return key.removeprefix(SESSION_KEY_PREFIX)


def session_key(chat_id: str) -> str:
    return SESSION_KEY_PREFIX + chat_id


def parse_since_seq(query: Mapping[str, str]) -> int | None:
    """``?since_seq=N`` (0 when absent), or None when it is not a plain N >= 0."""
    raw = query.get("since_seq")
    if raw is None:
        return 0
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        return None
    return int(raw)


#: nanobot's session list cuts previews to 120 characters; PROTOCOL 6 cuts
#: a title taken from the first user message to 80.
PREVIEW_CHARS: Final = 120
TITLE_CHARS: Final = 80


def iso_time(seconds: float, tz: tzinfo | None = None) -> str | None:
    """Unix seconds as nanobot's session list sends them, with the offset.

    The reference sends ``datetime.isoformat()`` of local wall-clock time
    (``2026-06-02T17:14:38.123456``), which nanobot's web UI reads with
    ``Date.parse``. We send the same text plus the UTC offset
    (``...38.123456+08:00``), always to the microsecond: a browser in
    another time zone than the daemon then files the chat under the right
    day, and ``Date.parse`` reads both forms. ``tz`` None: the daemon's
    local zone. None for a time no ``datetime`` can hold.
    """
    try:
        when = datetime.fromtimestamp(seconds, tz)
    except (OverflowError, OSError, ValueError):
        return None
    if tz is None:
        when = when.astimezone()
    return when.isoformat(timespec="microseconds")


def clip(text: str, limit: int) -> str:
    """``text`` on one line (runs of white space become one space), at most
    ``limit`` characters, the last one ``…`` when it was cut."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def session_rows(
    chats: Iterable[ChatMeta],
    running_since: Callable[[str], float | None],
    tz: tzinfo | None = None,
) -> list[dict[str, object]]:
    """One row per chat for ``/api/sessions`` and ``sessions.list`` (PROTOCOL 6).

    ``title`` is the chat's title (the store keeps the first user message
    until a title is set), else its preview cut to 80 characters;
    ``preview`` is the chat's preview cut to 120. Both are ``""`` when the
    chat has no text yet (nanobot's UI then shows "New chat").
    ``run_started_at`` only while a turn runs.
    """
    rows = []
    for meta in chats:
        preview = meta.preview or ""
        title = meta.title.strip() if meta.title else ""
        item: dict[str, object] = {
            "key": session_key(meta.chat_id),
            "chat_id": meta.chat_id,
            "created_at": iso_time(meta.created_at, tz),
            "updated_at": iso_time(meta.updated_at, tz),
            "title": clip(title, TITLE_CHARS) or clip(preview, TITLE_CHARS),
            "preview": clip(preview, PREVIEW_CHARS),
            "workspace_scope": meta.workspace_scope,
        }
        started = running_since(meta.chat_id)
        if started is not None:
            item["run_started_at"] = started
        rows.append(item)
    return rows


def sessions_body(
    chats: Iterable[ChatMeta],
    running_since: Callable[[str], float | None],
    tz: tzinfo | None = None,
) -> bytes:
    """``{"sessions": [...]}``, newest first as the store lists them."""
    return _json.encode({"sessions": session_rows(chats, running_since, tz)})
