"""PROTOCOL 3.2 and 6 end to end: an attachment goes in as a data URL, comes
back from the echo agent as a signed media URL, and the URL serves the same
bytes (also after a restart: the signing secret lives in data_dir)."""

from __future__ import annotations

import base64
import os

from ._client import connect, http_get, ready, recv, send, turn
from .conftest import DaemonFactory

# A valid 1x1 PNG followed by random bytes: the server checks MIME and size,
# not the image itself, and the payload must come back byte for byte.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="
) + os.urandom(5000)


def test_an_attachment_round_trips_through_a_signed_url(
    spawn_daemon: DaemonFactory, tmp_path
):
    data_dir = tmp_path / "data"
    daemon = spawn_daemon("--no-require-token", data_dir=data_dir)
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    with connect(daemon.ws_url("client_id=pic")) as ws:
        chat = ready(ws)["chat_id"]
        send(
            ws,
            {
                "type": "message",
                "chat_id": chat,
                "content": "look",
                "media": [{"data_url": data_url, "name": "x.png"}],
            },
        )
        [message] = [f for f in turn(ws, chat) if f["event"] == "message"]
    [saved] = message["media"]
    assert saved.startswith(str(data_dir / "media"))
    [link] = message["media_urls"]
    assert link["url"].startswith("/api/media/")
    status, headers, body = http_get(daemon.host, daemon.port, link["url"])
    assert (status, headers["content-type"], body) == (200, "image/png", PNG)
    assert headers["x-content-type-options"] == "nosniff"
    tampered = link["url"][:-2] + ("AA" if not link["url"].endswith("AA") else "BB")
    assert http_get(daemon.host, daemon.port, tampered)[0] in (400, 401, 404)
    assert daemon.stop() == 0

    again = spawn_daemon("--no-require-token", data_dir=data_dir)
    status, _, body = http_get(again.host, again.port, link["url"])
    assert (status, body) == (200, PNG)


def test_a_refused_attachment_leaves_no_file(spawn_daemon: DaemonFactory, tmp_path):
    data_dir = tmp_path / "data"
    daemon = spawn_daemon("--no-require-token", data_dir=data_dir)
    png = "data:image/png;base64," + base64.b64encode(PNG).decode()
    svg = "data:image/svg+xml;base64," + base64.b64encode(b"<svg/>").decode()
    with connect(daemon.ws_url("client_id=pic")) as ws:
        chat = ready(ws)["chat_id"]
        send(
            ws,
            {
                "type": "message",
                "chat_id": chat,
                "content": "two",
                "media": [{"data_url": png}, {"data_url": svg}],
            },
        )
        assert recv(ws) == {
            "event": "error",
            "detail": "image_rejected",
            "reason": "mime",
        }
        # Blank content: the PNG is saved first, then the message is refused.
        send(
            ws,
            {
                "type": "message",
                "chat_id": chat,
                "content": "  ",
                "workspace_scope": "not an object",
                "media": [{"data_url": png}],
            },
        )
        assert recv(ws)["detail"] == "workspace_scope_rejected"
    media = data_dir / "media"
    assert not media.exists() or list(media.iterdir()) == []
