"""A reload restores a chat from GET /api/sessions/{key}/webui-thread.

The bundled page restores history through the same route nanobot's own web
UI reloads from, so these tests prove that route end to end: everything the
page showed live comes back after a reload, and the chat goes on from there
without a reply shown twice.
"""

from __future__ import annotations

import re

from .conftest import UI, DaemonFactory
from .test_page import OPEN, agent, open_page, png, send, turns, user

try:
    from playwright.sync_api import Page, Request, expect
except ImportError as exc:  # pragma: no cover - the conftest explains
    raise ImportError(
        "the browser tests need the 'playwright' package: pip install -e '.[test]'"
    ) from exc


def reload_from_the_thread(page: Page) -> None:
    with page.expect_response(lambda r: "/webui-thread" in r.url) as answer:
        page.reload()
    assert answer.value.status == 200
    expect(page.locator("#conn-status")).to_have_attribute("data-state", "online")


def test_a_reload_shows_the_whole_history_again(ui: UI, spawn: DaemonFactory) -> None:
    page = open_page(ui, spawn("--agent", "tests.browser.showcase_agent:agent"))
    asked: list[str] = []

    def on_request(request: Request) -> None:
        if "/api/sessions/" in request.url:
            asked.append(request.url)

    page.on("request", on_request)
    send(page, "showcase")
    expect(turns(page)).to_have_text(["Replied in 1.2 s"])
    page.locator("#file-input").set_input_files(png("dot.png"))
    send(page, "look")
    expect(turns(page)).to_have_count(2)
    expect(agent(page).locator('img[src^="/api/media/"]')).to_have_count(1)

    reload_from_the_thread(page)

    expect(user(page)).to_have_text(["showcase", "look"])
    expect(user(page).locator('img[src^="/api/media/"]')).to_have_js_property(
        "naturalWidth", 1
    )
    reasoning = page.locator(f"{OPEN} details.reasoning")
    expect(reasoning).to_have_count(1)
    expect(reasoning).to_have_js_property("open", False)
    expect(reasoning.locator(".reasoning-text")).to_have_text("Let me think about it.")
    expect(page.locator(f"{OPEN} .msg.tool-hint .bubble")).to_have_text(
        ["reading files"]
    )
    expect(page.locator(f"{OPEN} .file-edit")).to_have_text(
        "Edited 2 files: src/app.py, README.md"
    )
    # The tool hint, the answer (markdown stream and both streams), the echo.
    bubbles = agent(page)
    expect(bubbles).to_have_count(3)
    answer = bubbles.nth(1)
    expect(answer.locator("strong")).to_have_text("the fix")
    expect(answer.locator("pre code")).to_have_text("print('<ok>')")
    expect(answer.locator("p")).to_contain_text(["alpha one", "beta two"])
    expect(bubbles.nth(2).locator("p")).to_have_text("look")
    expect(bubbles.nth(2).locator('img[src^="/api/media/"]')).to_have_js_property(
        "naturalWidth", 1
    )
    expect(turns(page)).to_have_text(
        ["Replied in 1.2 s", re.compile(r"^Replied in \d+(\.\d)? m?s$")]
    )
    assert any("/webui-thread" in url for url in asked), asked
    assert not any("/messages" in url for url in asked), asked

    # The chat goes on from where the thread ended: nothing replayed twice.
    send(page, "still here")
    expect(turns(page)).to_have_count(3)
    expect(agent(page)).to_have_count(4)
    expect(agent(page).nth(3)).to_have_text("still here")
    page.wait_for_timeout(300)  # a replay of old events would land by now
    expect(agent(page)).to_have_count(4)

    # And a second reload shows the same chat again.
    reload_from_the_thread(page)
    expect(user(page)).to_have_text(["showcase", "look", "still here"])
    expect(agent(page)).to_have_count(4)
    expect(turns(page)).to_have_count(3)
    assert ui.console_errors == []


def test_a_chat_restored_after_a_daemon_restart(ui: UI, spawn: DaemonFactory) -> None:
    """The thread is read from the store, so it outlives the process."""
    daemon = spawn()
    page = open_page(ui, daemon)
    send(page, "remember me")
    expect(agent(page)).to_have_text(["remember me"])
    expect(turns(page)).to_have_count(1)
    daemon.restart()
    reload_from_the_thread(page)
    expect(user(page)).to_have_text(["remember me"])
    expect(agent(page)).to_have_text(["remember me"])
    expect(turns(page)).to_have_count(1)
    assert ui.page_errors == []
