"""Opening the configured listener (TCP, TCP+TLS or unix socket) and naming peers."""

from __future__ import annotations

import os
import socket
import ssl
import stat
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from ..config import ChannelConfig
from ..core.session import Peer

UNIX_BACKLOG = 1024


@attrs.frozen
class BoundListeners:
    listeners: list[trio.abc.Listener[trio.abc.Stream]]
    urls: list[str]
    #: Undo what binding left on disk (the unix socket file).
    cleanup: Callable[[], None] = lambda: None


def tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server context that refuses anything older than TLS 1.2."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def open_listeners(cfg: ChannelConfig) -> BoundListeners:
    if cfg.unix_socket_path:
        return await _open_unix(cfg.unix_socket_path, cfg.path)
    tcp = await trio.open_tcp_listeners(cfg.port, host=cfg.host or None)
    scheme = "ws"
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(tcp)
    if cfg.ssl_certfile:
        ctx = tls_context(cfg.ssl_certfile, cfg.ssl_keyfile)
        listeners = [trio.SSLListener(t, ctx, https_compatible=True) for t in tcp]
        scheme = "wss"
    urls = []
    for t in tcp:
        host, port = t.socket.getsockname()[:2]
        urls.append(f"{scheme}://{_url_host(host)}:{port}{cfg.path}")
    return BoundListeners(listeners, urls)


def _prepare_unix_path(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A stale socket file (or anything else) at the path is replaced.
    if path.is_symlink() or path.exists():
        path.unlink()


async def _open_unix(path_str: str, ws_path: str) -> BoundListeners:
    path = Path(path_str)
    await trio.to_thread.run_sync(_prepare_unix_path, path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Bind with a tight umask so the file is never reachable by others,
        # not even between bind() and chmod().
        old = os.umask(0o177)
        try:
            await sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        sock.listen(UNIX_BACKLOG)
    except BaseException:
        sock.close()
        raise

    def cleanup() -> None:
        path.unlink(missing_ok=True)

    return BoundListeners(
        [trio.SocketListener(sock)], [f"unix://{path}{ws_path}"], cleanup
    )


def peer_of(stream: trio.abc.Stream) -> Peer:
    """The remote address of a socket stream (``Peer("")`` for unix/others)."""
    inner: object = stream
    if isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    if isinstance(inner, trio.SocketStream) and inner.socket.family in (
        socket.AF_INET,
        socket.AF_INET6,
    ):
        try:
            host, port = inner.socket.getpeername()[:2]
        except OSError:
            return Peer("")
        return Peer(str(host), int(port))
    return Peer("")
