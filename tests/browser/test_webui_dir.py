"""``serve --webui-dir DIR``: a single-page app build served from the port.

A tiny stand-in for nanobot's web UI build (``index.html`` plus a hashed
module under ``assets/``) does what that UI does first: it fetches the
bootstrap, sends ``api_token`` as its Bearer, and routes on the client, so a
deep link must get ``index.html``.
"""

from __future__ import annotations

from pathlib import Path

from .conftest import UI, DaemonFactory

try:
    from playwright.sync_api import expect
except ImportError as exc:  # pragma: no cover - the conftest explains
    raise ImportError(
        "the browser tests need the 'playwright' package: pip install -e '.[test]'"
    ) from exc

INDEX = """<!doctype html>
<html><head><title>stand-in UI</title>
<script type="module" crossorigin src="/assets/index-C0ffee12.js"></script>
</head><body><p id="out">loading</p></body></html>
"""

APP = """
const out = document.getElementById("out");
const boot = await (await fetch("/webui/bootstrap")).json();
const auth = { headers: { Authorization: `Bearer ${boot.api_token}` } };
const sessions = await fetch("/api/sessions", auth);
const settings = await fetch("/api/settings", auth);
out.textContent = [
  `route ${location.pathname}`,
  `sessions ${sessions.status} ${Array.isArray((await sessions.json()).sessions)}`,
  `settings ${settings.status} ${await settings.text()}`,
].join("; ");
"""


def build(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text(INDEX)
    (dist / "assets" / "index-C0ffee12.js").write_text(APP)
    return dist


def test_a_web_ui_build_is_served_instead_of_the_bundled_page(
    ui: UI, spawn: DaemonFactory, tmp_path: Path
) -> None:
    daemon = spawn("--webui-dir", str(build(tmp_path)))
    page = ui.page
    with page.expect_response(lambda r: "/assets/" in r.url) as asset:
        response = page.goto(daemon.http_url + "chat/42?x=1")
    assert response is not None
    assert response.status == 200
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert asset.value.status == 200
    assert asset.value.headers["content-type"] == "text/javascript; charset=utf-8"
    assert asset.value.headers["cache-control"] == "public, max-age=31536000, immutable"
    expect(page).to_have_title("stand-in UI")
    expect(page.locator("#out")).to_have_text(
        "route /chat/42; sessions 200 true; settings 404 API route not found"
    )
    # The bundled page's own files are not there any more.
    bundled = page.request.get(daemon.http_url + "app.js")
    assert bundled.headers["content-type"] == "text/html; charset=utf-8"
    assert "stand-in UI" in bundled.text()
    assert ui.page_errors == []
