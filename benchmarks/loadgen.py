"""The Python load generator: runs in its own process, prints JSON.

The benchmark's table uses the Node one (``benchmarks/node/loadgen.mjs``);
this one stays for the profilers (``--client raw``) and for cross-checks.

Usage::

    python benchmarks/loadgen.py URL SCENARIO [options]

``URL`` is a ``ws://`` URL on loopback (127.0.0.0/8, ``::1`` or ``localhost``;
anything else is refused). Scenarios:

``rtt``
    ``--clients`` connections each send a message (``hello``) and wait for the
    ``message`` and the ``turn_end`` of the answer, then send the next one;
    ``--idle`` other connections are opened first and sit idle. Value: round
    trips/s, all clients together.
``stream``
    Like ``rtt`` with ``stream:N`` (``--deltas``); value: frames/s received,
    all clients together (the frames of the turns: goal_status, deltas,
    stream_end, turn_end; other events are not counted).
``fanout``
    ``--clients`` connections subscribe to one chat (the first one's default
    chat; the others ``attach``); the first sends ``stream:N`` and every
    subscriber waits for the last frame of the turn (``goal_status`` idle).
    Repeated ``--reps`` times after one warm-up turn. Value: frames delivered
    per second, summed over subscribers.
``connect``
    ``--total`` connections, at most ``--concurrency`` in flight: connect,
    wait for ``ready``, close (closing handshake, then wait for the server to
    drop TCP). Value: connects/s.
``idle``
    Holds ``--total`` idle connections for the parent to measure the server's
    memory. It prints ``{"phase": "baseline"}`` after a short warm-up and
    waits for a line on stdin, opens the connections, prints
    ``{"phase": "holding", ...}`` and waits for another line on stdin (at most
    ``--hold`` seconds) before closing them.

Timed scenarios run ``--warmup`` seconds unmeasured, then ``--duration``
seconds measured. With ``--server-pid`` the result also has the server's CPU
seconds over the measured window (from ``/proc/PID/stat``), next to the load
generator's own, so one can tell which side was the bottleneck.

Two clients: ``--client raw`` (default), a minimal RFC 6455 client on asyncio
protocols that parses frames in place, and ``--client websockets``, the
``websockets`` library's asyncio client. The ``websockets`` client costs
several times more CPU per received frame and becomes the bottleneck in the
streaming and fan-out scenarios (see docs/benchmarks.md), hence the raw one.

Every loop is bounded in count (``--max-ops``) and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import resource
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from _limits import raise_nofile_limit  # sibling module: run as a script

CONNECT_TIMEOUT_S = 15.0
OP_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 5.0
#: Connections opened at once while setting up idle/fan-out connections.
OPEN_CONCURRENCY = 50

_EVENT_PREFIX = b'{"event":"'
#: The events a turn produces; values count these frames only (nanobot also
#: broadcasts ``session_updated`` after every turn, counted apart).
_TURN_EVENTS = frozenset(
    {b"goal_status", b"message", b"delta", b"stream_end", b"turn_end"}
)
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def check_loopback(url: str) -> tuple[str, int, str]:
    """Return (host, port, resource) for a ws:// URL on loopback, else exit."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "ws" or parts.port is None:
        raise SystemExit(f"loadgen: need ws://HOST:PORT/..., got {url!r}")
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError(host)
        except ValueError:
            raise SystemExit(f"loadgen: refusing non-loopback host {host!r}") from None
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return host, parts.port, target


# --- connections ----------------------------------------------------------------


class ConnState:
    """Counts frames by event name and wakes one waiter; shared by both clients."""

    def __init__(self) -> None:
        self.frames = 0
        self.turn_frames = 0
        self.counts: dict[bytes, int] = {}
        self.ready: dict[str, Any] | None = None
        self.closed = False
        self._waiter: tuple[bytes, int, asyncio.Future[None]] | None = None

    def on_payload(self, payload: bytes) -> None:
        self.frames += 1
        if payload.startswith(_EVENT_PREFIX):
            name = payload[10 : payload.find(b'"', 10)]
        else:  # not the compact encoding both servers use: decode properly
            try:
                name = str(json.loads(payload).get("event", "")).encode()
            except (ValueError, AttributeError):
                name = b"?"
        if name in _TURN_EVENTS:
            self.turn_frames += 1
        count = self.counts.get(name, 0) + 1
        self.counts[name] = count
        if name == b"ready":
            self.ready = json.loads(payload)
        waiter = self._waiter
        if waiter is not None and waiter[0] == name and count >= waiter[1]:
            self._waiter = None
            if not waiter[2].done():
                waiter[2].set_result(None)

    def on_closed(self) -> None:
        self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter[2].done():
            waiter[2].set_exception(ConnectionError("connection closed"))

    def count(self, name: bytes) -> int:
        return self.counts.get(name, 0)

    async def wait_event(
        self, name: bytes, count: int, within_s: float = OP_TIMEOUT_S
    ) -> None:
        """Wait until ``count`` frames of event ``name`` have arrived in total."""
        if self.counts.get(name, 0) >= count:
            return
        if self.closed:
            raise ConnectionError("connection closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter = (name, count, fut)
        await asyncio.wait_for(fut, within_s)


class RawConn(asyncio.Protocol):
    """A minimal WebSocket client (RFC 6455) that parses frames in place."""

    def __init__(self) -> None:
        self.state = ConnState()
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._handshaken = False
        self._key = base64.b64encode(os.urandom(16))
        self._opened: asyncio.Future[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._fragments: list[bytes] = []
        self.close_received = False

    @classmethod
    async def open(cls, host: str, port: int, target: str) -> RawConn:
        loop = asyncio.get_running_loop()
        conn = cls()
        conn._opened = loop.create_future()
        conn._lost = loop.create_future()
        await loop.create_connection(lambda: conn, host, port)
        assert conn.transport is not None
        hosthdr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        conn.transport.write(
            f"GET {target} HTTP/1.1\r\nHost: {hosthdr}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {conn._key.decode()}\r\n\r\n".encode()
        )
        try:
            await asyncio.wait_for(conn._opened, CONNECT_TIMEOUT_S)
        except BaseException:
            conn.transport.abort()
            raise
        return conn

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.on_closed()
        for fut in (self._opened, self._lost):
            if fut is not None and not fut.done():
                if fut is self._opened:
                    fut.set_exception(ConnectionError("closed during handshake"))
                else:
                    fut.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            self._check_handshake(head)
            if not self._handshaken:
                return
        pos = 0
        n = len(buf)
        on_payload = self.state.on_payload
        while n - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                (length,) = struct.unpack_from("!Q", buf, pos + 2)
                start = pos + 10
            end = start + length
            if end > n:
                break
            opcode = b0 & 0x0F
            payload = bytes(buf[start:end])
            pos = end
            if opcode in (1, 2, 0):
                if not b0 & 0x80:  # fragmented: keep until FIN
                    self._fragments.append(payload)
                    continue
                if self._fragments:
                    payload = b"".join([*self._fragments, payload])
                    self._fragments.clear()
                on_payload(payload)
            elif opcode == 9:  # ping -> pong
                self._send_frame(0xA, payload)
            elif opcode == 8:
                self.close_received = True
        if pos:
            del buf[:pos]

    def _check_handshake(self, head: bytes) -> None:
        assert self._opened is not None and self.transport is not None
        lines = head.split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1.1 101"):
            self._opened.set_exception(
                ConnectionError(lines[0].decode(errors="replace"))
            )
            self.transport.abort()
            return
        expected = base64.b64encode(hashlib.sha1(self._key + _WS_GUID).digest())
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-accept":
                if value.strip() != expected:
                    break
                self._handshaken = True
                self._opened.set_result(None)
                return
        self._opened.set_exception(ConnectionError("bad Sec-WebSocket-Accept"))
        self.transport.abort()

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        if n:
            key = int.from_bytes(mask * ((n + 3) // 4))
            masked = (int.from_bytes(payload) ^ (key >> (8 * (-n % 4)))).to_bytes(n)
        else:
            masked = b""
        self.transport.write(header + mask + masked)

    # the client interface

    def send_text(self, text: str) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("connection closed")
        self._send_frame(0x1, text.encode())

    async def close(self) -> None:
        """Closing handshake, then wait for the server to drop TCP."""
        assert self.transport is not None and self._lost is not None
        if not self.transport.is_closing():
            self._send_frame(0x8, struct.pack("!H", 1000))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._lost), CLOSE_TIMEOUT_S)
        self.transport.close()


class WebsocketsConn:
    """The same interface over the ``websockets`` library's asyncio client."""

    def __init__(self, ws: Any) -> None:
        self.state = ConnState()
        self.ws = ws
        self._sends: set[asyncio.Future[None]] = set()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, host: str, port: int, target: str) -> WebsocketsConn:
        from websockets.asyncio.client import connect

        hosthdr = f"[{host}]" if ":" in host else host
        ws = await connect(
            f"ws://{hosthdr}:{port}{target}",
            compression=None,
            max_size=None,
            ping_interval=None,
            open_timeout=CONNECT_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S,
        )
        return cls(ws)

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        on_payload = self.state.on_payload
        try:
            while True:
                on_payload(await self.ws.recv(decode=False))
        except ConnectionClosed:
            pass
        finally:
            self.state.on_closed()

    def send_text(self, text: str) -> None:
        # websockets' send() is a coroutine; a text frame this small goes out
        # without waiting, so schedule it and let it run at the next await.
        task = asyncio.ensure_future(self.ws.send(text))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


Conn = RawConn | WebsocketsConn
#: perf_counter, our CPU seconds, the server's CPU seconds, the machine's busy s.
Snapshot = tuple[float, float, float | None, float | None]
Opener = Callable[[], Awaitable[Conn]]


def make_opener(kind: str, url: str) -> Opener:
    host, port, target = check_loopback(url)
    cls: type[RawConn] | type[WebsocketsConn] = (
        RawConn if kind == "raw" else WebsocketsConn
    )

    async def opener() -> Conn:
        conn = await cls.open(host, port, target)
        await conn.state.wait_event(b"ready", 1, CONNECT_TIMEOUT_S)
        return conn

    return opener


async def open_many(opener: Opener, count: int) -> list[Conn]:
    sem = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def one() -> Conn:
        async with sem:
            return await opener()

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def close_many(conns: list[Conn]) -> None:
    sem = asyncio.Semaphore(OPEN_CONCURRENCY * 4)

    async def one(conn: Conn) -> None:
        async with sem:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT_S * 2)

    await asyncio.gather(*(one(c) for c in conns))


# --- measurement --------------------------------------------------------------------


class Meter:
    """CPU seconds over a window: this process, the server, and everyone else.

    ``other_cpu_s`` is the machine's busy time (``/proc/stat``, steal
    included) minus the server's and ours: other work on the box that
    competed with the benchmark during the window.
    """

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self._tick = os.sysconf("SC_CLK_TCK")

    def _machine_busy(self) -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal ...
        busy = sum(fields[:8]) - fields[3] - fields[4]
        return busy / self._tick

    def _server_cpu(self) -> float | None:
        if not self.server_pid:
            return None
        try:
            with open(f"/proc/{self.server_pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / self._tick
        except (OSError, IndexError, ValueError):
            return None

    def snapshot(self) -> Snapshot:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return (
            time.perf_counter(),
            usage.ru_utime + usage.ru_stime,
            self._server_cpu(),
            self._machine_busy(),
        )

    @staticmethod
    def report(start: Snapshot, end: Snapshot) -> dict[str, Any]:
        wall = end[0] - start[0] or 1e-9
        client = end[1] - start[1]
        out: dict[str, Any] = {
            "wall_s": round(wall, 4),
            "client_cpu_s": round(client, 4),
            "client_cpu_util": round(client / wall, 3),
        }
        server = None
        if start[2] is not None and end[2] is not None:
            server = end[2] - start[2]
            out["server_cpu_s"] = round(server, 4)
            out["server_cpu_util"] = round(server / wall, 3)
        if start[3] is not None and end[3] is not None:
            other = max(0.0, end[3] - start[3] - client - (server or 0.0))
            out["other_cpu_util"] = round(other / wall, 3)
        return out


async def timed_window(
    args: argparse.Namespace,
    meter: Meter,
    counter: Callable[[], int],
    stop: asyncio.Event,
    failed: asyncio.Event,
) -> tuple[int, dict[str, Any]]:
    """Sleep through warm-up, measure ``counter`` over the window, then stop."""
    if args.warmup > 0:
        await asyncio.wait([asyncio.ensure_future(failed.wait())], timeout=args.warmup)
    n0, t0 = counter(), meter.snapshot()
    await asyncio.wait([asyncio.ensure_future(failed.wait())], timeout=args.duration)
    n1, t1 = counter(), meter.snapshot()
    stop.set()
    return n1 - n0, Meter.report(t0, t1)


async def scenario_turns(
    args: argparse.Namespace, opener: Opener, meter: Meter, text: str, frames: bool
) -> dict[str, Any]:
    """``rtt`` (frames=False) and ``stream`` (frames=True)."""
    idle = await open_many(opener, args.idle) if args.idle else []
    active = await open_many(opener, args.clients)
    stop = asyncio.Event()
    failed = asyncio.Event()
    done = [0]
    errors: list[str] = []
    deadline = time.monotonic() + args.warmup + args.duration + OP_TIMEOUT_S

    async def client(conn: Conn) -> None:
        state = conn.state
        try:
            while (
                not stop.is_set()
                and done[0] < args.max_ops
                and time.monotonic() < deadline
            ):
                want_turn = state.count(b"turn_end") + 1
                want_msg = state.count(b"message") + 1
                conn.send_text(text)
                await state.wait_event(b"turn_end", want_turn)
                if not frames and state.count(b"message") < want_msg:
                    raise RuntimeError("turn_end without the message")
                done[0] += 1
        except Exception as exc:
            errors.append(repr(exc))
            failed.set()

    tasks = [asyncio.create_task(client(c)) for c in active]
    all_conns = [*active, *idle]
    if frames:
        count, window = await timed_window(
            args, meter, lambda: sum(c.state.turn_frames for c in active), stop, failed
        )
    else:
        count, window = await timed_window(args, meter, lambda: done[0], stop, failed)
    await asyncio.gather(*tasks)
    await close_many(all_conns)
    rate = count / window["wall_s"]
    return {
        "value": round(rate, 1),
        "unit": "frames/s" if frames else "round trips/s",
        "count": count,
        "round_trips_total": done[0],
        "errors": errors,
        **window,
    }


async def scenario_fanout(
    args: argparse.Namespace, opener: Opener, meter: Meter
) -> dict[str, Any]:
    conns = await open_many(opener, args.clients)
    sender = conns[0]
    assert sender.state.ready is not None
    chat_id = sender.state.ready["chat_id"]
    attach = json.dumps({"type": "attach", "chat_id": chat_id})
    for conn in conns[1:]:
        conn.send_text(attach)
    await asyncio.gather(*(c.state.wait_event(b"attached", 1) for c in conns[1:]))
    text = f"stream:{args.deltas}"
    per_turn = args.deltas + 4  # goal_status, deltas, stream_end, turn_end, goal_status
    total_frames = 0
    total_wall = 0.0
    turns = 0
    start = None
    started_at = time.monotonic()
    for rep in range(args.reps + 1):  # rep 0 warms up
        if time.monotonic() - started_at > args.duration + OP_TIMEOUT_S:
            break
        goal = [c.state.count(b"goal_status") + 2 for c in conns]
        before = sum(c.state.turn_frames for c in conns)
        snap = meter.snapshot()
        sender.send_text(text)
        await asyncio.gather(
            *(
                c.state.wait_event(b"goal_status", g)
                for c, g in zip(conns, goal, strict=True)
            )
        )
        end = meter.snapshot()
        delivered = sum(c.state.turn_frames for c in conns) - before
        if delivered != per_turn * len(conns):
            raise RuntimeError(
                f"expected {per_turn * len(conns)} frames, got {delivered}"
            )
        if rep == 0:
            continue
        if start is None:
            start = snap
        total_frames += delivered
        total_wall += end[0] - snap[0]
        turns += 1
    assert start is not None
    window = Meter.report(start, meter.snapshot())
    await close_many(conns)
    return {
        "value": round(total_frames / total_wall, 1),
        "unit": "frames/s",
        "count": total_frames,
        "turns": turns,
        "turn_wall_s": round(total_wall, 4),
        "subscribers": len(conns),
        **window,
    }


async def scenario_connect(
    args: argparse.Namespace, opener: Opener, meter: Meter
) -> dict[str, Any]:
    errors: list[str] = []
    next_index = [0]

    async def cycle() -> None:
        conn = await opener()
        await conn.close()

    async def worker(total: int) -> None:
        while next_index[0] < total:
            next_index[0] += 1
            try:
                await cycle()
            except Exception as exc:
                errors.append(repr(exc))

    warm = min(args.concurrency * 2, args.total)
    await asyncio.gather(*(worker(warm) for _ in range(args.concurrency)))
    next_index[0] = 0
    errors.clear()
    start = meter.snapshot()
    await asyncio.gather(*(worker(args.total) for _ in range(args.concurrency)))
    window = Meter.report(start, meter.snapshot())
    ok = args.total - len(errors)
    return {
        "value": round(ok / window["wall_s"], 1),
        "unit": "connects/s",
        "count": ok,
        "errors": errors[:10],
        "error_count": len(errors),
        **window,
    }


async def _read_stdin_line(within_s: float) -> str:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(
        loop.run_in_executor(None, sys.stdin.readline), within_s
    )


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def scenario_idle(
    args: argparse.Namespace, opener: Opener, meter: Meter
) -> dict[str, Any]:
    # Warm the server up (lazy imports, first allocations) before the baseline.
    await close_many(await open_many(opener, min(20, args.total)))
    _emit({"phase": "baseline"})
    await _read_stdin_line(args.hold)
    t0 = time.perf_counter()
    conns = await open_many(opener, args.total)
    opened = time.perf_counter() - t0
    _emit({"phase": "holding", "connections": len(conns)})
    with contextlib.suppress(TimeoutError):
        await _read_stdin_line(args.hold)
    alive = sum(not c.state.closed for c in conns)
    await close_many(conns)
    return {
        "value": len(conns),
        "unit": "connections",
        "alive_at_end": alive,
        "open_s": round(opened, 3),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    opener = make_opener(args.client, args.url)
    meter = Meter(args.server_pid)
    if args.scenario == "rtt":
        result = await scenario_turns(args, opener, meter, "hello", frames=False)
    elif args.scenario == "stream":
        text = f"stream:{args.deltas}"
        result = await scenario_turns(args, opener, meter, text, frames=True)
    elif args.scenario == "fanout":
        result = await scenario_fanout(args, opener, meter)
    elif args.scenario == "connect":
        result = await scenario_connect(args, opener, meter)
    else:
        result = await scenario_idle(args, opener, meter)
    return {"scenario": args.scenario, "client": args.client, **result}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="trio_channel benchmark load generator")
    p.add_argument("url")
    p.add_argument("scenario", choices=["rtt", "stream", "fanout", "connect", "idle"])
    p.add_argument("--client", choices=["raw", "websockets"], default="raw")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--idle", type=int, default=0)
    p.add_argument("--deltas", type=int, default=50)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--total", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--hold", type=float, default=60.0)
    p.add_argument("--max-ops", type=int, default=10_000_000)
    p.add_argument("--server-pid", type=int, default=None)
    args = p.parse_args(argv)
    check_loopback(args.url)
    raise_nofile_limit()
    result = asyncio.run(run(args))
    _emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
