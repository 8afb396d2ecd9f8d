"""A trio client for trio_channel (and nanobot's WebSocket channel).

::

    import trio
    from trio_channel.client import open_client
    from trio_channel.core.events import StreamEnd, TurnEnd

    async def main():
        async with open_client("http://127.0.0.1:8765/") as client:
            chat = await client.new_chat()
            await chat.send("stream:5")
            async for event in chat:
                if isinstance(event, StreamEnd):
                    print(event.text)
                if isinstance(event, TurnEnd):
                    break

    trio.run(main)

The client gets its own token for every connection (loopback bootstrap, or
a secret / static token from arguments or ``TRIO_CHANNEL_TOKEN_ISSUE_SECRET``
/ ``TRIO_CHANNEL_TOKEN``), reconnects by itself with jittered backoff and
resumes every chat it follows with ``since_seq`` and ``epoch``, so each
persisted event reaches you once, in order, across daemon restarts. Events
are the server's own Structs from :mod:`trio_channel.core.events`. See
``docs/client.md``.
"""

from .auth import AuthError as AuthError
from .auth import ClientError as ClientError
from .auth import ConnectInfo as ConnectInfo
from .auth import Credentials as Credentials
from .auth import ServerAddress as ServerAddress
from .auth import ServerUnavailable as ServerUnavailable
from .auth import connect_info as connect_info
from .connection import Client as Client
from .connection import open_client as open_client
from .handles import Chat as Chat
from .handles import Connected as Connected
from .handles import Disconnected as Disconnected
from .handles import Notice as Notice
from .handles import media_item as media_item
from .resume import Admit as Admit
from .resume import Backoff as Backoff
from .resume import ChatCursor as ChatCursor
from .streams import StreamAssembler as StreamAssembler
