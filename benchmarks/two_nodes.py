"""Two daemons over one Redis against one daemon over SQLite, in the same run.

Usage::

    python benchmarks/two_nodes.py [--quick] [--reps N]

or ``python benchmarks/run.py --only two_nodes`` (``nox -s bench -- --only
two_nodes``); a full ``nox -s bench`` runs it too. Each repetition starts
fresh servers for both set-ups, in alternating order:

- ``sqlite, 1 node``: one ``trio-channel serve`` with its default store;
- ``redis, 2 nodes``: a ``redis-server`` of its own (``appendonly yes``,
  ``appendfsync everysec``, the usual setting, docs/scaling.md) and two
  daemons with ``--session-store redis://...`` and a shared media dir.

Both run the benchmark agent (``agents:bench_agent``). The client is one
Python process on the ``websockets`` asyncio client (not the Node load
generator, which knows one URL); its CPU is reported beside each figure.
Rows:

- round trips/s: ``message`` until the agent's ``message`` comes back, one
  client, then 20 (on two nodes, half of them on each);
- streams/s: 10 clients (half on each node) send ``stream:50`` (50
  deltas, then ``stream_end``) and wait for ``turn_end``, again and again;
  then 20 clients send ``stream:50@5``, the same 50 deltas 5 ms apart, a
  model's pace (200 tokens/s), where what joins is what the
  ``redis_delta_window_s`` gathers (``--delta-window 0`` measures without);
- fan-out: a ``stream:200`` sent on node A to 20 subscribers on node B
  (on one node, all on it): deltas delivered per second, counted as 200
  per stream per subscriber once all have its ``turn_end`` (over Redis the
  deltas arrive joined, ``redis_delta_window_s``: fewer, longer frames);
- delivery latency: 200 messages one after the other from a client on node
  A; a subscriber on node B (one node: on the same node) gets each reply.
  p50/p99 of send -> the subscriber's copy of the reply, and of how far
  apart the two copies arrive: the agent that answers runs on whichever
  node owns the chat's partition, and the other node's copy comes through
  its feed (on one node, two subscribers of one daemon).

Beside them: the daemons' CPU per round trip (one client, 20 clients) and
per streaming turn, and what Redis spent: the commands it ran (``INFO
commandstats``, which counts the commands inside our Lua scripts too) and
the CPU of its main thread (``INFO cpu``), per message turn from the
latency row (one message at a time), per round trip at 20 clients and per
streaming turn.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import run

SINGLE = "sqlite, 1 node"
TWO = "redis, 2 nodes"
SETUPS = (SINGLE, TWO)
LEASE = ("--redis-lease-ttl", "3")
#: Leases settle (each node owns its share) before a measurement starts.
SETTLE_S = 3.0
#: Streaming turns: this many clients (half on each node) send this.
STREAM_CLIENTS = 10
STREAM = "stream:50"
#: And at a model's pace: 50 deltas 5 ms apart (200 tokens/s), from this
#: many clients at once.
PACED = "stream:50@5"
PACED_CLIENTS = 20
FANOUT_SUBSCRIBERS = 20
FANOUT_DELTAS = 200
LATENCY_MESSAGES = 200
RECV_TIMEOUT_S = 30.0


# --- servers -------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server of our own on a free loopback port; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise run.Unavailable("redis-server not installed (Debian: redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="tc-bench-redis-") as directory:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                directory,
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + run.START_TIMEOUT_S
            while True:
                with contextlib.suppress(OSError):
                    if _command(port, "PING").startswith(b"+PONG"):
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)


def _command(port: int, *words: str) -> bytes:
    """One command over a raw socket (RESP); the whole answer."""
    request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(request.encode())
        sock.settimeout(0.2)
        answer = b""
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


#: What the daemons send Redis, nearly all of it: scripts (their own
#: commands are timed inside them, and listed apart too), the feeds' and
#: the inboxes' blocking reads.
SENT = ("evalsha", "xread", "xreadgroup")


@dataclasses.dataclass(frozen=True)
class RedisStats:
    """Redis's counters so far, from one ``INFO cpu commandstats``."""

    #: Commands run (those inside our Lua scripts too).
    commands: int = 0
    #: CPU seconds of the main thread.
    cpu_s: float = 0.0
    #: Microseconds in the feeds' ``XREAD`` and in all of :data:`SENT`.
    feed_usec: int = 0
    sent_usec: int = 0

    def __sub__(self, before: RedisStats) -> RedisStats:
        return RedisStats(
            self.commands - before.commands,
            self.cpu_s - before.cpu_s,
            self.feed_usec - before.feed_usec,
            self.sent_usec - before.sent_usec,
        )


def redis_stats(port: int | None) -> RedisStats:
    if port is None:
        return RedisStats()
    info = _command(port, "INFO", "cpu", "commandstats").decode()
    cpu = dict(re.findall(r"(used_cpu_\w+):([\d.]+)", info))
    thread = "_main_thread" if "used_cpu_user_main_thread" in cpu else ""
    usec = dict(re.findall(r"cmdstat_([^:]+):calls=\d+,usec=(\d+)", info))
    user, sys_ = cpu[f"used_cpu_user{thread}"], cpu[f"used_cpu_sys{thread}"]
    return RedisStats(
        commands=sum(int(n) for n in re.findall(r"calls=(\d+)", info)),
        cpu_s=float(user) + float(sys_),
        feed_usec=int(usec.get("xread", 0)),
        sent_usec=sum(int(usec.get(n, 0)) for n in SENT),
    )


@contextlib.contextmanager
def setup(
    name: str, tools: run.Tools
) -> Iterator[tuple[list[str], list[run.Server], int | None]]:
    """The set-up's node URLs (A first), its daemons and Redis's port."""
    if name == SINGLE:
        with run.running(run.TRIO_CHANNEL, tools=tools) as server:
            yield [server.url, server.url], [server], None
        return
    with redis_server() as url, tempfile.TemporaryDirectory() as media:
        # Short leases: the nodes settle on eight partitions each within
        # two renewals (a second each) instead of the default seven seconds.
        flags = ["--session-store", url, "--media-dir", media, *LEASE]
        with (
            run.running(run.TRIO_CHANNEL, flags, tools=tools) as a,
            run.running(run.TRIO_CHANNEL, flags, tools=tools) as b,
        ):
            time.sleep(SETTLE_S)
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            yield [a.url, b.url], [a, b], port


# --- the client ----------------------------------------------------------------------


async def _recv(ws: Any) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(
        await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S)
    )
    return frame


async def _ready(ws: Any) -> str:
    while True:
        frame = await _recv(ws)
        if frame.get("event") == "ready":
            return str(frame["chat_id"])


async def _until(ws: Any, event: str) -> dict[str, Any]:
    while True:
        frame = await _recv(ws)
        if frame.get("event") == event:
            return frame
        if frame.get("event") == "error":
            raise RuntimeError(f"the server said {frame}")


async def _attach(ws: Any, chat: str) -> None:
    await ws.send(json.dumps({"type": "attach", "chat_id": chat}))
    await _until(ws, "attached")


async def _connect(url: str, name: str) -> Any:
    import websockets

    return await websockets.connect(
        f"{url}?client_id={name}", max_size=None, compression=None
    )


async def round_trips(
    urls: list[str], clients: int, duration: float, content: str = "x"
) -> float:
    """Turns per second over ``clients`` clients spread over the nodes: each
    sends ``content`` and waits for the turn's end (with ``x``, the echo's
    ``message`` first), then sends again."""
    sockets = [await _connect(urls[i % 2], f"rt{i}") for i in range(clients)]
    chats = [await _ready(ws) for ws in sockets]
    counts = [0] * clients
    measuring = asyncio.Event()
    stop = asyncio.Event()

    async def loop(i: int) -> None:
        ws, chat = sockets[i], chats[i]
        while not stop.is_set():
            await ws.send(
                json.dumps({"type": "message", "chat_id": chat, "content": content})
            )
            if content == "x":
                await _until(ws, "message")
            await _until(ws, "turn_end")
            if measuring.is_set():
                counts[i] += 1

    tasks = [asyncio.create_task(loop(i)) for i in range(clients)]
    await asyncio.sleep(duration / 5)  # warm-up
    measuring.set()
    started = time.perf_counter()
    await asyncio.sleep(duration)
    measuring.clear()
    elapsed = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*tasks)
    for ws in sockets:
        await ws.close()
    return sum(counts) / elapsed


async def fan_out(urls: list[str], reps: int) -> float:
    """Deltas per second that subscribers on node B receive of A's streams.

    Counted as each stream's ``FANOUT_DELTAS`` deltas times the subscribers
    once every subscriber has the turn's end: with Redis, deltas arrive
    joined (fewer, longer frames), so frames would not compare.
    """
    sender = await _connect(urls[0], "sender")
    chat = await _ready(sender)
    subscribers = [
        await _connect(urls[1], f"sub{i}") for i in range(FANOUT_SUBSCRIBERS)
    ]
    for ws in subscribers:
        await _ready(ws)
        await _attach(ws, chat)
    elapsed = 0.0
    for _ in range(reps):
        started = time.perf_counter()
        await sender.send(
            json.dumps(
                {
                    "type": "message",
                    "chat_id": chat,
                    "content": f"stream:{FANOUT_DELTAS}",
                }
            )
        )

        await asyncio.gather(*(_until(ws, "turn_end") for ws in subscribers))
        elapsed += time.perf_counter() - started
        await _until(sender, "turn_end")
    for ws in (sender, *subscribers):
        await ws.close()
    return reps * FANOUT_DELTAS * FANOUT_SUBSCRIBERS / elapsed


async def latency(urls: list[str], messages: int) -> dict[str, float]:
    """p50/p99 (ms): send -> another node's subscriber has the reply, and the
    sender's copy -> the subscriber's."""
    sender = await _connect(urls[0], "sender")
    chat = await _ready(sender)
    subscriber = await _connect(urls[1], "subscriber")
    await _ready(subscriber)
    await _attach(subscriber, chat)
    delivered, apart = [], []
    for i in range(messages):
        text = f"m{i}"
        sent = time.perf_counter()
        await sender.send(
            json.dumps({"type": "message", "chat_id": chat, "content": text})
        )
        mine, theirs = await asyncio.gather(
            _reply(sender, text), _reply(subscriber, text)
        )
        delivered.append((theirs - sent) * 1000)
        # Whichever node's agent wrote it, the other node's copy comes later.
        apart.append(abs(theirs - mine) * 1000)
        await _until(sender, "turn_end")
    for ws in (sender, subscriber):
        await ws.close()
    return {
        "delivery_p50_ms": _percentile(delivered, 50),
        "delivery_p99_ms": _percentile(delivered, 99),
        "hop_p50_ms": _percentile(apart, 50),
        "hop_p99_ms": _percentile(apart, 99),
    }


async def _reply(ws: Any, text: str) -> float:
    """When the agent's ``message`` with ``text`` arrived."""
    while True:
        frame = await _until(ws, "message")
        if frame.get("text") == text:
            return time.perf_counter()


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))
    return ordered[index]


# --- one set-up, every row -----------------------------------------------------


def _cpu(servers: list[run.Server]) -> float:
    total = 0.0
    for server in servers:
        with open(f"/proc/{server.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(name: str, tools: run.Tools, quick: bool) -> dict[str, Any]:
    duration = 0.8 if quick else 2.5
    messages = 50 if quick else LATENCY_MESSAGES
    result: dict[str, Any] = {"latency_messages": messages}
    try:
        with setup(name, tools) as (urls, servers, redis_port):
            for key, work in (
                ("rtt_1", lambda: round_trips(urls, 1, duration)),
                ("rtt_20", lambda: round_trips(urls, 20, duration)),
                (
                    "streams",
                    lambda: round_trips(urls, STREAM_CLIENTS, duration, STREAM),
                ),
                ("paced", lambda: round_trips(urls, PACED_CLIENTS, duration, PACED)),
                ("fanout", lambda: fan_out(urls, 2 if quick else 5)),
                ("latency", lambda: latency(urls, messages)),
            ):
                client_before = resource.getrusage(resource.RUSAGE_SELF)
                server_before = _cpu(servers)
                redis_before = redis_stats(redis_port)
                started = time.perf_counter()
                value = asyncio.run(work())
                elapsed = time.perf_counter() - started
                redis = redis_stats(redis_port) - redis_before
                client_after = resource.getrusage(resource.RUSAGE_SELF)
                client_cpu = (
                    client_after.ru_utime
                    - client_before.ru_utime
                    + client_after.ru_stime
                    - client_before.ru_stime
                )
                result[key] = {
                    "value": value,
                    "client_cpu_util": round(client_cpu / elapsed, 2),
                    "server_cpu_util": round(
                        (_cpu(servers) - server_before) / elapsed, 2
                    ),
                    "redis_commands": redis.commands,
                    "redis_cpu_s": round(redis.cpu_s, 4),
                    "redis_cpu_util": round(redis.cpu_s / elapsed, 3),
                    "elapsed": round(elapsed, 3),
                    "redis_feed_share": round(redis.feed_usec / redis.sent_usec, 3)
                    if redis.sent_usec
                    else 0.0,
                }
            alive = all(s.alive() for s in servers)
            if not alive:
                result["failed"] = "a daemon died:\n" + "".join(
                    s.log_tail(20) for s in servers
                )
    except run.Unavailable as exc:
        return {"unavailable": str(exc)}
    except (RuntimeError, OSError, TimeoutError) as exc:
        result["failed"] = repr(exc)[-2000:]
    return result


def measure_all(tools: run.Tools, *, quick: bool, reps: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SETUPS}
    for rep in range(reps):
        for name in SETUPS if rep % 2 == 0 else SETUPS[::-1]:
            result = measure(name, tools, quick)
            runs[name].append(result)
            shown = result.get("unavailable") or result.get("failed") or "ok"
            print(
                f"  two_nodes rep {rep + 1}/{reps} {name:<16} {shown}", file=sys.stderr
            )
    return {"runs": runs, "summary": {name: _median(r) for name, r in runs.items()}}


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "failed" not in r and "unavailable" not in r]
    if not good:
        first = runs[0] if runs else {}
        return {"missing": first.get("unavailable") or first.get("failed") or "no run"}
    out: dict[str, Any] = {}
    for key in ("rtt_1", "rtt_20", "streams", "paced", "fanout"):
        out[key] = statistics.median(r[key]["value"] for r in good)
        out[f"{key}_client_cpu"] = max(r[key]["client_cpu_util"] for r in good)
    for stat in good[0]["latency"]["value"]:
        out[stat] = statistics.median(r["latency"]["value"][stat] for r in good)
    # What one message costs: server CPU per round trip (one client), and
    # Redis commands per message turn (the latency row's messages run alone).
    out["server_cpu_ms_per_rt"] = statistics.median(
        r["rtt_1"]["server_cpu_util"] / r["rtt_1"]["value"] * 1000 for r in good
    )
    out["server_cpu_ms_per_rt_20"] = statistics.median(
        r["rtt_20"]["server_cpu_util"] / r["rtt_20"]["value"] * 1000 for r in good
    )
    out["server_cpu_ms_per_stream"] = statistics.median(
        r["streams"]["server_cpu_util"] / r["streams"]["value"] * 1000 for r in good
    )
    out["redis_cpu_ms_per_stream"] = statistics.median(
        r["streams"]["redis_cpu_util"] / r["streams"]["value"] * 1000 for r in good
    )
    for row in ("streams", "paced"):
        out[f"redis_commands_per_{row}"] = statistics.median(
            r[row]["redis_commands"] / (r[row]["value"] * r[row]["elapsed"])
            for r in good
        )
    out["server_cpu_ms_per_paced"] = statistics.median(
        r["paced"]["server_cpu_util"] / r["paced"]["value"] * 1000 for r in good
    )
    out["redis_cpu_ms_per_paced"] = statistics.median(
        r["paced"]["redis_cpu_util"] / r["paced"]["value"] * 1000 for r in good
    )
    out["redis_commands_per_message"] = statistics.median(
        r["latency"]["redis_commands"] / r["latency_messages"] for r in good
    )
    # And under load: Redis CPU per round trip with 20 clients (the
    # pipelines batch), which is what sets how many nodes one Redis serves.
    out["redis_cpu_ms_per_rt_20"] = statistics.median(
        r["rtt_20"]["redis_cpu_util"] / r["rtt_20"]["value"] * 1000 for r in good
    )
    for row in ("latency", "rtt_20", "paced"):
        out[f"redis_feed_share_{row}"] = statistics.median(
            r[row]["redis_feed_share"] * 100 for r in good
        )
    out["redis_cpu_ms_per_message"] = statistics.median(
        r["latency"]["redis_cpu_s"] / r["latency_messages"] * 1000 for r in good
    )
    return out


ROWS = (
    ("rtt_1", "round trips/s, 1 client", "rate"),
    ("rtt_20", "round trips/s, 20 clients (half on each node)", "rate"),
    (
        "streams",
        f"{STREAM} turns/s, {STREAM_CLIENTS} clients (half on each node)",
        "rate",
    ),
    (
        "paced",
        f"{PACED} turns/s (5 ms apart), {PACED_CLIENTS} clients",
        "rate",
    ),
    (
        "fanout",
        f"fan-out stream:{FANOUT_DELTAS} to {FANOUT_SUBSCRIBERS} on node B, deltas/s",
        "rate",
    ),
    ("delivery_p50_ms", "send -> reply at B's subscriber, p50 ms", "ms"),
    ("delivery_p99_ms", "send -> reply at B's subscriber, p99 ms", "ms"),
    ("hop_p50_ms", "the two subscribers' copies apart, p50 ms", "ms"),
    ("hop_p99_ms", "the two subscribers' copies apart, p99 ms", "ms"),
    ("server_cpu_ms_per_rt", "server CPU per round trip (1 client), ms", "ms"),
    ("server_cpu_ms_per_rt_20", "server CPU per round trip (20 clients), ms", "ms"),
    ("server_cpu_ms_per_stream", f"server CPU per {STREAM} turn, ms", "ms"),
    ("server_cpu_ms_per_paced", f"server CPU per {PACED} turn, ms", "ms"),
    ("redis_commands_per_message", "Redis commands per turn (scripts' too)", "ms"),
    ("redis_cpu_ms_per_message", "Redis CPU per turn (main thread), ms", "ms"),
    ("redis_cpu_ms_per_rt_20", "Redis CPU per round trip, 20 clients, ms", "ms"),
    ("redis_cpu_ms_per_stream", f"Redis CPU per {STREAM} turn, ms", "ms"),
    ("redis_commands_per_streams", f"Redis commands per {STREAM} turn", "ms"),
    ("redis_cpu_ms_per_paced", f"Redis CPU per {PACED} turn, ms", "ms"),
    ("redis_commands_per_paced", f"Redis commands per {PACED} turn", "ms"),
    ("redis_feed_share_latency", "Redis time in feed reads, one at a time, %", "ms"),
    ("redis_feed_share_rtt_20", "Redis time in feed reads, 20 clients, %", "ms"),
    ("redis_feed_share_paced", f"Redis time in feed reads, {PACED}, %", "ms"),
)


def table(report: dict[str, Any], markdown: bool = False) -> str:
    single, two = (report["summary"][name] for name in SETUPS)
    lines = []
    if markdown:
        lines += [f"| figure | {SINGLE} | {TWO} | ratio |", "|---|---|---|---|"]
    else:
        lines.append(f"{'figure':<58} {SINGLE:>15} {TWO:>15} {'ratio':>7}")
    for key, label, kind in ROWS:
        cells = []
        for summary in (single, two):
            if "missing" in summary:
                cells.append("n/a")
            elif key.startswith("redis_") and summary is single:
                cells.append("—")  # no Redis
            else:
                value = summary[key]
                cell = f"{value:.2f}" if kind == "ms" else run._fmt(value)
                if summary.get(f"{key}_client_cpu", 0) > run.CLIENT_SATURATED:
                    cell += " (client-bound)"
                cells.append(cell)
        ratio = "—"
        if "missing" not in single and "missing" not in two and kind == "rate":
            ratio = f"{two[key] / single[key]:.2f}"
        if markdown:
            lines.append(f"| {label} | {cells[0]} | {cells[1]} | {ratio} |")
        else:
            lines.append(f"{label:<58} {cells[0]:>15} {cells[1]:>15} {ratio:>7}")
    if "missing" in two:
        lines.append(f"\n{TWO}: {two['missing'].strip().splitlines()[-1]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument(
        "--delta-window",
        type=float,
        default=None,
        metavar="SECONDS",
        help="the Redis daemons' --redis-delta-window (default: theirs)",
    )
    args = p.parse_args(argv)
    if args.delta_window is not None:
        global LEASE
        LEASE = (*LEASE, "--redis-delta-window", str(args.delta_window))
    run.raise_nofile_limit()
    report = measure_all(
        run.Tools.default(),
        quick=args.quick,
        reps=args.reps or (1 if args.quick else 3),
    )
    print(table(report))
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
