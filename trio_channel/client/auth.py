"""Getting in: the daemon's address, credentials, and a token per connection.

A client needs a fresh single-use token for every WebSocket connection
(PROTOCOL 6). :func:`connect_info` gets one the way the bundled page does,
from ``GET /api/bootstrap`` (``/webui/bootstrap`` on servers without ours):

- with a static ``token``, that token is used as is (it is reusable);
- with a ``secret`` (the server's ``token_issue_secret``, or its static
  token), bootstrap is asked with ``Authorization: Bearer <secret>``;
- with neither, bootstrap is asked plainly: the server answers loopback
  callers only.

:meth:`Credentials.from_env` reads ``TRIO_CHANNEL_TOKEN`` and
``TRIO_CHANNEL_TOKEN_ISSUE_SECRET`` (the daemon's own variables), so a
secret never has to appear on a command line.

HTTP here is one ``GET`` per connection over a trio stream with h11 (already
a dependency of the server), with a deadline and a cap on the answer's size.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping, Sequence
from urllib.parse import urlencode, urlsplit, urlunsplit

import attrs
import h11
import msgspec
import trio

__all__ = [
    "AuthError",
    "ClientError",
    "ConnectInfo",
    "Credentials",
    "HttpAnswer",
    "ServerAddress",
    "ServerUnavailable",
    "connect_info",
    "http_get",
]

DEFAULT_URL = "http://127.0.0.1:8765/"
#: The largest HTTP answer read (bootstrap, sessions list, health).
MAX_ANSWER_BYTES = 4 * 1024 * 1024
BOOTSTRAP_PATHS = ("/api/bootstrap", "/webui/bootstrap")


class ClientError(Exception):
    """The client cannot go on; the message says why, for a person."""


class AuthError(ClientError):
    """The server refused our credentials (or wants some): retrying won't help
    until the configuration changes."""


class ServerUnavailable(ClientError):
    """The server cannot be reached, or answered with a temporary error."""


@attrs.frozen
class Credentials:
    """What a client may show: a static ``token`` or a bootstrap ``secret``."""

    token: str = attrs.field(default="", repr=False)
    secret: str = attrs.field(default="", repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        env = os.environ if environ is None else environ
        return cls(
            token=env.get("TRIO_CHANNEL_TOKEN", ""),
            secret=env.get("TRIO_CHANNEL_TOKEN_ISSUE_SECRET", ""),
        )


@attrs.frozen
class ServerAddress:
    """The daemon, from the URL a person types: ``http(s)://`` or ``ws(s)://``.

    ``ws_path`` is the WebSocket path when a ``ws(s)://`` URL named one;
    with an ``http(s)://`` URL the server's bootstrap answer says it.
    """

    host: str
    port: int
    tls: bool
    ws_path: str | None = None

    @classmethod
    def parse(cls, url: str) -> ServerAddress:
        text = url if "://" in url else f"http://{url}"
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https", "ws", "wss"):
            raise ClientError(f"not an http(s):// or ws(s):// URL: {url!r}")
        if not parts.hostname:
            raise ClientError(f"no host in {url!r}")
        tls = scheme in ("https", "wss")
        try:
            port = parts.port or (443 if tls else 80)
        except ValueError:
            raise ClientError(f"bad port in {url!r}") from None
        ws_path = (parts.path or "/") if scheme.startswith("ws") else None
        return cls(parts.hostname, port, tls, ws_path)

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def http_url(self) -> str:
        return urlunsplit(("https" if self.tls else "http", self.netloc, "/", "", ""))

    def ws_url(self, path: str = "/") -> str:
        scheme = "wss" if self.tls else "ws"
        return urlunsplit((scheme, self.netloc, path, "", ""))


@attrs.frozen
class HttpAnswer:
    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


@attrs.frozen
class ConnectInfo:
    """How to open one WebSocket: the URL (no query) and its token."""

    ws_url: str
    token: str = attrs.field(default="", repr=False)
    #: Valid for the HTTP API (``Authorization: Bearer``) until ``expires_at``.
    api_token: str = attrs.field(default="", repr=False)
    #: trio time after which ``api_token`` should not be used any more.
    expires_at: float = float("inf")
    model_name: str | None = None

    def url_with(self, client_id: str) -> str:
        query = {"client_id": client_id}
        if self.token:
            query["token"] = self.token
        return f"{self.ws_url}?{urlencode(query)}"


class _Bootstrap(msgspec.Struct):
    token: str
    ws_url: str = ""
    ws_path: str = ""
    expires_in: float = 300.0
    model_name: str | None = None


_bootstrap_decoder = msgspec.json.Decoder(_Bootstrap)


def default_ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context()


async def http_get(
    address: ServerAddress,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    timeout_s: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpAnswer:
    """One ``GET target`` to the server; raises :class:`ServerUnavailable`
    when it cannot be reached or answers something that is not HTTP."""
    try:
        with trio.fail_after(timeout_s):
            return await _get(address, target, headers, ssl_context)
    except trio.TooSlowError:
        raise ServerUnavailable(
            f"{address.http_url} did not answer within {timeout_s:g} s"
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ServerUnavailable(f"cannot reach {address.http_url}: {reason}") from None
    except (h11.ProtocolError, trio.BrokenResourceError) as exc:
        raise ServerUnavailable(
            f"{address.http_url} broke off the answer: {exc or type(exc).__name__}"
        ) from None


async def _get(
    address: ServerAddress,
    target: str,
    headers: Sequence[tuple[str, str]],
    ssl_context: ssl.SSLContext | None,
) -> HttpAnswer:
    stream: trio.abc.Stream = await trio.open_tcp_stream(address.host, address.port)
    if address.tls:
        context = ssl_context or default_ssl_context()
        stream = trio.SSLStream(stream, context, server_hostname=address.host)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET",
            target=target,
            headers=[
                ("Host", address.netloc),
                ("Accept", "application/json"),
                ("Connection", "close"),
                *headers,
            ],
        )
        await stream.send_all(
            conn.send(request) + (conn.send(h11.EndOfMessage()) or b"")
        )
        status = 0
        response_headers: tuple[tuple[bytes, bytes], ...] = ()
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                status = event.status_code
                response_headers = tuple(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_ANSWER_BYTES:
                    raise h11.RemoteProtocolError("answer too large")
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return HttpAnswer(status, bytes(body), response_headers)


async def connect_info(
    address: ServerAddress,
    credentials: Credentials,
    *,
    timeout_s: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
) -> ConnectInfo:
    """A token and URL for one new WebSocket connection (see the module doc).

    Raises :class:`AuthError` when the server wants a secret we do not have
    or refuses ours, :class:`ServerUnavailable` when it cannot be reached or
    answers with a temporary error (429, 5xx).
    """
    ws_default = address.ws_url(address.ws_path or "/")
    if credentials.token:
        return ConnectInfo(ws_default, credentials.token, credentials.token)
    headers = (
        [("Authorization", f"Bearer {credentials.secret}")]
        if credentials.secret
        else []
    )
    answer = HttpAnswer(404, b"")
    for path in BOOTSTRAP_PATHS:
        answer = await http_get(
            address, path, headers, timeout_s=timeout_s, ssl_context=ssl_context
        )
        if answer.status != 404:
            break
    if answer.status == 404:
        # No bootstrap route: a server that takes clients without tokens.
        return ConnectInfo(ws_default)
    if answer.status in (401, 403):
        raise AuthError(_refusal(address, answer, credentials))
    if answer.status != 200:
        raise ServerUnavailable(
            f"{address.http_url} answered bootstrap with HTTP {answer.status}: "
            f"{_snippet(answer.body)}"
        )
    try:
        boot = _bootstrap_decoder.decode(answer.body)
    except msgspec.DecodeError as exc:
        raise ServerUnavailable(f"unexpected bootstrap answer: {exc}") from None
    ws_url = ws_default
    if address.ws_path is None:
        ws_url = address.ws_url(urlsplit(boot.ws_url).path or boot.ws_path or "/")
    margin = min(15.0, boot.expires_in / 2)
    return ConnectInfo(
        ws_url=ws_url,
        token=boot.token,
        api_token=boot.token,
        expires_at=trio.current_time() + boot.expires_in - margin,
        model_name=boot.model_name,
    )


def _snippet(body: bytes) -> str:
    return " ".join(body[:200].decode("utf-8", "replace").split()) or "(no body)"


def _refusal(address: ServerAddress, answer: HttpAnswer, creds: Credentials) -> str:
    where = address.http_url
    if answer.status == 403:
        return (
            f"{where} hands out tokens to clients on its own machine only "
            f"({_snippet(answer.body)}); run this there, or give the server a "
            "token_issue_secret and set TRIO_CHANNEL_TOKEN_ISSUE_SECRET here"
        )
    if creds.secret:
        return f"{where} refused the secret in TRIO_CHANNEL_TOKEN_ISSUE_SECRET (401)"
    return (
        f"{where} needs a secret (401): set TRIO_CHANNEL_TOKEN_ISSUE_SECRET "
        "(or TRIO_CHANNEL_TOKEN) to the server's token_issue_secret (or token)"
    )
