"""``trio-channel chat [URL]``: talk to the agent from a terminal.

It fetches its own token (see :mod:`.auth`: loopback bootstrap, or
``TRIO_CHANNEL_TOKEN_ISSUE_SECRET`` / ``TRIO_CHANNEL_TOKEN``), opens a new
chat (or ``--chat ID``), and shows replies as they stream. The bar at the
bottom says which chat is open, whether the agent is running or idle, and
the connection's state; when the daemon restarts the client reconnects and
resumes by itself, and lines typed meanwhile are sent once it is back.

Commands: ``/new`` (a new chat), ``/chats`` (the server's chats),
``/attach ID`` (switch to a chat, with its history; a unique prefix of an
id listed by ``/chats`` is enough), ``/help``, ``/quit`` (or Ctrl-D).
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from collections import deque
from pathlib import Path
from typing import Any

import attrs
import trio

from ..core.events import (
    Attached,
    Delta,
    Error,
    FileEdit,
    GoalStatus,
    Message,
    ReasoningDelta,
    ServerEvent,
    StreamEnd,
    TurnEnd,
    UserMessageEcho,
)
from .auth import DEFAULT_URL, ClientError, ServerUnavailable
from .connection import Client, open_client
from .handles import Chat, Connected, Disconnected
from .screen import LineFlow, PlainScreen, Screen, TerminalScreen, default_history
from .screen import terminal_width as _terminal_width

__all__ = ["ChatApp", "add_chat_arguments", "chat_main", "run_chat"]

EXIT_OK = 0
EXIT_ERROR = 1

HELP = (
    "commands: /new  /chats  /attach ID  /help  /quit   "
    "(anything else is sent to the agent)"
)
REPLY = "agent: "
#: Lines typed while offline, waiting to be sent in order.
OUTGOING_LINES = 64
#: Events kept per chat that is not on screen.
UNSEEN_KEPT = 500
#: On /quit, how long lines typed but not yet sent may take to go out.
SEND_WAIT_S = 5.0
#: Reading a pipe: how long to wait for the replies before a command or EOF.
REPLY_WAIT_S = 60.0


def short(chat_id: str) -> str:
    return chat_id[:8]


@attrs.define
class ChatApp:
    """The chat's state and what it shows; the client and screen are given."""

    client: Client
    screen: Screen
    width: int = 80
    current: Chat | None = None
    connection: str = "connected"
    #: chat_id -> "running"/"idle" and since when (trio time) it runs.
    running_since: dict[str, float] = attrs.field(factory=dict)
    flows: dict[str, LineFlow] = attrs.field(factory=dict)
    listed: list[str] = attrs.field(factory=list)
    #: Events of chats not on screen, shown when one is switched to.
    unseen: dict[str, deque[ServerEvent]] = attrs.field(factory=dict)
    queued: int = 0
    #: Before leaving, wait for the replies to what was sent (reading a pipe).
    wait_for_replies: bool = False
    #: Turns asked for and not ended yet (a turn_end each), all chats.
    awaiting: int = 0
    _settled: trio.Event = attrs.field(factory=trio.Event)
    _nursery: trio.Nursery | None = None
    _last_reason: str = ""

    # --- status bar --------------------------------------------------------

    def status_text(self) -> str:
        chat = self.current
        parts = [f"chat {short(chat.chat_id)}" if chat else "no chat"]
        if chat is not None:
            since = self.running_since.get(chat.chat_id)
            if since is None:
                parts.append("idle")
            else:
                parts.append(f"running {max(0, int(trio.current_time() - since))}s")
        if self.queued:
            parts.append(f"{self.queued} waiting to be sent")
        parts.append(self.connection)
        return " | ".join(parts) + "   /help"

    def refresh(self) -> None:
        self.screen.set_status(self.status_text())
        flow = self.flows.get(self.current.chat_id) if self.current else None
        self.screen.set_live(flow.pending if flow else "")

    # --- following chats ---------------------------------------------------

    def follow(self, chat: Chat) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._show_events, chat)

    async def _show_events(self, chat: Chat) -> None:
        async for event in chat:
            self.on_event(chat, event)

    def on_event(self, chat: Chat, event: ServerEvent) -> None:
        """Show one event of *chat* (in full only for the open chat)."""
        shown = chat is self.current
        chat_id = chat.chat_id
        if isinstance(event, GoalStatus):
            if event.status == "running":
                self.running_since.setdefault(chat_id, trio.current_time())
            else:
                self.running_since.pop(chat_id, None)
        elif isinstance(event, TurnEnd) and not shown:
            self.screen.print(
                f"· new reply in chat {short(chat_id)} (/attach {short(chat_id)})"
            )
        if isinstance(event, TurnEnd) and self.awaiting:
            self.awaiting -= 1
            self._check_settled()
        if shown:
            self._render(chat_id, event)
        self.refresh()

    def _flow(self, chat_id: str) -> LineFlow:
        flow = self.flows.get(chat_id)
        if flow is None:
            flow = self.flows[chat_id] = LineFlow(self.width)
        return flow

    def _render(self, chat_id: str, event: ServerEvent) -> None:
        out = self.screen.print
        if isinstance(event, Delta):
            flow = self.flows.get(chat_id)
            if flow is None:
                flow = self._flow(chat_id)
                flow.feed(REPLY)
            for line in flow.feed(event.text):
                out(line)
        elif isinstance(event, StreamEnd):
            flow = self.flows.pop(chat_id, None)
            if flow is None:  # not streamed on screen: show it whole
                flow = LineFlow(self.width)
                for line in flow.feed(REPLY + (event.text or "")):
                    out(line)
            for line in flow.finish():
                out(line)
        elif isinstance(event, Message):
            lead = "· " if event.kind else REPLY
            for i, line in enumerate(event.text.splitlines() or [""]):
                out((lead if i == 0 else " " * len(lead)) + line)
        elif isinstance(event, ReasoningDelta):
            pass  # the status bar already says "running"
        elif isinstance(event, FileEdit):
            out(f"· {len(event.edits)} file edit(s)")
        elif isinstance(event, TurnEnd) and event.interrupted:
            out("· (the reply was interrupted; the agent runs it again)")
        elif isinstance(event, UserMessageEcho):
            out(f"(another device) > {event.text}")
        elif isinstance(event, Error):
            self._render_error(event)
        elif isinstance(event, Attached):
            pass

    def _render_error(self, event: Error) -> None:
        if event.detail == "history_reset":
            self.flows.pop(event.chat_id or "", None)
            self.screen.print(
                "! the server started this chat's history again; replaying it"
            )
        elif event.detail == "history_truncated":
            self.screen.print(
                f"! older events are gone; history resumes at seq {event.first_seq}"
            )
        else:
            reason = f" ({event.reason})" if event.reason else ""
            self.screen.print(f"! {event.detail}{reason}")

    # --- connection --------------------------------------------------------

    async def watch_notices(self) -> None:
        async for notice in self.client.notices:
            if isinstance(notice, Disconnected):
                self.connection = "reconnecting…"
                if notice.reason != self._last_reason:
                    self._last_reason = notice.reason
                    self.screen.print(f"· disconnected: {notice.reason}; reconnecting")
            elif isinstance(notice, Connected):
                if notice.reconnected:
                    self.screen.print("· reconnected")
                self._last_reason = ""
                self.connection = "connected"
            elif isinstance(notice, Error):
                self._render_error(notice)
            self.refresh()

    async def tick(self) -> None:
        """Keep "running 3s" counting."""
        while True:
            await trio.sleep(1)
            if self.running_since:
                self.refresh()

    # --- typing ------------------------------------------------------------

    async def send_lines(
        self, lines: trio.MemoryReceiveChannel[tuple[Chat, str]]
    ) -> None:
        async for chat, text in lines:
            await chat.send(text)
            self.queued -= 1
            self.awaiting += 1
            self._check_settled()
            self.refresh()

    def _check_settled(self) -> None:
        if not self.queued and not (self.wait_for_replies and self.awaiting):
            self._settled.set()
            self._settled = trio.Event()

    async def settle(self, timeout_s: float) -> None:
        """Wait (at most *timeout_s*) until what was typed is sent and, when
        reading a pipe, answered."""
        with trio.move_on_after(timeout_s):
            while self.queued or (self.wait_for_replies and self.awaiting):
                await self._settled.wait()

    async def command(self, line: str) -> bool:
        """Run a ``/command``; False for ``/quit``."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit", "/q"):
            return False
        if name == "/help":
            self.screen.print(HELP)
        elif name == "/new":
            chat = await self.client.new_chat()
            self.follow(chat)
            self.switch(chat)
            self.screen.print(f"· new chat {chat.chat_id}")
        elif name == "/chats":
            await self.list_chats()
        elif name == "/attach":
            await self.attach(arg)
        else:
            self.screen.print(f"! unknown command {name}; {HELP}")
        return True

    def switch(self, chat: Chat) -> None:
        self.current = chat
        for event in self.unseen.pop(chat.chat_id, ()):
            self._render(chat.chat_id, event)
        self.refresh()

    async def list_chats(self) -> None:
        try:
            sessions = await self.client.list_chats()
        except ClientError as exc:
            self.screen.print(f"! cannot list chats: {exc}")
            return
        self.listed = [str(s.get("chat_id", "")) for s in sessions]
        if not sessions:
            self.screen.print("· no chats yet")
        for s in sessions:
            chat_id = str(s.get("chat_id", ""))
            mark = "*" if self.current and self.current.chat_id == chat_id else " "
            title = " ".join(str(s.get("title") or s.get("preview") or "").split())[:60]
            self.screen.print(f"{mark} {chat_id}  {title}")

    async def attach(self, arg: str) -> None:
        if not arg:
            self.screen.print("! usage: /attach ID (see /chats)")
            return
        known_ids = dict.fromkeys([*self.client.chats, *self.listed])
        matches = [c for c in known_ids if c.startswith(arg)]
        chat_id = matches[0] if len(matches) == 1 else arg
        if not re.fullmatch(r"[A-Za-z0-9_:-]{1,64}", chat_id):
            self.screen.print(f"! not a chat id: {arg}")
            return
        known = self.client.chats.get(chat_id)
        if known is not None:
            self.switch(known)
            self.screen.print(f"· switched to chat {chat_id}")
            return
        self.screen.print(f"· chat {chat_id}:")
        # since_seq=0 replays the chat's kept history before going live.
        chat = await self.client.attach(chat_id, since_seq=0)
        self.switch(chat)
        self.follow(chat)

    async def run(self, first_chat: str | None) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.watch_notices)
            nursery.start_soon(self.tick)
            if first_chat:
                await self.attach(first_chat)
            else:
                chat = await self.client.new_chat()
                self.follow(chat)
                self.switch(chat)
            assert self.current is not None
            self.screen.print(
                f"· connected to {self.client.address.http_url} "
                f"(chat {self.current.chat_id}); {HELP}"
            )
            send, receive = trio.open_memory_channel[tuple[Chat, str]](OUTGOING_LINES)
            nursery.start_soon(self.send_lines, receive)
            while True:
                line = await self.screen.read_line()
                if line is None:
                    break
                if not line.strip():
                    continue
                if line.startswith("/"):
                    if self.wait_for_replies:
                        await self.settle(REPLY_WAIT_S)  # a script: in order
                    if not await self.command(line):
                        break
                    continue
                self.queued += 1
                self.refresh()
                await send.send((self.current, line))
            await self.settle(REPLY_WAIT_S if self.wait_for_replies else SEND_WAIT_S)
            nursery.cancel_scope.cancel()


async def run_chat(
    url: str, screen: Screen, *, client_id: str, first_chat: str | None
) -> None:
    async with open_client(url, client_id=client_id) as client:
        app = ChatApp(
            client,
            screen,
            width=_terminal_width(),
            wait_for_replies=isinstance(screen, PlainScreen),
        )
        await app.run(first_chat)


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url",
        nargs="?",
        default=DEFAULT_URL,
        help=f"the daemon's http(s):// or ws(s):// URL (default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--chat", metavar="ID", default=None, help="open this chat instead of a new one"
    )
    parser.add_argument(
        "--client-id",
        default=None,
        help="client_id to connect as (default chat-USER)",
    )
    parser.add_argument(
        "--history",
        metavar="FILE",
        default=None,
        help=f"where typed lines are remembered (default {default_history()}; "
        "'' keeps none)",
    )


def _client_id() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "user"
    return "chat-" + (re.sub(r"[^A-Za-z0-9_.-]", "", user)[:40] or "user")


def chat_main(args: Any) -> int:
    """Entry point of ``trio-channel chat`` (the secret comes from the env)."""
    screen: Screen
    if sys.stdin.isatty() and sys.stdout.isatty():
        history = default_history() if args.history is None else args.history
        screen = TerminalScreen(Path(history) if history else None)
    else:
        screen = PlainScreen()
    failure: ClientError | None = None
    try:
        trio.run(
            lambda: run_chat(
                args.url,
                screen,
                client_id=args.client_id or _client_id(),
                first_chat=args.chat,
            )
        )
    except* ClientError as group:
        failure = _leaf(group)
    except* KeyboardInterrupt:
        pass
    finally:
        screen.close()
    if failure is None:
        return EXIT_OK
    print(f"error: {failure}", file=sys.stderr)
    if isinstance(failure, ServerUnavailable):
        print(
            "is the daemon running? start it with: trio-channel serve", file=sys.stderr
        )
    return EXIT_ERROR


def _leaf(group: BaseExceptionGroup[ClientError]) -> ClientError:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, ClientError)
    return exc
