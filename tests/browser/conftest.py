"""Browser tests of the bundled chat page: the real daemon, headless Chromium.

Chromium is Debian's (``/usr/bin/chromium``, or ``TRIO_CHANNEL_CHROMIUM``),
driven by Playwright's Python package; Playwright's own browser download is
never used. Without Chromium the tests are skipped with the package to
install, except under CI (``CI`` set), where they fail: a skipped browser
suite there would hide a broken page.

Each test gets its own daemon(s) (``spawn``) and a fresh browser context
(``ui``); a failed test leaves a screenshot in
``test-output/browser/<test>.png``, and teardown fails the test unless every
daemon exited with status 0.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..programs import need_program
from ._daemon import Daemon

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path(os.environ.get("TRIO_CHANNEL_CHROMIUM", "/usr/bin/chromium"))
#: Playwright adds --headless itself. No sandbox (we run as root in CI), no
#: network chatter to Google, nothing that downloads components.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUTPUT_DIR = Path(__file__).resolve().parents[2] / "test-output" / "browser"
#: How long ``expect`` waits by default (a 2-core CI machine can be slow).
EXPECT_TIMEOUT_MS = 10_000


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the whole package (closed after it)."""
    chromium = need_program(CHROMIUM, "chromium", why="the browser tests")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail(
            "the Python package 'playwright' is missing: pip install -e '.[test]'",
            pytrace=False,
        )
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(chromium),
            args=LAUNCH_ARGS,
            headless=True,
            timeout=30_000,
        )
        try:
            yield browser
        finally:
            browser.close()


DaemonFactory = Callable[..., Daemon]


def _stop_all(started: list[Daemon]) -> None:
    failures = []
    for daemon in started:
        daemon.stop()
        bad = [s for s in daemon.exit_statuses if s != 0]
        if bad:
            failures.append(f"{daemon.flags}: exit status {bad}\n{daemon.stderr}")
    if failures:
        pytest.fail("daemon(s) did not exit cleanly:\n" + "\n".join(failures))


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Start daemons for one test: ``spawn(*flags)`` returns a running one."""
    started: list[Daemon] = []

    def start(*flags: str) -> Daemon:
        daemon = Daemon(tmp_path / f"data{len(started)}", *flags)
        started.append(daemon)
        return daemon.start()

    yield start
    _stop_all(started)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon with the default flags for the tests of a module that each
    open a chat of their own and look at nothing else (no sidebar counts, no
    restarts): a daemon start is most of such a test's cost."""
    daemon = Daemon(tmp_path_factory.mktemp("shared"))
    daemon.start()
    yield daemon
    _stop_all([daemon])


class UI:
    """A page in a fresh browser context, with every console error it logs."""

    def __init__(self, page: Page) -> None:
        self.page = page
        #: ``console.error`` messages and uncaught exceptions, in order.
        self.console_errors: list[str] = []
        #: Uncaught exceptions only (a subset of ``console_errors``).
        self.page_errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", self._on_page_error)

    def _on_console(self, message: Any) -> None:
        if message.type == "error":
            self.console_errors.append(f"console.error: {message.text}")

    def _on_page_error(self, error: Any) -> None:
        self.page_errors.append(f"pageerror: {error}")
        self.console_errors.append(f"pageerror: {error}")


@pytest.fixture
def ui(
    browser: Browser, spawn: DaemonFactory, request: pytest.FixtureRequest
) -> Iterator[UI]:
    # Depends on ``spawn`` so the screenshot is taken before daemons stop.
    context = browser.new_context(viewport={"width": 1024, "height": 720})
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    page = context.new_page()
    helper = UI(page)
    try:
        yield helper
    finally:
        try:
            report = getattr(request.node, "rep_call", None)
            if report is None or report.failed:
                OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
                name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
                page.screenshot(path=str(OUTPUT_DIR / f"{name}.png"), full_page=True)
        finally:
            context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[None]:
    """Keep the call phase's report on the item: ``ui`` screenshots failures."""
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
