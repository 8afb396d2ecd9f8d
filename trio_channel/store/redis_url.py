"""What a ``session_store`` Redis URL names (pure): one server, a Cluster, or
a primary that Sentinels watch.

- ``redis://[[USER]:PASSWORD@]HOST:PORT/DB`` (``rediss://`` with TLS): one
  Redis server (coredis reads the URL itself, query parameters included);
- ``redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]`` (also
  ``rediss+cluster://``): a Redis Cluster, found from any of the nodes
  given; Cluster has database 0 only;
- ``redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]``
  (also ``rediss+sentinel://``): the primary the Sentinels at those
  addresses know as ``SERVICE``, asked for again after every failover. The
  password is the data nodes'; Sentinels are reached without one.

Parsing is strict and happens when the configuration is loaded, so a typo is
one config line naming ``session_store``, not a failure at the first write.
"""

from __future__ import annotations

from typing import Final, Literal
from urllib.parse import unquote

import attrs

__all__ = ["RedisTarget", "is_redis_url", "parse_redis_url"]

Topology = Literal["standalone", "cluster", "sentinel"]

_SCHEMES: Final[dict[str, tuple[Topology, bool]]] = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
DEFAULT_PORT: Final = 6379
DEFAULT_SENTINEL_PORT: Final = 26379


@attrs.frozen
class RedisTarget:
    """A parsed Redis URL. ``url`` is the URL itself (a standalone server's
    is handed to coredis as it is)."""

    topology: Topology
    url: str
    tls: bool = False
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_redis_url(value: str) -> bool:
    """Whether ``value`` is meant as a Redis URL (it may still be a bad one)."""
    scheme, sep, _ = value.partition("://")
    return bool(sep) and scheme.lower() in _SCHEMES


def parse_redis_url(url: str) -> RedisTarget:
    """Raises :class:`ValueError` saying what is wrong (never the password)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        names = ", ".join(f"{s}://" for s in _SCHEMES)
        raise ValueError(f"a Redis URL starts with one of {names}")
    topology, tls = _SCHEMES[scheme.lower()]
    if "#" in rest:
        raise ValueError("a Redis URL has no #fragment")
    if topology == "standalone":
        # coredis parses it, query parameters and all; the checks here are
        # the ones it would only make at the first connection.
        netloc, _, path = rest.partition("/")
        hosts = _hosts(netloc.partition("?")[0], DEFAULT_PORT)
        if len(hosts) != 1:
            raise ValueError("redis:// names one server (a Cluster: redis+cluster://)")
        _db(path.partition("?")[0])
        return RedisTarget("standalone", url, tls, hosts)
    if "?" in rest:
        raise ValueError(f"{scheme}:// URLs take no query parameters")
    netloc, _, path = rest.partition("/")
    username, password, netloc = _credentials(netloc)
    if topology == "cluster":
        hosts = _hosts(netloc, DEFAULT_PORT)
        if _db(path) != 0:
            raise ValueError("a Redis Cluster has database 0 only")
        return RedisTarget("cluster", url, tls, hosts, "", 0, username, password)
    hosts = _hosts(netloc, DEFAULT_SENTINEL_PORT)
    service, _, db = path.partition("/")
    service = unquote(service)
    if not service:
        raise ValueError(
            "redis+sentinel:// needs the service name: "
            "redis+sentinel://HOST:PORT[,HOST:PORT]/SERVICE[/DB]"
        )
    return RedisTarget(
        "sentinel", url, tls, hosts, service, _db(db), username, password
    )


def _credentials(netloc: str) -> tuple[str | None, str | None, str]:
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, netloc
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None, unquote(password) if colon else None, hosts)


def _hosts(netloc: str, default_port: int) -> tuple[tuple[str, int], ...]:
    netloc = netloc.rpartition("@")[2]
    if not netloc:
        raise ValueError("a Redis URL needs HOST:PORT")
    return tuple(_host(part, default_port) for part in netloc.split(","))


def _host(part: str, default_port: int) -> tuple[str, int]:
    if part.startswith("["):  # [IPv6]:port
        host, bracket, tail = part[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError(f"bad address {part!r}")
        port_text = tail[1:]
    else:
        host, _, port_text = part.partition(":")
    if not host:
        raise ValueError(f"bad address {part!r}: no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {part!r}")
    return host, int(port_text)


def _db(path: str) -> int:
    if not path:
        return 0
    if not path.isdigit():
        raise ValueError(f"the database is a number (got {path!r})")
    return int(path)
