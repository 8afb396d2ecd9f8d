"""The plain-HTTP side of the port: every request that is not our upgrade.

:class:`HttpApp` answers PROTOCOL 6 (token issue, bootstrap, the session API,
signed media, the chat page, ``/healthz``, ``/metrics``) and writes the
response itself, with ``Connection: close``: one request per connection, as
the rest of the front does. The decisions are the pure functions of
:mod:`trio_channel.routes`; this module only moves bytes around them:

- files (media up to 20 MiB, the page's assets) are opened and read in a
  worker thread and sent in pieces (:mod:`trio_channel.responder`), never whole;
- a chat's history is read from the store in pages of :data:`HISTORY_PAGE`
  events and sent as it is read (chunked), so one request never holds more
  than a page of events; the ``webui-thread`` answer folds each page as it
  is read (:mod:`trio_channel.http.webui_thread`);
- every write must make progress within ``slow_consumer_timeout_s``, or the
  connection is dropped: a client that stops reading cannot hold a task.

Responses are produced by h11, framed for the request's method (no body for
``HEAD``) and HTTP version.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import msgspec
import trio

from ..config import ChannelConfig
from ..core.auth import IssuedTokenStore, split_target
from ..core.hub import ChatHub
from ..core.session import Peer
from ..logs import log_http_request
from ..media.signing import MediaSigner, MediaUrlError
from ..store.base import ChatMeta, DeleteChat, SessionStore, StoreError, UserMessage
from ..store.committer import StoreUnavailable
from .head import RequestHead
from .mediafiles import media_headers
from .response import NOSNIFF, PeerGone, Responder, open_regular_file, send_file
from .routes import (
    API_NOT_FOUND,
    INVALID_SESSION_KEY,
    INVALID_SINCE_SEQ,
    JSON,
    MEDIA_NOT_FOUND,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    SESSION_NOT_FOUND,
    TOO_MANY_TOKENS,
    UNAUTHORIZED,
    WEBUI_THREAD_NOT_FOUND,
    Endpoint,
    HttpResponse,
    Match,
    api_token_valid,
    bootstrap_body,
    bootstrap_refusal,
    health_response,
    issue_token,
    match_route,
    parse_session_key,
    parse_since_seq,
    request_api_token,
    session_key,
    sessions_body,
)
from .static import open_static, static_candidates, static_headers
from .webui_thread import ThreadUserMessage, WebuiThreadBuilder

if TYPE_CHECKING:  # coredis, imported only with a Redis store
    from ..cluster.tokens import SharedTokens

#: Events read from the store per step of a history answer.
HISTORY_PAGE: Final = 1000
#: Chats ``/api/sessions`` lists at most, newest first.
SESSIONS_LIMIT: Final = 1000

_json = msgspec.json.Encoder()


@attrs.define(eq=False)
class HttpApp:
    """Answers every plain HTTP request on the channel's port (PROTOCOL 6).

    ``tokens`` is the WebSocket handshake token store, shared with the
    channel: bootstrap tokens go there (spent by one upgrade) and into
    :attr:`api_tokens` (valid for the API until they expire). ``webui_dir``
    None turns the chat page off; when it is on, ``cfg.webui_dir`` (a web UI
    build such as nanobot's) replaces it. ``metrics_text`` None makes
    ``/metrics`` a 404 (for callers allowed to see it).
    """

    cfg: ChannelConfig
    tokens: IssuedTokenStore
    store: SessionStore
    hub: ChatHub[Any]
    signer: MediaSigner
    webui_dir: Path | None
    #: Deletes a chat through the channel's ordered writes (raises
    #: ``StoreUnavailable``); the default, for tests, writes to ``store``.
    delete_chat: Callable[[str], Awaitable[bool]] | None = None
    metrics_text: Callable[[], tuple[bytes, str]] | None = None
    #: Why the store cannot take writes now, or None (``/healthz``).
    degraded: Callable[[], str | None] = lambda: None
    #: With several daemons: tokens every node honours.
    shared_tokens: SharedTokens | None = None
    api_tokens: IssuedTokenStore = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.api_tokens = IssuedTokenStore(ttl_s=self.cfg.token_ttl_s)
        if self.webui_dir is not None and self.cfg.webui_dir:
            self.webui_dir = Path(self.cfg.webui_dir)

    async def handle(
        self, stream: trio.abc.Stream, head: RequestHead, peer: Peer
    ) -> None:
        """Answer one request and return; the caller closes ``stream``.

        A peer that leaves, or stops reading for ``slow_consumer_timeout_s``,
        ends the answer early; that is not an error.
        """
        out = Responder(stream, head, self.cfg.slow_consumer_timeout_s)
        try:
            await self._answer(out, head, peer)
        except PeerGone:
            return
        finally:
            log_http_request(head.method, head.target, out.status or 0, peer)

    async def _answer(self, out: Responder, head: RequestHead, peer: Peer) -> None:
        raw_path, query = split_target(head.target)
        match = match_route(self.cfg, raw_path)
        endpoint = match.endpoint
        if endpoint is Endpoint.API_NOT_FOUND:
            return await out.simple(API_NOT_FOUND)
        if endpoint is Endpoint.PAGE and self.webui_dir is None:
            return await out.simple(NOT_FOUND)
        if head.method not in match.methods:
            allow = ("Allow", ", ".join(match.methods))
            return await out.simple(METHOD_NOT_ALLOWED, [allow])
        now = trio.current_time()
        if endpoint is Endpoint.ISSUE_TOKEN:
            issued = issue_token(head, self.cfg, self.tokens, now, tcp=bool(peer.host))
            return await out.simple(await self._share_issued(issued))
        if endpoint is Endpoint.HEALTHZ:
            return await out.simple(health_response(self.degraded()))
        if endpoint is Endpoint.BOOTSTRAP:
            answer = self._bootstrap(head, peer, now)
            return await out.simple(await self._share_issued(answer))
        if endpoint is Endpoint.MEDIA:
            return await self._media(out, match)
        if endpoint is Endpoint.PAGE:
            assert self.webui_dir is not None
            return await self._page(out, self.webui_dir, match.args[0])
        token = request_api_token(head.headers, query)
        if self.shared_tokens is not None:
            try:
                await self.shared_tokens.api_token_known(token, self.api_tokens, now)
            except StoreError as exc:
                return await out.simple(health_response(str(exc)))
        authorized = api_token_valid(self.cfg, self.api_tokens, token, now)
        if endpoint is Endpoint.METRICS:
            return await out.simple(self._metrics(authorized or peer.is_loopback))
        if not authorized:
            return await out.simple(UNAUTHORIZED)
        try:
            return await self._session_api(out, endpoint, match, query)
        except (StoreError, StoreUnavailable) as exc:
            return await out.simple(health_response(str(exc)))

    async def _session_api(
        self, out: Responder, endpoint: Endpoint, match: Match, query: dict[str, str]
    ) -> None:
        if endpoint is Endpoint.SESSIONS:
            chats = await self.store.chats(SESSIONS_LIMIT)
            body = sessions_body(chats, self._running_since)
            return await out.simple(HttpResponse(200, body, JSON))
        chat_id = parse_session_key(match.args[0])
        if chat_id is None:
            return await out.simple(INVALID_SESSION_KEY)
        meta = await self.store.chat(chat_id)
        if meta is None:
            return await out.simple(SESSION_NOT_FOUND)
        if endpoint is Endpoint.SESSION_WEBUI_THREAD:
            return await self._webui_thread(out, meta)
        if endpoint is Endpoint.SESSION_MESSAGES:
            since_seq = parse_since_seq(query)
            if since_seq is None:
                return await out.simple(INVALID_SINCE_SEQ)
            return await self._history(out, meta, since_seq)
        if self.delete_chat is not None:
            deleted = await self.delete_chat(chat_id)
        else:
            deleted = bool((await self.store.write([DeleteChat(chat_id)]))[0])
        return await out.simple(
            HttpResponse(200, _json.encode({"deleted": deleted}), JSON)
        )

    # --- tokens -------------------------------------------------------------

    def _bootstrap(self, head: RequestHead, peer: Peer, now: float) -> HttpResponse:
        refusal = bootstrap_refusal(self.cfg, head.headers, peer.is_loopback)
        if refusal is not None:
            return refusal
        token = self.tokens.issue(now)
        if token is None:
            return TOO_MANY_TOKENS
        if not self.api_tokens.adopt(token, now):
            self.tokens.consume(token, now)  # all or nothing
            return TOO_MANY_TOKENS
        body = bootstrap_body(self.cfg, head.headers, token, self.hub.model_name)
        return HttpResponse(200, body, JSON)

    async def _share_issued(self, answer: HttpResponse) -> HttpResponse:
        """With several daemons, a token issued here works on every node."""
        if self.shared_tokens is None or answer.status != 200:
            return answer
        token = _json_token(answer.body)
        try:
            await self.shared_tokens.issued(token)
        except StoreError as exc:
            return health_response(str(exc))
        return answer

    def _metrics(self, allowed: bool) -> HttpResponse:
        if not allowed:
            return UNAUTHORIZED
        if self.metrics_text is None:
            return NOT_FOUND
        body, content_type = self.metrics_text()
        return HttpResponse(200, body, content_type)

    # --- sessions -----------------------------------------------------------

    def _running_since(self, chat_id: str) -> float | None:
        state = self.hub.chats.get(chat_id)
        return None if state is None else state.running_since

    async def _history(self, out: Responder, meta: ChatMeta, since_seq: int) -> None:
        """Stream ``{"key","chat_id","epoch","first_seq","last_seq","events":[...]}``.

        ``last_seq`` is the chat's last stored ``seq`` (every event a client
        has seen is stored: durable before visible); the answer holds exactly
        the events in ``(since_seq, last_seq]`` still kept, with the user's
        messages of that span in their place, so a client can attach with
        ``since_seq=last_seq`` and ``epoch`` and miss nothing.
        """
        chat_id = meta.chat_id
        first_seq, last_seq = meta.first_seq, meta.last_seq
        users = [
            m
            for m in await self.store.user_messages(chat_id, since_seq)
            if m.after_seq <= last_seq
        ]
        shaped = await trio.to_thread.run_sync(
            shape_user_messages, users, self.signer.url_for
        )
        writer = HistoryWriter(deque(shaped))
        out.start(200, [("Content-Type", JSON), ("Cache-Control", "no-store"), NOSNIFF])
        await out.data(history_head(chat_id, meta.epoch, first_seq, last_seq))
        after = since_seq
        while after < last_seq:
            page = await self.store.read_events(chat_id, after, HISTORY_PAGE)
            events = [(seq, payload) for seq, payload in page.events if seq <= last_seq]
            if events:
                await out.data(writer.events(events))
                after = events[-1][0]
            if len(events) < HISTORY_PAGE:
                break
        await out.data(writer.finish())
        await out.end()

    async def _webui_thread(self, out: Responder, meta: ChatMeta) -> None:
        """The chat as nanobot's web UI restores it after a reload, plus
        **(ext)** ``first_seq`` and ``last_seq``.

        Events are read in pages of :data:`HISTORY_PAGE` and folded as they
        come (in a worker thread: signing attachments touches the disk), so
        the raw log is never held whole. Nanobot's ``limit``/``before``
        paging is not offered: the answer holds the whole kept history and
        no ``page``, which the UI reads as "nothing older to load".
        """
        chat_id, last_seq = meta.chat_id, meta.last_seq
        users = [
            ThreadUserMessage(
                m.after_seq, m.at, m.client_id, m.content, m.media, m.turn_id
            )
            for m in await self.store.user_messages(chat_id)
            if m.after_seq <= last_seq
        ]
        builder = WebuiThreadBuilder(
            chat_id,
            users,
            media_url=lambda path: self.signer.url_for(Path(path)),
            workspace_scope=meta.workspace_scope,
            created_at=meta.created_at,
            running=self._running_since(chat_id) is not None,
        )
        after, seen = 0, bool(users)
        while after < last_seq:
            page = await self.store.read_events(chat_id, after, HISTORY_PAGE)
            events = [(seq, payload) for seq, payload in page.events if seq <= last_seq]
            if events:
                seen = True
                await trio.to_thread.run_sync(builder.feed, events)
                after = events[-1][0]
            if len(events) < HISTORY_PAGE:
                break
        if not seen:
            return await out.simple(WEBUI_THREAD_NOT_FOUND)

        def encode() -> bytes:
            # (ext) Where the rows end in the event log, as in /messages: a
            # client attaches with since_seq=last_seq and misses nothing.
            thread = builder.finish()
            thread["first_seq"], thread["last_seq"] = meta.first_seq, last_seq
            return _json.encode(thread)

        body = await trio.to_thread.run_sync(encode)
        await out.simple(HttpResponse(200, body, JSON))

    # --- files ----------------------------------------------------------------

    async def _media(self, out: Responder, match: Match) -> None:
        sig, payload = match.args
        target = await trio.to_thread.run_sync(self.signer.verify, sig, payload)
        if isinstance(target, MediaUrlError):
            return await out.simple(HttpResponse(target.status, target.body.encode()))
        opened = await trio.to_thread.run_sync(open_regular_file, target)
        if opened is None:
            return await out.simple(MEDIA_NOT_FOUND)
        await send_file(out, opened, media_headers(target.name), ranges=True)

    async def _page(self, out: Responder, root: Path, path: str) -> None:
        """The file ``path`` names under ``root``, else ``index.html``, else 404."""
        for parts in static_candidates(path):
            opened = await trio.to_thread.run_sync(open_static, root, parts)
            if opened is not None:
                break
        else:
            return await out.simple(NOT_FOUND)
        await send_file(out, opened, static_headers(parts), ranges=False)


# --- history shaping (pure) ----------------------------------------------------


def history_head(chat_id: str, epoch: str, first_seq: int, last_seq: int) -> bytes:
    """The answer up to and including ``"events":[``."""
    head = _json.encode(
        {
            "key": session_key(chat_id),
            "chat_id": chat_id,
            "epoch": epoch,
            "first_seq": first_seq,
            "last_seq": last_seq,
        }
    )
    return head[:-1] + b',"events":['


def shape_user_messages(
    messages: Iterable[UserMessage], media_url: Callable[[Path], str | None]
) -> list[tuple[int, bytes]]:
    """``(after_seq, JSON)`` per user message, in history order.

    Shape: ``{"event":"user_message","chat_id","after_seq","client_id",
    "content","media","at"}`` plus ``media_urls`` (``[{"url","name"}]``) for
    the attachments that can still be signed. No ``seq``: user messages are
    not part of the replayable event log. ``media_url`` may touch the disk:
    call this in a worker thread.
    """
    shaped = []
    for m in sorted(messages, key=lambda m: m.after_seq):  # stable: keeps order
        item: dict[str, object] = {
            "event": "user_message",
            "chat_id": m.chat_id,
            "after_seq": m.after_seq,
            "client_id": m.client_id,
            "content": m.content,
            "media": list(m.media),
            "at": m.at,
        }
        urls = []
        for path in m.media:
            url = media_url(Path(path))
            if url is not None:
                urls.append({"url": url, "name": Path(path).name})
        if urls:
            item["media_urls"] = urls
        shaped.append((m.after_seq, _json.encode(item)))
    return shaped


@attrs.define
class HistoryWriter:
    """Writes the ``events`` array of a history answer, one page at a time.

    Events arrive as ``(seq, payload)`` in ``seq`` order; each payload is the
    event's JSON exactly as clients received it and goes out untouched. A
    user message with ``after_seq = s`` is written after the event ``s`` and
    before the next one.
    """

    user_messages: deque[tuple[int, bytes]]
    _written: bool = False

    def events(self, events: Iterable[tuple[int, bytes]]) -> bytes:
        parts = []
        for seq, payload in events:
            while self.user_messages and self.user_messages[0][0] < seq:
                parts.append(self.user_messages.popleft()[1])
            parts.append(payload)
        return self._join(parts)

    def finish(self) -> bytes:
        """The user messages after the last event, and the closing ``]}``."""
        parts = [message for _, message in self.user_messages]
        self.user_messages.clear()
        return self._join(parts) + b"]}"

    def _join(self, parts: list[bytes]) -> bytes:
        if not parts:
            return b""
        joined = b",".join(parts)
        if self._written:
            joined = b"," + joined
        self._written = True
        return joined


_token_decoder: Final = msgspec.json.Decoder(dict[str, Any])


def _json_token(body: bytes) -> str:
    return str(_token_decoder.decode(body)["token"])
