import uuid

import trio

from trio_channel import (
    Delta,
    InboundMessage,
    StreamEnd,
    build_config,
    run_turns,
    serve,
    setup_logging,
)


async def fake_model(prompt: str):
    """Stands in for a model: yields the answer a word at a time."""
    for word in f"You said: {prompt}".split():
        await trio.sleep(0.1)  # thinking
        yield word + " "


async def answer(message: InboundMessage, outbound) -> None:
    stream_id = uuid.uuid4().hex
    async for piece in fake_model(message.content):
        await outbound.send(
            Delta(chat_id=message.chat_id, text=piece, stream_id=stream_id)
        )
    await outbound.send(StreamEnd(chat_id=message.chat_id, stream_id=stream_id))


async def agent(inbound, outbound) -> None:
    # Each chat's turns in order, chats at once; running/turn_end/idle sent.
    await run_turns(inbound, outbound, answer)


if __name__ == "__main__":
    setup_logging()
    trio.run(serve, build_config(), agent)  # Ctrl-C stops it cleanly
