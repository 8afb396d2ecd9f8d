"""Plain HTTP routes on the WebSocket port (sans-IO: head in, response out).

Today: the token-issue route, ``/healthz``, and the 404s of PROTOCOL 6. The
session API, media and the chat page join this table in later work.
"""

from __future__ import annotations

import attrs
import msgspec

from .auth import IssuedTokenStore, issue_route_authorized, split_target
from .config import ChannelConfig, normalize_path
from .http import RequestHead

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
TOO_MANY_TOKENS = _json_response(429, {"error": "too many outstanding tokens"})
HEALTHY = _json_response(200, {"status": "ok"})


def route_http(
    head: RequestHead, cfg: ChannelConfig, tokens: IssuedTokenStore, now: float
) -> HttpResponse:
    """Answer one plain HTTP request (anything that is not our upgrade)."""
    raw_path, _query = split_target(head.target)
    path = normalize_path(raw_path)
    if cfg.token_issue_path and path == normalize_path(cfg.token_issue_path):
        if head.method != "GET":
            return _text(405, "Method Not Allowed")
        return _issue_token(head, cfg, tokens, now)
    if path == "/healthz":
        return (
            HEALTHY
            if head.method in ("GET", "HEAD")
            else _text(405, "Method Not Allowed")
        )
    if path == "/api" or path.startswith("/api/"):
        return API_NOT_FOUND
    return NOT_FOUND


def _issue_token(
    head: RequestHead, cfg: ChannelConfig, tokens: IssuedTokenStore, now: float
) -> HttpResponse:
    if not issue_route_authorized(cfg, head.headers):
        return UNAUTHORIZED
    token = tokens.issue(now)
    if token is None:
        return TOO_MANY_TOKENS
    return _json_response(200, {"token": token, "expires_in": cfg.token_ttl_s})
