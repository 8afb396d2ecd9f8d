"""The bundled chat page in headless Chromium against the real daemon.

Some tests put Playwright's WebSocket routing between the page and the
server: it forwards every frame, and lets a test drop frames (as a crash
loses the bytes in flight), close the socket, or change a frame the page
sent (to reach a server-side check the page itself would never fail).
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from typing import Any

from ._daemon import Daemon
from .conftest import UI, DaemonFactory

try:
    from playwright.sync_api import (
        FilePayload,
        Locator,
        Page,
        WebSocketRoute,
        expect,
    )
except ImportError as exc:  # pragma: no cover - the conftest explains
    raise ImportError(
        "the browser tests need the 'playwright' package: pip install -e '.[test]'"
    ) from exc

#: The chat on screen (each chat has its own log; the others are hidden).
OPEN = ".chat-log:not([hidden])"
MiB = 1024 * 1024

MIME_WORDS = "That file type is not supported (SVG is not allowed)"
SIZE_WORDS = "Too large: images up to 8 MiB, videos up to 20 MiB"
COUNT_WORDS = "At most 4 images per message"
DECODE_WORDS = "That attachment could not be decoded (is the file empty or damaged?)"

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9"
    "awAAAABJRU5ErkJggg=="
)
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


# --- helpers -------------------------------------------------------------------


def open_page(ui: UI, daemon: Daemon) -> Page:
    ui.page.goto(daemon.http_url)
    expect(ui.page.locator("#conn-status")).to_have_attribute("data-state", "online")
    return ui.page


def send(page: Page, text: str) -> None:
    box = page.locator("#input")
    box.fill(text)
    box.press("Enter")


def agent(page: Page) -> Locator:
    return page.locator(f"{OPEN} .msg.agent .bubble")


def user(page: Page) -> Locator:
    return page.locator(f"{OPEN} .msg.user .bubble")


def turns(page: Page) -> Locator:
    return page.locator(f"{OPEN} .turn-end")


def chunks(n: int) -> str:
    return " ".join(f"chunk {i}" for i in range(1, n + 1))


def png(name: str, data: bytes = PNG) -> FilePayload:
    return {"name": name, "mimeType": "image/png", "buffer": data}


def is_ws(url: str) -> bool:
    return url.startswith(("ws://", "wss://"))


def wait_until(
    page: Page, condition: Callable[[], bool], timeout_s: float = 10
) -> None:
    """Poll a condition set by a Playwright callback (they run while we wait)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        page.wait_for_timeout(20)


def current_chat(page: Page) -> str:
    chat_id = page.evaluate("location.hash.slice(1)")
    assert re.fullmatch(r"[A-Za-z0-9_:-]{1,64}", chat_id), chat_id
    return str(chat_id)


# --- loading, sending, streaming ---------------------------------------------------


def test_page_loads_and_goes_online(ui: UI, spawn: DaemonFactory) -> None:
    daemon = spawn()
    response = ui.page.goto(daemon.http_url)
    assert response is not None
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    page = ui.page
    expect(page).to_have_title("trio_channel")
    expect(page.locator("#conn-status")).to_have_attribute("data-state", "online")
    expect(page.locator("#conn-status")).to_have_text("Online")
    expect(page.locator("#new-chat")).to_be_visible()
    expect(page.locator("#input")).to_be_editable()
    assert ui.console_errors == []


def test_message_is_echoed(ui: UI, shared: Daemon) -> None:
    page = open_page(ui, shared)
    send(page, "hello from the browser")
    expect(user(page)).to_have_text(["hello from the browser"])
    expect(agent(page)).to_have_text(["hello from the browser"])
    expect(turns(page)).to_have_count(1)
    expect(turns(page)).to_have_text(re.compile(r"Replied in \d"))
    expect(page.locator("#run-status")).to_have_attribute("data-state", "idle")
    expect(page.locator("#input")).to_have_value("")


def test_stream_fills_one_bubble(ui: UI, shared: Daemon) -> None:
    page = open_page(ui, shared)
    send(page, "stream:50")
    expect(agent(page)).to_have_text([re.compile(r"chunk 50\s*$")])
    expect(agent(page)).to_have_text([chunks(50)])
    expect(page.locator(f"{OPEN} .msg.streaming")).to_have_count(0)
    expect(turns(page)).to_have_count(1)


def test_enter_sends_and_shift_enter_breaks_the_line(ui: UI, shared: Daemon) -> None:
    page = open_page(ui, shared)
    box = page.locator("#input")
    box.click()
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    expect(box).to_have_value("line one\nline two")
    expect(user(page)).to_have_count(0)
    page.keyboard.press("Enter")
    expect(box).to_have_value("")
    expect(user(page)).to_have_count(1)
    expect(agent(page)).to_have_count(1)
    assert agent(page).inner_text() == "line one\nline two"
    assert agent(page).locator("br").count() == 1


def test_every_event_kind_is_drawn(ui: UI, spawn: DaemonFactory) -> None:
    """Reasoning, tool hints, file edits, markdown streams, two streams at
    once and the turn's latency, from a scripted agent."""
    page = open_page(ui, spawn("--agent", "tests.browser.showcase_agent:agent"))
    send(page, "showcase")
    run = page.locator("#run-status")
    expect(run).to_have_attribute("data-state", "running")
    expect(run).to_contain_text("Working")
    expect(turns(page)).to_have_text(["Replied in 1.2 s"])
    expect(run).to_have_attribute("data-state", "idle")

    reasoning = page.locator(f"{OPEN} details.reasoning")
    expect(reasoning).to_have_count(1)
    expect(reasoning.locator("summary")).to_have_text("Reasoning")
    expect(reasoning).to_have_js_property("open", False)
    expect(reasoning.locator(".reasoning-text")).to_have_text("Let me think about it.")
    reasoning.locator("summary").click()
    expect(reasoning).to_have_js_property("open", True)

    expect(page.locator(f"{OPEN} .msg.tool-hint .bubble")).to_have_text("reading files")
    expect(page.locator(f"{OPEN} .file-edit")).to_have_text(
        "Edited 2 files: src/app.py, README.md"
    )
    bubbles = agent(page)  # the tool hint, the markdown stream, streams a and b
    expect(bubbles).to_have_count(4)
    markdown = bubbles.nth(1)
    expect(markdown.locator("strong")).to_have_text("the fix")
    expect(markdown.locator("pre code")).to_have_text("print('<ok>')")
    expect(markdown.locator("a")).to_have_attribute("href", "https://example.com/fix")
    expect(bubbles.nth(2)).to_have_text("alpha one")
    expect(bubbles.nth(3)).to_have_text("beta two")
    expect(page.locator(f"{OPEN} .msg.streaming")).to_have_count(0)
    assert ui.console_errors == []


# --- safety ------------------------------------------------------------------------


def test_agent_text_cannot_inject_html(ui: UI, shared: Daemon) -> None:
    page = open_page(ui, shared)
    payload = '<img src=x onerror="window.__pwned=1">'
    send(page, payload)
    expect(agent(page)).to_have_text([payload])
    expect(user(page)).to_have_text([payload])
    assert page.locator(f"{OPEN} .msg img").count() == 0
    assert page.evaluate("window.__pwned") is None

    # The markdown subset: http(s) links only, no images from elsewhere,
    # code shown as text.
    send(
        page,
        "see [docs](https://example.com/docs) and [bad](javascript:alert(1))\n"
        "![remote](https://example.com/x.png) and `<b>code</b>`\n\n"
        "```html\n<script>window.__pwned=2</script>\n```",
    )
    expect(agent(page)).to_have_count(2)
    reply = agent(page).nth(1)
    expect(reply.locator("pre code")).to_have_text("<script>window.__pwned=2</script>")
    links = reply.locator("a")
    expect(links).to_have_count(1)
    expect(links).to_have_attribute("href", "https://example.com/docs")
    expect(links).to_have_attribute("rel", re.compile(r"\bnoopener\b"))
    expect(reply.locator("p code")).to_have_text("<b>code</b>")
    expect(reply).to_contain_text("[bad](javascript:alert(1))")
    assert reply.locator("img, script, b, iframe").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert ui.console_errors == []


# --- attachments -----------------------------------------------------------------


def test_attachment_limits_are_checked_in_the_page(ui: UI, shared: Daemon) -> None:
    page = open_page(ui, shared)
    picker = page.locator("#file-input")
    problem = page.locator("#composer-error")
    chips = page.locator("#attachments li")

    svg: FilePayload = {
        "name": "drawing.svg",
        "mimeType": "image/svg+xml",
        "buffer": SVG,
    }
    picker.set_input_files(svg)
    expect(problem).to_have_text(MIME_WORDS)
    expect(chips).to_have_count(0)

    # Made in the page (an 8 MiB set_input_files spent seconds in base64 on
    # its way through the driver); the page sees a chosen file either way.
    picker.evaluate(
        """(input, size) => {
            const data = new DataTransfer();
            data.items.add(new File([new Uint8Array(size)], "huge.png",
                                    { type: "image/png" }));
            input.files = data.files;
            input.dispatchEvent(new Event("change", { bubbles: true }));
        }""",
        8 * MiB + 4,
    )
    expect(problem).to_have_text(SIZE_WORDS)
    expect(chips).to_have_count(0)

    picker.set_input_files([png(f"p{i}.png") for i in range(5)])
    expect(problem).to_have_text(COUNT_WORDS)
    expect(chips).to_have_count(4)
    page.get_by_role("button", name="Remove p0.png").click()
    expect(chips).to_have_count(3)
    expect(problem).to_be_hidden()

    send(page, "three pictures")
    expect(agent(page).locator("p")).to_have_text(["three pictures"])
    expect(user(page).locator("img")).to_have_count(3)
    expect(chips).to_have_count(0)

    # Pasting an image attaches it too.
    page.locator("#input").evaluate(
        """(box, b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], "pasted.png", { type: "image/png" }));
            box.dispatchEvent(new ClipboardEvent("paste", {
                clipboardData: data, bubbles: true, cancelable: true }));
        }""",
        base64.b64encode(PNG).decode(),
    )
    expect(chips).to_have_count(1)
    expect(chips).to_contain_text("pasted.png")
    send(page, "pasted")
    expect(agent(page).locator("p")).to_have_text(["three pictures", "pasted"])
    expect(page.locator(f"{OPEN} .notice.error")).to_have_count(0)


def test_attached_image_comes_back_as_a_media_url(ui: UI, shared: Daemon) -> None:
    """The echo agent returns the saved file; the server signs it into a
    /api/media/ URL (``media_urls``) and the page shows the image."""
    page = open_page(ui, shared)
    page.locator("#file-input").set_input_files(png("dot.png"))
    send(page, "look")
    expect(agent(page)).to_have_count(1)
    expect(agent(page).locator("p")).to_have_text("look")
    image = agent(page).locator('img[src^="/api/media/"]')
    expect(image).to_have_count(1)
    expect(image).to_have_js_property("naturalWidth", 1)
    assert ui.console_errors == []


def test_server_rejections_are_shown_in_plain_words(
    ui: UI, spawn: DaemonFactory
) -> None:
    daemon = spawn()
    page = ui.page
    rewritten: list[str] = []

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def to_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "message" and frame.get("media") and not rewritten:
                # As an old or hostile client would send it: an SVG.
                svg = base64.b64encode(SVG).decode()
                frame["media"][0]["data_url"] = f"data:image/svg+xml;base64,{svg}"
                rewritten.append(frame["content"])
                message = json.dumps(frame)
            server.send(message)

        ws.on_message(to_server)

    page.route_web_socket(is_ws, route)
    open_page(ui, daemon)
    picker = page.locator("#file-input")

    picker.set_input_files(png("fine.png"))
    send(page, "refused by the server")
    errors = page.locator(f"{OPEN} .notice.error")
    expect(errors).to_have_text([MIME_WORDS])
    expect(page.locator(f"{OPEN} .msg.user.failed")).to_have_count(1)
    assert rewritten == ["refused by the server"]

    # An empty file passes the page's checks; the server cannot decode it.
    picker.set_input_files(png("empty.png", b""))
    send(page, "an empty image")
    expect(errors).to_have_text([MIME_WORDS, DECODE_WORDS])
    expect(page.locator(f"{OPEN} .msg.user.failed")).to_have_count(2)
    expect(agent(page)).to_have_count(0)

    # And the chat still works.
    send(page, "plain text")
    expect(agent(page)).to_have_text(["plain text"])
    assert ui.page_errors == []


# --- reconnecting ----------------------------------------------------------------


def test_restart_mid_stream_shows_the_whole_reply_once(
    ui: UI, spawn: DaemonFactory
) -> None:
    """SIGTERM the server while the page has shown 120 of 300 chunks (the rest
    was in flight), start it again on the same port and data: the page
    reconnects, resumes with since_seq and shows the whole reply once."""
    daemon = spawn()
    page = ui.page
    cut_after = 120
    seen: dict[str, Any] = {"connections": 0, "deltas": 0, "cut": False, "idle": False}

    def route(ws: WebSocketRoute) -> None:
        seen["connections"] += 1
        first = seen["connections"] == 1
        server = ws.connect_to_server()

        def to_page(message: str | bytes) -> None:
            if first:
                frame = json.loads(message)
                if frame.get("event") == "goal_status" and frame["status"] == "idle":
                    seen["idle"] = True
                if seen["cut"]:
                    return  # lost: the server went down before it arrived
                if frame.get("event") == "delta":
                    seen["deltas"] += 1
                    seen["cut"] = seen["deltas"] == cut_after
            ws.send(message)

        server.on_message(to_page)

    page.route_web_socket(is_ws, route)
    open_page(ui, daemon)
    send(page, "stream:300")
    expect(agent(page)).to_have_text([chunks(cut_after)])
    expect(page.locator(f"{OPEN} .msg.streaming")).to_have_count(1)
    wait_until(page, lambda: bool(seen["idle"]))  # the server has the whole reply

    assert daemon.stop() == 0
    status = page.locator("#conn-status")
    expect(status).to_have_attribute("data-state", re.compile("reconnecting|offline"))
    daemon.start()
    expect(status).to_have_attribute("data-state", "online", timeout=20_000)

    expect(agent(page)).to_have_text([chunks(300)], timeout=15_000)
    expect(page.locator(f"{OPEN} .msg.streaming")).to_have_count(0)
    expect(turns(page)).to_have_count(1)
    expect(user(page)).to_have_text(["stream:300"])
    assert seen["connections"] >= 2
    # Failed fetches while the server was down are logged by Chromium itself;
    # the page's own code must not have thrown.
    assert ui.page_errors == []


def test_replayed_events_already_shown_are_dropped(
    ui: UI, spawn: DaemonFactory
) -> None:
    """A reconnect whose replay overlaps what the page already shows: the
    page attaches with since_seq = the highest seq it saw; we make the server
    replay 10 more, and the page must drop them by seq."""
    daemon = spawn()
    page = ui.page
    cut_after, overlap = 20, 10
    state: dict[str, Any] = {
        "connections": 0,
        "deltas": 0,
        "cut": False,
        "max_seq": 0,
        "attach": None,
        "first": None,
    }

    def route(ws: WebSocketRoute) -> None:
        state["connections"] += 1
        server = ws.connect_to_server()
        if state["connections"] == 1:
            state["first"] = (ws, server)

            def to_page(message: str | bytes) -> None:
                if state["cut"]:
                    return
                frame = json.loads(message)
                state["max_seq"] = max(state["max_seq"], frame.get("seq", 0))
                if frame.get("event") == "delta":
                    state["deltas"] += 1
                    state["cut"] = state["deltas"] == cut_after
                ws.send(message)

            server.on_message(to_page)
            return

        def to_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "attach" and state["attach"] is None:
                state["attach"] = dict(frame)
                frame["since_seq"] = max(0, frame["since_seq"] - overlap)
                message = json.dumps(frame)
            server.send(message)

        ws.on_message(to_server)

    page.route_web_socket(is_ws, route)
    open_page(ui, daemon)
    send(page, "stream:40")
    expect(agent(page)).to_have_text([chunks(cut_after)])
    chat_id = current_chat(page)

    first_ws, first_server = state["first"]
    first_server.close()
    first_ws.close(code=4000, reason="test drops the connection")

    expect(agent(page)).to_have_text([chunks(40)], timeout=15_000)
    expect(turns(page)).to_have_count(1)
    assert state["attach"] == {
        "type": "attach",
        "chat_id": chat_id,
        "since_seq": state["max_seq"],
    }
    assert state["max_seq"] >= cut_after
    send(page, "still here")
    expect(agent(page)).to_have_count(2)
    expect(agent(page).nth(1)).to_have_text("still here")
    assert ui.page_errors == []


def test_trimmed_history_says_so(ui: UI, spawn: DaemonFactory) -> None:
    """Only the last 20 events are kept: a reload shows what is left and
    says that older messages are gone."""
    page = open_page(ui, spawn("--history-limit", "20"))
    send(page, "stream:50")  # deltas are seq 1-50, stream_end 51, turn_end 52
    expect(agent(page)).to_have_text([chunks(50)])
    page.reload()
    expect(page.locator("#conn-status")).to_have_attribute("data-state", "online")
    expect(page.locator(f"{OPEN} .notice")).to_have_text(
        ["Older messages of this chat are no longer kept; showing from message #33 on."]
    )
    expect(agent(page)).to_have_text([" ".join(f"chunk {i}" for i in range(33, 51))])
    expect(turns(page)).to_have_count(1)


# --- chats, layout, console --------------------------------------------------------


def test_new_chat_sidebar_and_reload(ui: UI, spawn: DaemonFactory) -> None:
    page = open_page(ui, spawn())
    send(page, "first chat")
    expect(agent(page)).to_have_text(["first chat"])
    first = current_chat(page)

    page.locator("#new-chat").click()
    expect(page.locator("#chat-title")).to_have_text("New chat")
    expect(page.locator(f"{OPEN} .msg")).to_have_count(0)
    send(page, "second chat")
    expect(agent(page)).to_have_text(["second chat"])
    second = current_chat(page)
    assert second != first

    # Both chats come back from GET /api/sessions.
    listed = page.locator("#chat-list .chat-item")
    expect(listed.and_(page.locator(f'[data-chat-id="{first}"]'))).to_have_count(1)
    expect(listed.and_(page.locator(f'[data-chat-id="{second}"]'))).to_have_count(1)

    page.locator(f'#chat-list .chat-item[data-chat-id="{first}"]').click()
    expect(agent(page)).to_have_text(["first chat"])
    expect(user(page)).to_have_text(["first chat"])
    assert current_chat(page) == first

    # A reload reopens the chat named in the address, with its history.
    page.reload()
    expect(page.locator("#conn-status")).to_have_attribute("data-state", "online")
    assert current_chat(page) == first
    expect(agent(page)).to_have_text(["first chat"])
    assert ui.console_errors == []


def test_narrow_window_is_usable(ui: UI, shared: Daemon) -> None:
    page = ui.page
    page.set_viewport_size({"width": 320, "height": 640})
    open_page(ui, shared)
    send(page, "x" * 200 + " and " + "a long sentence " * 20)
    expect(agent(page)).to_have_count(1)
    assert page.evaluate("document.documentElement.scrollWidth") <= 320
    for selector in ("#send", "#input", "#conn-status", "#menu-toggle"):
        box = page.locator(selector).bounding_box()
        assert box is not None, selector
        assert box["x"] >= 0 and box["x"] + box["width"] <= 320, selector
    expect(page.locator("#new-chat")).not_to_be_in_viewport()
    page.locator("#menu-toggle").click()
    expect(page.locator("#new-chat")).to_be_in_viewport()
    page.keyboard.press("Escape")
    expect(page.locator("#new-chat")).not_to_be_in_viewport()


def test_no_console_errors(ui: UI, shared: Daemon) -> None:
    page = open_page(ui, shared)
    send(page, "hello")
    expect(agent(page)).to_have_count(1)
    send(page, "stream:20")
    expect(agent(page).nth(1)).to_have_text(chunks(20))
    first = current_chat(page)
    page.locator("#new-chat").click()
    page.locator("#file-input").set_input_files(png("dot.png"))
    send(page, "with a picture")
    expect(agent(page)).to_have_text(["with a picture"])
    page.locator(f'#chat-list .chat-item[data-chat-id="{first}"]').click()
    expect(agent(page)).to_have_count(2)
    page.wait_for_timeout(300)
    assert ui.console_errors == []


# --- a server with a secret ------------------------------------------------------


def test_a_server_with_a_secret_asks_for_it(ui: UI, spawn: DaemonFactory) -> None:
    daemon = spawn("--token-issue-secret", "s3cret")
    page = ui.page
    page.goto(daemon.http_url)
    form = page.locator("#secret-form")
    expect(form).to_be_visible()
    expect(page.locator("#secret-label")).to_contain_text("needs its secret")
    # A wrong secret is refused and asked for again.
    page.locator("#secret-input").fill("wrong")
    page.locator("#secret-form button").click()
    expect(page.locator("#secret-label")).to_contain_text("refused that secret")
    page.locator("#secret-input").fill("s3cret")
    page.locator("#secret-form button").click()
    expect(page.locator("#conn-status")).to_have_attribute("data-state", "online")
    expect(form).to_be_hidden()
    send(page, "hello with a secret")
    expect(agent(page)).to_have_text(["hello with a secret"])
    # Kept for this tab only, never in the address.
    assert page.evaluate("sessionStorage.getItem('trio_channel.secret')") == "s3cret"
    assert "s3cret" not in page.url
    # A reload of the tab connects without asking again.
    page.reload()
    expect(page.locator("#conn-status")).to_have_attribute("data-state", "online")
    expect(form).to_be_hidden()
    assert [e for e in ui.console_errors if "401" not in e] == []
