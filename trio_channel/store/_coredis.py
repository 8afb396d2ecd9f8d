"""The one module that knows coredis (the ``redis`` extra).

Everything else talks to Redis through :class:`RedisLink`: Lua scripts run
one at a time or pipelined, the blocking stream reads, and a few plain
commands. Keeping coredis here means one place to change when its API moves
(the version is pinned to a minor range) and one place that holds the
lessons of SCALEOUT.md's traps:

- the client's default retry policy re-sends a script after a timeout (one
  append stored three times): the link uses ``NoRetryPolicy``, and callers
  retry themselves with the same event ids;
- no PubSub: its iterator can end silently after a reconnect;
- ``async with coredis.Redis(...)`` owns an anyio task group, so the link is
  entered inside our own nursery tree (:meth:`RedisLink.open`);
- coredis 6.9's pool loses a slot for every connection that dies while a
  command holds it (each blocked ``XREAD``/``XREADGROUP`` when Redis
  restarts: 17 per node here), and a pool with no slot left waits forever.
  Three Redis restarts were enough to hang a daemon. So the pool wait has a
  deadline (``pool_timeout``), and a connection-level failure renews the
  whole client (:meth:`RedisLink._keep_client`, at most once a second):
  a fresh pool; the old one is closed once the calls on it had time to end.

Errors come out as :class:`~trio_channel.store.base.StoreError`: transient
for a lost or refused connection and timeouts (retry), not transient for
an answer Redis refused (a bug, or a full Redis).
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any, Final

import attrs
import trio

from .base import StoreError
from .redis_url import RedisTarget, parse_redis_url

try:
    import coredis
    from coredis.connection import TCPLocation
    from coredis.exceptions import (
        ConnectionError as _ConnectionError,
    )
    from coredis.exceptions import (
        NoScriptError as _NoScript,
    )
    from coredis.exceptions import (
        RedisError as _RedisError,
    )
    from coredis.exceptions import (
        ResponseError as _ResponseError,
    )
    from coredis.exceptions import (
        StreamDuplicateConsumerGroupError as _GroupExists,
    )
    from coredis.retry import NoRetryPolicy
except ImportError:  # pragma: no cover - the extra is not installed
    coredis = None  # type: ignore[assignment]

__all__ = ["RedisLink", "Script", "available"]

log = logging.getLogger("trio_channel.store")

#: Seconds to wait for a connection, and for an answer (XREAD BLOCK adds its
#: own block time to this).
CONNECT_TIMEOUT_S: Final = 2.0
STREAM_TIMEOUT_S: Final = 10.0
#: Longest wait for a free connection of the pool (see the module docstring).
POOL_TIMEOUT_S: Final = 10.0
#: A client is renewed at most this often, however many calls fail.
RENEW_INTERVAL_S: Final = 1.0
#: Longest a call may take (blocking reads add their block time): coredis's
#: own timeouts cover a connection that answers slowly, not one that the
#: client's renewal closed under a call, which then waited forever.
CALL_TIMEOUT_S: Final = STREAM_TIMEOUT_S + CONNECT_TIMEOUT_S
#: Connections per Redis server (coredis's own default for one server). A
#: node holds a blocking read per feed loop and per owned inbox: 33 of them
#: at most with 16 partitions on a Cluster.
MAX_CONNECTIONS: Final = 64
#: What coredis says to a call on a client whose pool was closed (renewed).
_POOL_CLOSED: Final = "Connection pool is not initialized or has exited"


def available() -> bool:
    """Whether the ``redis`` extra (coredis) is installed."""
    return coredis is not None


#: Refusals that mean "not now" rather than "never": a primary that a
#: failover just turned into a replica (READONLY) until the client finds the
#: new one, a server loading its data, a Cluster or Sentinel between two
#: states. They are retried, and a client on a demoted primary is renewed.
_TRANSIENT_REFUSALS: Final = (
    "READONLY",
    "LOADING",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "TRYAGAIN",
)


def _as_store_error(exc: BaseException, what: str) -> StoreError:
    transient = (
        not isinstance(exc, _ResponseError)
        or isinstance(exc, _ConnectionError)
        or str(exc).startswith(_TRANSIENT_REFUSALS)
    )
    return StoreError(f"redis: {what}: {exc}", transient=transient)


#: What a failing Redis call may raise.
REDIS_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError)
if coredis is not None:
    REDIS_ERRORS += (_RedisError,)
#: What a call on the link catches: those, and a pool closed under it.
_CALL_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, RuntimeError)


@attrs.frozen
class Script:
    """A Lua script and its name (for error messages)."""

    name: str
    source: str
    sha: str = attrs.field(init=False)

    @sha.default
    def _sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


@attrs.frozen
class Call:
    """One script call of a pipeline: ``KEYS`` and ``ARGV``."""

    script: Script
    keys: Sequence[str]
    args: Sequence[str | bytes | int | float]


@attrs.define(eq=False)
class RedisLink:
    """A connected client with our scripts registered, renewed when it breaks."""

    url: str
    client: Any = None
    target: RedisTarget = attrs.field(init=False)
    #: Every script this link has run, by name; all of them are loaded on
    #: ``_loaded_on`` (the current client, or None until they are).
    _known: dict[str, Script] = attrs.field(factory=dict, init=False)
    _loaded_on: Any = attrs.field(default=None, init=False)
    _renew: trio.Event = attrs.field(factory=trio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        try:
            self.target = parse_redis_url(self.url)
        except ValueError as exc:
            raise StoreError(f"redis: bad URL: {exc}", transient=False) from exc

    @property
    def cluster(self) -> bool:
        """A Redis Cluster: one call reaches one hash slot (one partition)."""
        return self.target.topology == "cluster"

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str) -> AsyncIterator[RedisLink]:
        """Connect to ``url`` and check it answers; raises :class:`StoreError`."""
        if coredis is None:
            raise StoreError(
                "a redis:// session store needs the redis extra: "
                "pip install 'trio-channel[redis]'",
                transient=False,
            )
        link = cls(url)
        first = link._new_client()
        async with trio.open_nursery() as nursery:
            await nursery.start(link._keep_client, first)
            try:
                await link.client.ping()
            except REDIS_ERRORS as exc:
                raise _as_store_error(exc, "cannot connect") from exc
            yield link
            nursery.cancel_scope.cancel()

    def _new_client(self) -> AbstractAsyncContextManager[Any]:
        """A client not yet entered: entering it yields the client to call."""
        target = self.target
        common: dict[str, Any] = {
            "retry_policy": NoRetryPolicy(),
            "connect_timeout": CONNECT_TIMEOUT_S,
            "stream_timeout": STREAM_TIMEOUT_S,
            "decode_responses": False,
        }
        try:
            if target.topology == "standalone":
                client: Any = coredis.Redis.from_url(
                    self.url, pool_timeout=POOL_TIMEOUT_S, **common
                )
                return client  # type: ignore[no-any-return]
            if target.topology == "cluster":
                client = coredis.RedisCluster(
                    startup_nodes=[TCPLocation(h, p) for h, p in target.nodes],
                    username=target.username,
                    password=target.password,
                    ssl=target.tls,
                    max_connections=MAX_CONNECTIONS,
                    max_connections_per_node=True,
                    pool_timeout=POOL_TIMEOUT_S,
                    **common,
                )
                return client  # type: ignore[no-any-return]
        except (ValueError, TypeError) as exc:
            raise StoreError(f"redis: bad URL: {exc}", transient=False) from exc
        return _sentinel_primary(target, common)

    async def _keep_client(
        self, client: Any, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Hold the current client; swap in a fresh one when asked to renew.

        The old client stays open for :data:`CALL_TIMEOUT_S` more, so calls
        already running on it end on their own (answered, failed, or cut by
        their deadline) instead of on a pool closed under them.
        """
        async with trio.open_nursery() as holders:
            entered, release = await holders.start(self._hold, client)
            self.client, self._renew = entered, trio.Event()
            task_status.started()
            while True:
                born = trio.current_time()
                await self._renew.wait()
                await trio.sleep_until(born + RENEW_INTERVAL_S)
                fresh, fresh_release = await holders.start(
                    self._hold, self._new_client()
                )
                self.client, self._renew = fresh, trio.Event()
                log.info("redis: connections lost; renewing the client")
                holders.start_soon(_release_later, release)
                release = fresh_release

    @staticmethod
    async def _hold(
        client: AbstractAsyncContextManager[Any],
        *,
        task_status: trio.TaskStatus[tuple[Any, trio.Event]],
    ) -> None:
        """Keep ``client`` entered until the event it reports is set."""
        release = trio.Event()
        async with client as entered:
            task_status.started((entered, release))
            await release.wait()

    def _failed(self, exc: BaseException, what: str, client: Any) -> StoreError:
        if isinstance(exc, RuntimeError):
            # A call that began on the client just renewed finds its pool
            # closed: retry on the new one. Any other RuntimeError is a bug.
            if _POOL_CLOSED not in str(exc):
                raise exc
            return StoreError(f"redis {what}: the client was renewed", transient=True)
        error = _as_store_error(exc, what)
        if error.transient and client is self.client:
            # (A call on a client already replaced renews nothing.)
            self._renew.set()
        return error

    async def _load(self, client: Any, scripts: Iterable[Script]) -> None:
        """Have every known script, and ``scripts``, loaded on ``client``.

        Loaded once per client and then run by SHA (``EVALSHA``): coredis's
        own script objects ask ``SCRIPT EXISTS`` before every pipeline, one
        more round trip per write. All of them are loaded together, so a
        Redis that lost its scripts (a restart, a failover to a replica) gets
        all of them back at once, never a few that another node used first.
        """
        new = [s for s in scripts if s.name not in self._known]
        if not new and self._loaded_on is client:
            return
        self._known.update((s.name, s) for s in new)
        for script in list(self._known.values()):
            await client.script_load(script.source)
        self._loaded_on = client

    def _scripts_gone(self, client: Any) -> None:
        """NOSCRIPT: Redis forgot them (restarted, failed over); load again."""
        if self._loaded_on is client:
            self._loaded_on = None

    async def run(self, call: Call) -> Any:
        """Run one script; raises :class:`StoreError`."""
        client = self.client
        try:
            with _bounded(CALL_TIMEOUT_S):
                for attempt in (1, 2):
                    await self._load(client, [call.script])
                    try:
                        return await client.evalsha(
                            call.script.sha, keys=list(call.keys), args=list(call.args)
                        )
                    except _NoScript:
                        # It did not run: load the scripts again and retry.
                        self._scripts_gone(client)
                        if attempt == 2:
                            raise
        except _CALL_ERRORS as exc:
            raise self._failed(exc, call.script.name, client) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def run_all(self, calls: Sequence[Call]) -> list[Any]:
        """Run scripts in one pipeline, in order; each result or its error.

        A refused script (``redis.error_reply``) comes back as an exception
        *value* in its place; a lost connection or a "not now" refusal
        (READONLY after a failover, LOADING) raises :class:`StoreError` for
        the whole batch (some of it may have run: callers retry with the
        same ids).
        """
        if not calls:
            return []
        client = self.client
        try:
            with _bounded(CALL_TIMEOUT_S):
                results = await self._pipeline(client, calls)
                if all(isinstance(r, _NoScript) for r in results):
                    # Nothing ran: Redis forgot the scripts. Load, once more.
                    self._scripts_gone(client)
                    results = await self._pipeline(client, calls)
        except _CALL_ERRORS as exc:
            raise self._failed(exc, "pipeline", client) from exc
        for result in results:
            if isinstance(result, _NoScript):
                # Some ran and some did not (scripts flushed mid-pipeline):
                # the caller retries the batch with the same ids.
                self._scripts_gone(client)
                raise StoreError("redis pipeline: scripts were flushed", transient=True)
            if isinstance(result, BaseException) and (
                not isinstance(result, _ResponseError)
                or str(result).startswith(_TRANSIENT_REFUSALS)
            ):
                raise self._failed(result, "pipeline", client)
        return results

    async def _pipeline(self, client: Any, calls: Sequence[Call]) -> list[Any]:
        await self._load(client, {c.script.name: c.script for c in calls}.values())
        async with client.pipeline(transaction=False, raise_on_error=False) as pipe:
            for call in calls:
                pipe.evalsha(
                    call.script.sha, keys=list(call.keys), args=list(call.args)
                )
        return list(pipe.results or ())

    async def xread(
        self, streams: Mapping[str, str], *, count: int, block_ms: int
    ) -> list[tuple[str, list[tuple[str, dict[str, bytes]]]]]:
        """``XREAD`` as plain data: ``[(stream, [(id, fields)])]``."""
        client = self.client
        try:
            with _bounded(CALL_TIMEOUT_S + block_ms / 1000):
                answer = await client.xread(dict(streams), count=count, block=block_ms)
        except _CALL_ERRORS as exc:
            raise self._failed(exc, "xread", client) from exc
        return _streams(answer)

    async def xreadgroup(
        self,
        group: str,
        consumer: str,
        streams: Mapping[str, str],
        *,
        count: int,
        block_ms: int | None,
    ) -> list[tuple[str, list[tuple[str, dict[str, bytes]]]]]:
        client = self.client
        try:
            with _bounded(CALL_TIMEOUT_S + (block_ms or 0) / 1000):
                answer = await client.xreadgroup(
                    group, consumer, dict(streams), count=count, block=block_ms
                )
        except _CALL_ERRORS as exc:
            raise self._failed(exc, "xreadgroup", client) from exc
        return _streams(answer)

    async def ensure_group(self, stream: str, group: str) -> None:
        """Create the consumer group (and the stream) unless it exists."""
        client = self.client
        try:
            with _bounded(CALL_TIMEOUT_S):
                await client.xgroup_create(stream, group, "0", mkstream=True)
        except _GroupExists:
            return
        except _CALL_ERRORS as exc:
            raise self._failed(exc, "xgroup create", client) from exc

    async def get(self, key: str) -> bytes | None:
        client = self.client
        try:
            with _bounded(CALL_TIMEOUT_S):
                value = await client.get(key)
        except _CALL_ERRORS as exc:
            raise self._failed(exc, "get", client) from exc
        return value if value is None else bytes(value)


@asynccontextmanager
async def _sentinel_primary(
    target: RedisTarget, common: dict[str, Any]
) -> AsyncIterator[Any]:
    """The primary the Sentinels name, looked up again for each connection
    (coredis's Sentinel pool): after a failover, the link's renewal makes
    new connections, which find the new primary."""
    # TLS to the Sentinels and the data nodes alike, verified against the
    # system's certificate authorities.
    tls = ssl.create_default_context() if target.tls else None
    sentinel_options = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "stream_timeout": STREAM_TIMEOUT_S,
        "ssl_context": tls,
    }
    sentinel = coredis.Sentinel(
        [TCPLocation(h, p) for h, p in target.nodes],
        sentinel_kwargs=sentinel_options,
        **common,
    )
    async with sentinel:
        primary = sentinel.primary_for(
            target.service,
            db=target.db,
            username=target.username,
            password=target.password,
            ssl_context=tls,
            max_connections=MAX_CONNECTIONS,
            timeout=POOL_TIMEOUT_S,
        )
        async with primary:
            yield primary


async def _release_later(release: trio.Event) -> None:
    await trio.sleep(CALL_TIMEOUT_S)
    release.set()


@contextmanager
def _bounded(seconds: float) -> Iterator[None]:
    """Raise :class:`TimeoutError` (a transient failure) after ``seconds``."""
    with trio.move_on_after(seconds) as scope:
        yield
    if scope.cancelled_caught:
        raise TimeoutError(f"no answer from redis within {seconds:g} s")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _streams(answer: Any) -> list[tuple[str, list[tuple[str, dict[str, bytes]]]]]:
    out: list[tuple[str, list[tuple[str, dict[str, bytes]]]]] = []
    if not answer:
        return out
    for stream, entries in answer.items():
        rows = []
        for entry in entries:
            fields = {_text(k): bytes(v) for k, v in entry.field_values.items()}
            rows.append((_text(entry.identifier), fields))
        out.append((_text(stream), rows))
    return out
