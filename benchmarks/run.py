"""Run every benchmark scenario against trio_channel and three other servers.

Usage::

    python benchmarks/run.py [--quick] [--reps N] [--only KEY ...]
        [--nanobot-python PYTHON] [--node NODE] [--servers NAME ...]
        [--output FILE]

For each scenario and each repetition, every server is started fresh as a
subprocess on a free loopback port (the order alternates between
repetitions), the load generator (``benchmarks/node/loadgen.mjs``, one Node
process on the ``ws`` client, the same load for every server) runs in its
own process against it, and the server is stopped. The median over the
repetitions is reported per server, with the ratio trio_channel / nanobot
and the target it must meet, and trio_channel / websockets (the stretch
goal: 1.0 or better on every row). A table goes to stdout and everything
(every run's raw figures, CPU use of server, load generator and the rest of
the machine) to ``benchmarks/results/latest.json``.

Servers:

- ``trio_channel``: ``python -m trio_channel serve --port 0
  --no-require-token --data-dir TMP --log-level warning --rate-limit 0
  --max-connections 20000 --agent agents:bench_agent``, run from this tree
  (``PYTHONPATH`` starts with the repository, or ``--trio-channel-path``,
  then ``benchmarks/`` for the agent), with its default session store
  (SQLite in the data dir).
- ``nanobot``: ``benchmarks/nanobot_server.py`` under the Python that has
  nanobot-ai installed (``--nanobot-python``, or ``$BENCH_NANOBOT_PYTHON``;
  ``nox -s bench`` makes that venv). Without one, its column says so.
- ``websockets``: ``benchmarks/bare_websockets_server.py``.
- ``trio-websocket``: ``benchmarks/bare_server.py``.

The durability rows run trio_channel alone with ``--session-store memory``,
the default store and ``--sqlite-synchronous full``, and report the last two
as ratios to the first; flags the daemon does not have (``serve --help``)
are shown as "not available yet". ``--only chats_rss`` runs the chat
metadata memory scenario instead (``chats_rss.py``). The two-node rows
(``two_nodes.py``: two daemons over one Redis against one over SQLite) run
in a full run and with ``--only two_nodes``.

Every child inherits this process's raised RLIMIT_NOFILE; only loopback is
used; every subprocess has a timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import queue
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NODE_DIR = HERE / "node"
NODE_LOADGEN = NODE_DIR / "loadgen.mjs"
PY_LOADGEN = HERE / "loadgen.py"
BARE_SERVER = HERE / "bare_server.py"
WEBSOCKETS_SERVER = HERE / "bare_websockets_server.py"
NANOBOT_SERVER = HERE / "nanobot_server.py"
DEFAULT_OUTPUT = HERE / "results" / "latest.json"
BENCH_AGENT = "agents:bench_agent"

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
HELP_TIMEOUT_S = 60.0
#: Upper bound for one load generator run, whatever the scenario.
LOADGEN_TIMEOUT_S = 180.0
#: Pause after the idle connections are open before reading RSS.
RSS_SETTLE_S = 0.5
#: A load generator above this share of a core may have been the bottleneck.
CLIENT_SATURATED = 0.9

_URL_RE = re.compile(r"ws://\S+")
_SECRET_ENV = ("TRIO_CHANNEL_TOKEN", "TRIO_CHANNEL_TOKEN_ISSUE_SECRET")

TRIO_CHANNEL = "trio_channel"
NANOBOT = "nanobot"
WEBSOCKETS = "websockets"
BARE = "trio-websocket"
SERVERS = (TRIO_CHANNEL, NANOBOT, WEBSOCKETS, BARE)


# --- tools and features ------------------------------------------------------------


@dataclass
class Tools:
    """The interpreters the servers and the load generator run under."""

    python: str = sys.executable
    nanobot_python: str | None = None
    node: str = "node"
    #: The directory whose ``trio_channel/`` package the daemon runs.
    trio_channel_path: Path = REPO

    @classmethod
    def default(cls) -> Tools:
        return cls(nanobot_python=os.environ.get("BENCH_NANOBOT_PYTHON") or None)


@dataclass
class Features:
    """What ``trio_channel serve --help`` offers in this tree."""

    session_store: bool = False
    sqlite_synchronous: bool = False
    help_error: str | None = None


def detect_features(tools: Tools) -> Features:
    """Read ``serve --help`` (the daemon is a black box: no imports)."""
    try:
        proc = subprocess.run(
            [tools.python, "-m", "trio_channel", "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=HELP_TIMEOUT_S,
            cwd=tempfile.gettempdir(),
            env=child_env(TRIO_CHANNEL, tools=tools),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Features(help_error=repr(exc))
    if proc.returncode != 0:
        return Features(help_error=proc.stderr.strip()[-500:])
    return Features(
        session_store="--session-store" in proc.stdout,
        sqlite_synchronous="--sqlite-synchronous" in proc.stdout,
    )


# --- scenarios -----------------------------------------------------------------


@dataclass
class Scenario:
    key: str
    label: str
    #: load generator arguments after URL (the scenario name first).
    args: list[str]
    unit: str
    #: trio_channel / nanobot must be >= target (<= when lower_is_better).
    target: float | None = None
    lower_is_better: bool = False


@dataclass
class Variant:
    """One trio_channel configuration of a durability row."""

    name: str
    flags: list[str]
    missing: str | None = None


@dataclass
class DurabilityScenario:
    key: str
    label: str
    args: list[str]
    unit: str
    variants: list[Variant] = field(default_factory=list)


def _counts(quick: bool) -> dict[str, Any]:
    return {
        "dur": ["--duration", "0.6", "--warmup", "0.2"]
        if quick
        else ["--duration", "2.5", "--warmup", "0.5"],
        "idle_pre": "100" if quick else "500",
        "fan": ("20", "2") if quick else ("50", "10"),
        "connects": "200" if quick else "1000",
        "idle_total": "300" if quick else "2000",
    }


def scenarios(quick: bool) -> list[Scenario]:
    """The comparison rows; ``--quick`` leaves out the two rows without target."""
    c = _counts(quick)
    dur, (fan_subs, fan_reps) = c["dur"], c["fan"]
    connect = ["connect", "--total", c["connects"], "--concurrency", "50"]
    rows = [
        Scenario("rtt_1", "round trips/s, 1 client", ["rtt", *dur], "rt/s", 5.5),
        Scenario(
            "rtt_20",
            "round trips/s, 20 clients",
            ["rtt", "--clients", "20", *dur],
            "rt/s",
            10.0,
        ),
        Scenario(
            "rtt_1_idle",
            f"round trips/s, 1 client + {c['idle_pre']} idle",
            ["rtt", "--idle", c["idle_pre"], *dur],
            "rt/s",
        ),
        Scenario(
            "stream_1",
            "stream:50 frames/s, 1 client",
            ["stream", "--deltas", "50", *dur],
            "frames/s",
        ),
        Scenario(
            "stream_10",
            "stream:50 frames/s, 10 clients",
            ["stream", "--deltas", "50", "--clients", "10", *dur],
            "frames/s",
            15.0,
        ),
        Scenario(
            "fanout",
            f"fan-out stream:200 to {fan_subs} subscribers, frames/s",
            ["fanout", "--clients", fan_subs, "--deltas", "200", "--reps", fan_reps],
            "frames/s",
            2.0,
        ),
        # The raw client: the ws client's handshake (Node's HTTP client) costs
        # the load generator three times the CPU and saturated it here.
        Scenario(
            "connects",
            f"connects/s ({c['connects']}, 50 in flight)",
            [*connect, "--client", "raw"],
            "conn/s",
            1.0,
        ),
        Scenario(
            "connects_ws",
            f"connects/s ({c['connects']}, 50 in flight), ws client",
            connect,
            "conn/s",
        ),
        Scenario(
            "idle_rss",
            f"server RSS per idle connection ({c['idle_total']})",
            ["idle", "--total", c["idle_total"]],
            "KiB/conn",
            0.5,
            lower_is_better=True,
        ),
    ]
    if quick:
        rows = [r for r in rows if r.target is not None]
    return rows


def durability_scenarios(quick: bool, features: Features) -> list[DurabilityScenario]:
    dur = _counts(quick)["dur"]
    missing = "not available yet"
    variants = [
        Variant(
            "memory",
            ["--session-store", "memory"],
            None if features.session_store else f"{missing} (no --session-store)",
        ),
        Variant("sqlite", []),
        Variant(
            "sqlite, synchronous=full",
            ["--sqlite-synchronous", "full"],
            None
            if features.sqlite_synchronous
            else f"{missing} (no --sqlite-synchronous)",
        ),
    ]
    return [
        DurabilityScenario(
            "store_rtt_1", "round trips/s, 1 client", ["rtt", *dur], "rt/s", variants
        ),
        DurabilityScenario(
            "store_stream_10",
            "stream:50 frames/s, 10 clients",
            ["stream", "--deltas", "50", "--clients", "10", *dur],
            "frames/s",
            variants,
        ),
    ]


# --- servers -------------------------------------------------------------------


def child_env(
    kind: str = "", home: str | None = None, tools: Tools | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    if kind == TRIO_CHANNEL:
        # The tree under test first (whatever the venv has installed), then
        # benchmarks/ for the benchmark agent (agents.py).
        tree = str((tools or Tools.default()).trio_channel_path)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (tree, str(HERE), env.get("PYTHONPATH", "")) if p
        )
    if kind == NANOBOT:
        env.pop("PYTHONPATH", None)
        if home:
            env["HOME"] = home
    return env


def raise_nofile_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def server_command(
    kind: str, data_dir: str, flags: Sequence[str], tools: Tools
) -> list[str]:
    """The server's command line: the interpreter first, then its arguments."""
    if kind == BARE:
        return [tools.python, str(BARE_SERVER), "--port", "0"]
    if kind == WEBSOCKETS:
        return [tools.python, str(WEBSOCKETS_SERVER), "--port", "0"]
    if kind == NANOBOT:
        if not tools.nanobot_python:
            raise Unavailable("no Python with nanobot-ai (--nanobot-python)")
        return [
            tools.nanobot_python,
            str(NANOBOT_SERVER),
            "--port",
            "0",
            "--data-dir",
            data_dir,
        ]
    return [
        tools.python,
        "-m",
        "trio_channel",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-require-token",
        "--data-dir",
        data_dir,
        "--log-level",
        "warning",
        "--rate-limit",
        "0",
        "--max-connections",
        "20000",
        "--agent",
        BENCH_AGENT,
        *flags,
    ]


class Unavailable(RuntimeError):
    """A server that cannot run here (not installed, flag missing)."""


def _listening(port: int) -> bool:
    """Whether a socket listens on ``port`` (``/proc/net/tcp`` and ``tcp6``)."""
    suffix = f":{port:04X}"
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[1].endswith(suffix) and fields[3] == "0A":
                        return True
        except (OSError, StopIteration):
            continue
    return False


class Server:
    """One server subprocess; stderr is drained by a thread.

    The URL is the first ``ws://`` URL on a stderr line that says
    ``listening``; then the port must be in LISTEN state (nanobot logs its
    URL before it binds).
    """

    def __init__(
        self,
        kind: str,
        flags: Sequence[str] = (),
        *,
        tools: Tools | None = None,
        wrapper: list[str] | None = None,
    ) -> None:
        """``wrapper`` is put before the server's arguments (after python)."""
        tools = tools or Tools.default()
        self.kind = kind
        self._tmp = tempfile.TemporaryDirectory(prefix="tc-bench-")
        self.data_dir = Path(self._tmp.name) / "data"
        try:
            command = server_command(kind, str(self.data_dir), flags, tools)
        except Unavailable:
            self._tmp.cleanup()
            raise
        if wrapper:
            command = [command[0], *wrapper, *command[1:]]
        self.command = command
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self._tmp.name,
            env=child_env(kind, home=self._tmp.name, tools=tools),
        )
        self.lines: list[str] = []
        self._urls: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        url = None
        with contextlib.suppress(queue.Empty):
            url = self._urls.get(timeout=START_TIMEOUT_S)
        port = _port_of(url) if url else None
        while port is not None and not _listening(port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                port = None
                break
            time.sleep(0.05)
        if url is None or port is None:
            self.stop()
            tail = "".join(self.lines[-20:])
            raise RuntimeError(f"{kind} server did not start:\n{tail}")
        self.url = url

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        found = False
        for line in self.proc.stderr:
            self.lines.append(line)
            if len(self.lines) > 2000:
                del self.lines[:1000]
            if not found and "listening" in line:
                match = _URL_RE.search(line)
                if match:
                    found = True
                    self._urls.put(match.group(0))
        self._urls.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        try:
            import psutil
        except ImportError:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
            raise RuntimeError("no VmRSS") from None
        return int(psutil.Process(self.pid).memory_info().rss // 1024)

    def data_bytes(self) -> int:
        total = 0
        for path in self.data_dir.rglob("*"):
            with contextlib.suppress(OSError):
                if path.is_file():
                    total += path.stat().st_size
        return total

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        """Stop the server; return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._tmp.cleanup()
        return self.proc.returncode

    def log_tail(self, n: int = 20) -> str:
        return "".join(self.lines[-n:])


def _port_of(url: str) -> int | None:
    match = re.match(r"ws://(?:\[[^\]]*\]|[^/:]+):(\d+)", url)
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def running(
    kind: str,
    flags: Sequence[str] = (),
    *,
    tools: Tools | None = None,
    wrapper: list[str] | None = None,
) -> Iterator[Server]:
    server = Server(kind, flags, tools=tools, wrapper=wrapper)
    try:
        yield server
    finally:
        server.stop()


# --- running the load generator ---------------------------------------------------


def loadgen_command(
    server: Server,
    args: Sequence[str],
    client: str = "node",
    tools: Tools | None = None,
) -> list[str]:
    """``node`` (the default): loadgen.mjs; ``raw``/``websockets``: loadgen.py."""
    tools = tools or Tools.default()
    if client == "node":
        return [
            tools.node,
            str(NODE_LOADGEN),
            server.url,
            *args,
            "--server-pid",
            str(server.pid),
        ]
    return [
        tools.python,
        str(PY_LOADGEN),
        server.url,
        *args,
        "--client",
        client,
        "--server-pid",
        str(server.pid),
    ]


def check_node(tools: Tools) -> str:
    """The Node version; exit with a clear message when ws is missing."""
    if not (NODE_DIR / "node_modules" / "ws" / "package.json").exists():
        raise SystemExit(
            f"{NODE_DIR}/node_modules is missing: run `npm ci` there "
            "(nox -s bench does)"
        )
    try:
        out = subprocess.run(
            [tools.node, "--version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SystemExit(f"cannot run {tools.node}: {exc}") from None
    return out.stdout.strip()


def run_loadgen(server: Server, args: Sequence[str], tools: Tools) -> dict[str, Any]:
    proc = subprocess.run(
        loadgen_command(server, args, tools=tools),
        capture_output=True,
        text=True,
        timeout=LOADGEN_TIMEOUT_S,
        env=child_env(),
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"loadgen {args[0]} against {server.kind} failed "
            f"({proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


class PhasedLoadgen:
    """A load generator that stops at phases for this process to measure."""

    def __init__(
        self, server: Server, args: Sequence[str], tools: Tools, timeout_s: float
    ) -> None:
        self.proc = subprocess.Popen(
            loadgen_command(server, args, tools=tools),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        self.deadline = time.monotonic() + timeout_s
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def phase(self, name: str) -> dict[str, Any]:
        """The next line of phase ``name`` (lines of other phases are skipped)."""
        while True:
            left = self.deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(0.1, left))
            except queue.Empty:
                line = None
            if line is None:
                raise RuntimeError(f"loadgen never reached {name!r}: {self.stderr()}")
            obj = json.loads(line)
            if obj.get("phase") == name:
                return dict(obj)

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> dict[str, Any]:
        """Wait for the result line."""
        self.proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        if self.proc.returncode != 0:
            raise RuntimeError(f"loadgen failed: {self.stderr()}")
        last = None
        while True:
            try:
                line = self._lines.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            last = line
        if last is None:
            raise RuntimeError("loadgen printed no result")
        return dict(json.loads(last))

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_idle_rss(server: Server, args: Sequence[str], tools: Tools) -> dict[str, Any]:
    """Open idle connections in the load generator; read the server's RSS."""
    load = PhasedLoadgen(server, args, tools, LOADGEN_TIMEOUT_S)
    try:
        load.phase("baseline")
        time.sleep(RSS_SETTLE_S)
        before = server.rss_kib()
        load.go()
        holding = load.phase("holding")
        time.sleep(RSS_SETTLE_S)
        after = server.rss_kib()
        load.go()
        result = load.finish()
    finally:
        load.kill()
    count = holding["connections"]
    result.update(
        rss_before_kib=before,
        rss_after_kib=after,
        value=round((after - before) / count, 2),
        unit="KiB/conn",
    )
    return result


def measure(
    kind: str, args: Sequence[str], flags: Sequence[str], tools: Tools
) -> dict[str, Any]:
    """One fresh server, one load generator run; failures become results."""
    try:
        server = Server(kind, flags, tools=tools)
    except Unavailable as exc:
        return {"unavailable": str(exc)}
    except (RuntimeError, OSError) as exc:
        return {"failed": str(exc)[-3000:]}
    try:
        if args[0] == "idle":
            result = run_idle_rss(server, args, tools)
        else:
            result = run_loadgen(server, args, tools)
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
        result = {"failed": str(exc)[-3000:]}
    alive = server.alive()
    tail = server.log_tail(40)
    status = server.stop()
    result["server_alive_after"] = alive
    result["server_exit_status"] = status
    if not alive:
        result.setdefault("failed", f"{kind} server died during the run:\n{tail}")
    if kind == TRIO_CHANNEL:
        noisy = [
            line.rstrip()
            for line in tail.splitlines()
            if re.search(r"\b(ERROR|CRITICAL|Traceback|WARNING)\b", line)
        ]
        if noisy:
            result["server_log_warnings"] = noisy[-10:]
    return result


# --- other load on the machine -------------------------------------------------------


def machine_busy_cores(interval_s: float = 0.5) -> float:
    """Cores busy over ``interval_s`` (all processes, steal included)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields[:8]) - fields[3] - fields[4], os.sysconf("SC_CLK_TCK")

    try:
        a, tick = sample()
        time.sleep(interval_s)
        b, _ = sample()
    except (OSError, ValueError):
        return 0.0
    return (b - a) / tick / interval_s


def fsync_ms(directory: str | None = None, count: int = 5) -> float | None:
    """Median latency of ``count`` small appends + ``fsync`` in ``directory``.

    nanobot ``fsync``s its WebUI transcript after every event, so its rates
    follow the disk's ``fsync`` latency, which on a shared VM moved between
    about 0.7 and 4 ms within an hour; every run records it.
    """
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix="fsync-") as f:
            times = []
            for _ in range(count):
                t0 = time.perf_counter()
                f.write(b"x" * 100 + b"\n")
                f.flush()
                os.fsync(f.fileno())
                times.append(time.perf_counter() - t0)
    except OSError:
        return None
    return round(statistics.median(times) * 1000, 2)


class QuietWait:
    """Before each measurement, wait (bounded) for other work on the box to calm.

    Other people's test runs share the two cores; a measurement taken while
    they run says little. Waits at most ``max_wait_s`` per measurement and
    ``budget_s`` in total, so the run stays bounded; what was seen is kept.
    """

    def __init__(self, threshold: float, max_wait_s: float, budget_s: float) -> None:
        self.threshold = threshold
        self.max_wait_s = max_wait_s
        self.budget_s = budget_s
        self.waited_s = 0.0

    def wait(self) -> float | None:
        if self.max_wait_s <= 0:
            return None
        started = time.monotonic()
        busy = machine_busy_cores()
        while busy > self.threshold:
            spent = time.monotonic() - started
            if spent >= self.max_wait_s or self.waited_s + spent >= self.budget_s:
                break
            time.sleep(0.5)
            busy = machine_busy_cores()
        self.waited_s += time.monotonic() - started
        return round(busy, 2)


@dataclass
class Retry:
    """Measure again when other work used more than ``threshold`` cores.

    The quiet wait only looks before a measurement; other people's test runs
    often start during one. Such a measurement is repeated (a fresh server)
    up to ``per_measurement`` times and ``budget`` times per run; the attempt
    with the least other load is kept, the others are in its ``discarded``.
    """

    threshold: float
    per_measurement: int
    budget: int
    used: int = 0


def measure_quietly(
    kind: str,
    args: Sequence[str],
    flags: Sequence[str],
    tools: Tools,
    quiet: QuietWait,
    retry: Retry,
) -> dict[str, Any]:
    attempts: list[dict[str, Any]] = []
    while True:
        busy = quiet.wait()
        fsync = fsync_ms()
        result = measure(kind, args, flags, tools)
        result.update(busy_cores_before=busy, fsync_ms_before=fsync)
        attempts.append(result)
        other = result.get("other_cpu_util")
        if (
            other is None
            or other <= retry.threshold
            or len(attempts) > retry.per_measurement
            or retry.used >= retry.budget
        ):
            break
        retry.used += 1
    best = min(
        attempts,
        key=lambda r: (r.get("other_cpu_util") is None, r.get("other_cpu_util") or 0),
    )
    if len(attempts) > 1:
        discarded = [r for r in attempts if r is not best]
        best = {**best, "discarded": discarded}
    return best


# --- report ------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and the rest for one server (or variant) of one row."""
    ok = [r for r in runs if "value" in r and "failed" not in r]
    out: dict[str, Any] = {"runs": runs}
    unavailable = [r["unavailable"] for r in runs if "unavailable" in r]
    failed = [r["failed"] for r in runs if "failed" in r]
    if unavailable:
        out["unavailable"] = unavailable[0]
    if failed:
        out["failed"] = failed
    if not ok:
        return out
    values = [r["value"] for r in ok]
    per_op = [
        r["server_cpu_s"] * 1e6 / r["count"]
        for r in ok
        if r.get("server_cpu_s") and r.get("count")
    ]
    out.update(
        median=statistics.median(values),
        values=values,
        server_cpu_us_per_op=round(statistics.median(per_op), 2) if per_op else None,
        busy_cores_before=_median(ok, "busy_cores_before"),
        fsync_ms_before=_median(ok, "fsync_ms_before"),
        server_cpu_util=_median(ok, "server_cpu_util"),
        client_cpu_util=_median(ok, "client_cpu_util"),
        other_cpu_util=_median(ok, "other_cpu_util"),
        errors=sum(len(r.get("errors") or []) for r in ok),
        error_samples=[e for r in ok for e in (r.get("errors") or [])][:5],
        other_frames=ok[-1].get("other_frames"),
    )
    return out


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    if a.get("median") is None or not b.get("median"):
        return None
    return round(a["median"] / b["median"], 3)


def summarize(scenario: Scenario, runs: dict[str, list[dict[str, Any]]]) -> Any:
    row: dict[str, Any] = {
        "key": scenario.key,
        "label": scenario.label,
        "unit": scenario.unit,
        "target": scenario.target,
        "lower_is_better": scenario.lower_is_better,
        "loadgen_args": scenario.args,
        "servers": {kind: summarize_runs(r) for kind, r in runs.items()},
    }
    servers = row["servers"]
    tc = servers.get(TRIO_CHANNEL, {})
    for other, name in ((NANOBOT, "ratio"), (WEBSOCKETS, "ratio_websockets")):
        if other in servers:
            row[name] = _ratio(tc, servers[other])
    ratio = row.get("ratio")
    if ratio is not None and scenario.target is not None:
        row["met"] = (
            ratio <= scenario.target
            if scenario.lower_is_better
            else ratio >= scenario.target
        )
    stretch = row.get("ratio_websockets")
    if stretch is not None:
        row["stretch_met"] = stretch <= 1 if scenario.lower_is_better else stretch >= 1
    return row


def summarize_durability(
    scenario: DurabilityScenario, runs: dict[str, list[dict[str, Any]]]
) -> Any:
    variants = {v.name: summarize_runs(runs[v.name]) for v in scenario.variants}
    for v in scenario.variants:
        if v.missing:
            variants[v.name]["unavailable"] = v.missing
    base = variants[scenario.variants[0].name]
    return {
        "key": scenario.key,
        "label": scenario.label,
        "unit": scenario.unit,
        "loadgen_args": scenario.args,
        "variants": variants,
        "ratios_to_memory": {
            name: _ratio(s, base) for name, s in variants.items() if s is not base
        },
    }


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _cell(summary: dict[str, Any], unit: str) -> str:
    if summary.get("unavailable"):
        return "n/a"
    if summary.get("median") is None:
        return "FAILED"
    text = f"{_fmt(summary['median'])} {unit}"
    if (summary.get("client_cpu_util") or 0) > CLIENT_SATURATED:
        text += " *"
    if summary.get("failed") or summary.get("errors"):
        text += " !"
    return text


def _ratio_cell(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}"


def table(
    rows: list[dict[str, Any]], servers: Sequence[str], markdown: bool = False
) -> str:
    head = (
        "scenario",
        *servers,
        "tc/nanobot",
        "target",
        "met?",
        "tc/websockets",
    )
    lines: list[Sequence[str]] = [head]
    for row in rows:
        op = "<=" if row["lower_is_better"] else ">="
        target = f"{op} {row['target']}" if row["target"] is not None else ""
        met = row.get("met")
        lines.append(
            (
                row["label"],
                *(_cell(row["servers"][k], row["unit"]) for k in servers),
                _ratio_cell(row.get("ratio")),
                target,
                "" if met is None else ("yes" if met else "NO"),
                _ratio_cell(row.get("ratio_websockets")),
            )
        )
    return render_table(lines, markdown)


def render_table(lines: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """Left-aligned columns, a rule under the first (header) line.

    ``markdown``: a pipe table, for ``results/latest.md`` and the docs.
    """
    if markdown:
        rows = [
            "| " + " | ".join(c.replace("|", "/") for c in line) + " |"
            for line in lines
        ]
        rows.insert(1, "|" + "---|" * len(lines[0]))
        return "\n".join(rows)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for n, line in enumerate(lines):
        out.append(
            " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
        )
        if n == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)


def cpu_table(
    rows: list[dict[str, Any]], servers: Sequence[str], markdown: bool = False
) -> str:
    head = (
        "scenario",
        *(f"{k} us/op" for k in servers),
        "nanobot/tc",
        "websockets/tc",
        "loadgen (cores)",
        "other (cores)",
        "fsync ms",
    )
    lines: list[Sequence[str]] = [head]

    def us(summary: dict[str, Any]) -> str:
        v = summary.get("server_cpu_us_per_op")
        return "" if v is None else f"{v:.1f}"

    def per_op_ratio(row: dict[str, Any], other: str) -> str:
        tc = row["servers"].get(TRIO_CHANNEL, {}).get("server_cpu_us_per_op")
        ot = row["servers"].get(other, {}).get("server_cpu_us_per_op")
        return f"{ot / tc:.2f}" if tc and ot else ""

    for row in rows:
        if row["key"] == "idle_rss":
            continue
        summaries = [row["servers"][k] for k in servers]
        client = [s["client_cpu_util"] for s in summaries if s.get("client_cpu_util")]
        other = [s["other_cpu_util"] for s in summaries if s.get("other_cpu_util")]
        fsync = [
            r["fsync_ms_before"]
            for s in summaries
            for r in s.get("runs", [])
            if r.get("fsync_ms_before") is not None
        ]
        lines.append(
            (
                row["key"],
                *(us(s) for s in summaries),
                per_op_ratio(row, NANOBOT),
                per_op_ratio(row, WEBSOCKETS),
                f"{max(client):.2f}" if client else "",
                f"{max(other):.2f}" if other else "0",
                f"{statistics.median(fsync):.2f}" if fsync else "",
            )
        )
    return render_table(lines, markdown)


def durability_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    if not rows:
        return ""
    names = list(rows[0]["variants"])
    head = (
        "trio_channel",
        *names,
        *(f"{n} / memory" for n in names[1:]),
        *(f"{n} us/op" for n in names),
    )
    lines: list[Sequence[str]] = [head]
    for row in rows:
        variants = row["variants"]
        cells = []
        for n in names:
            s = variants[n]
            cells.append(
                s["unavailable"] if s.get("unavailable") else _cell(s, row["unit"])
            )
        ratios = [_ratio_cell(row["ratios_to_memory"].get(n)) for n in names[1:]]
        per_op = [
            f"{variants[n]['server_cpu_us_per_op']:.1f}"
            if variants[n].get("server_cpu_us_per_op")
            else ""
            for n in names
        ]
        lines.append((row["label"], *cells, *ratios, *per_op))
    return render_table(lines, markdown)


def notes(rows: list[dict[str, Any]]) -> list[str]:
    """Footnotes: failures, protocol errors, saturated load generator."""
    out = []
    for row in rows:
        groups = row.get("servers") or row.get("variants") or {}
        for kind, s in groups.items():
            for failure in s.get("failed") or []:
                first = failure.strip().splitlines()
                out.append(
                    f"! {row['key']} / {kind}: failed: "
                    f"{' | '.join(first[-3:]) if first else '?'}"
                )
            if s.get("errors"):
                out.append(
                    f"! {row['key']} / {kind}: {s['errors']} protocol errors, e.g. "
                    f"{s['error_samples'][:2]}"
                )
            if (s.get("client_cpu_util") or 0) > CLIENT_SATURATED:
                out.append(
                    f"* {row['key']} / {kind}: the load generator used "
                    f"{s['client_cpu_util']:.2f} cores: the figure is a floor"
                )
            warnings = [
                w for r in s.get("runs", []) for w in r.get("server_log_warnings", [])
            ]
            if warnings:
                out.append(f"? {row['key']} / {kind}: server logged: {warnings[:3]}")
    return out


def machine(tools: Tools, node_version: str) -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    nanobot_versions: dict[str, str] | None = None
    if tools.nanobot_python:
        code = (
            "import json, importlib.metadata as m, platform; print(json.dumps("
            "{n: m.version(n) for n in ('nanobot-ai', 'websockets')}"
            " | {'python': platform.python_version()}))"
        )
        with contextlib.suppress(OSError, subprocess.TimeoutExpired, ValueError):
            out = subprocess.run(
                [tools.nanobot_python, "-c", code],
                capture_output=True,
                text=True,
                timeout=60,
            )
            nanobot_versions = json.loads(out.stdout)
    ws_version = None
    with contextlib.suppress(OSError, ValueError):
        ws_version = json.loads(
            (NODE_DIR / "node_modules" / "ws" / "package.json").read_text()
        )["version"]

    return {
        "git_head": git("rev-parse", "HEAD"),
        "git_dirty_paths": (
            git("status", "--porcelain", "--", "trio_channel") or ""
        ).splitlines(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        ),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "node": node_version,
        "ws": ws_version,
        "nanobot_venv": nanobot_versions,
        "versions": {
            name: version(name)
            for name in (
                "trio-channel",
                "trio",
                "trio-websocket",
                "wsproto",
                "msgspec",
                "websockets",
            )
        },
    }


# --- main ---------------------------------------------------------------------------


def report_text(
    rows: list[dict[str, Any]],
    store: list[dict[str, Any]],
    chats: dict[str, Any] | None,
    servers: Sequence[str],
    markdown: bool,
    nodes: dict[str, Any] | None = None,
) -> str:
    """Every table of the run, with its captions and footnotes."""
    parts = []
    if rows:
        parts.append(table(rows, servers, markdown))
        parts.append(
            "\nServer CPU per operation (round trip, frame, connect), medians; less"
            " sensitive to\nother work on the machine than the rates above:\n"
        )
        parts.append(cpu_table(rows, servers, markdown))
    if store:
        parts.append(
            "\nDurability: trio_channel's session stores, ratios to the memory store"
            " in this run:\n"
        )
        parts.append(durability_table(store, markdown))
    if chats:
        import chats_rss

        parts.append(
            "\nChat metadata: server RSS while chats are created (sqlite store):\n"
        )
        parts.append(chats_rss.table(chats, markdown))
    if nodes:
        import two_nodes

        parts.append(
            "\nSeveral daemons: two nodes over one Redis against one over SQLite"
            " (two_nodes.py):\n"
        )
        parts.append(two_nodes.table(nodes, markdown))
    footnotes = notes(rows + store)
    if footnotes:
        parts.append("\n" + "\n".join(footnotes))
    return "\n".join(parts)


def _progress(key: str, rep: int, reps: int, name: str, result: dict[str, Any]) -> None:
    if "value" in result and "failed" not in result:
        shown = _fmt(result["value"])
        if result.get("errors"):
            shown += f" ({len(result['errors'])} errors)"
    elif "unavailable" in result:
        shown = "n/a: " + result["unavailable"]
    else:
        shown = "FAILED: " + result.get("failed", "?").strip().splitlines()[-1][:120]
    if result.get("discarded"):
        shown += f" (the quietest of {len(result['discarded']) + 1} attempts)"
    print(
        f"  {key:<16} rep {rep + 1}/{reps} {name:<26} {shown}",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small counts, one repetition")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    p.add_argument(
        "--only", nargs="*", default=None, metavar="KEY", help="scenario keys"
    )
    p.add_argument(
        "--servers",
        nargs="*",
        default=list(SERVERS),
        choices=SERVERS,
        help="servers to run (default: all four)",
    )
    p.add_argument(
        "--nanobot-python",
        default=os.environ.get("BENCH_NANOBOT_PYTHON") or None,
        help="Python with nanobot-ai installed (default $BENCH_NANOBOT_PYTHON)",
    )
    p.add_argument("--node", default="node", help="the Node binary")
    p.add_argument(
        "--trio-channel-path",
        type=Path,
        default=REPO,
        metavar="DIR",
        help="run the trio_channel/ package in DIR (default: this tree), e.g. a "
        "scratch copy with a fix to measure",
    )
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="print the tables of an earlier run's JSON as Markdown, and exit",
    )
    p.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.3,
        metavar="CORES",
        help="before each measurement, wait while more cores than this are busy",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        metavar="S",
        help="longest wait for a quiet machine per measurement (0 = never wait)",
    )
    p.add_argument(
        "--quiet-budget",
        type=float,
        default=120.0,
        metavar="S",
        help="longest total wait for a quiet machine over the whole run",
    )
    p.add_argument(
        "--retry-busy",
        type=float,
        default=0.3,
        metavar="CORES",
        help="measure again when other work used more than this during a window",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="at most N repeats per measurement (and 60 per run); 0 = never",
    )
    args = p.parse_args(argv)
    if args.render:
        old = json.loads(args.render.read_text())
        print(
            report_text(
                old["scenarios"],
                old.get("durability") or [],
                old.get("chats_rss"),
                old["servers"],
                markdown=True,
                nodes=old.get("two_nodes"),
            )
        )
        return 0
    if args.nanobot_python and os.sep in args.nanobot_python:
        args.nanobot_python = os.path.abspath(args.nanobot_python)
    tools = Tools(
        nanobot_python=args.nanobot_python,
        node=args.node,
        trio_channel_path=args.trio_channel_path.resolve(),
    )
    reps = args.reps or (1 if args.quick else 3)
    raise_nofile_limit()
    node_version = check_node(tools)
    features = detect_features(tools)
    if features.help_error:
        print(
            f"trio_channel serve --help failed: {features.help_error}", file=sys.stderr
        )
    quiet = QuietWait(args.quiet_threshold, args.quiet_wait, args.quiet_budget)
    retry = Retry(args.retry_busy, args.retries, 60 if args.retries else 0)

    main_rows = scenarios(args.quick)
    store_rows = durability_scenarios(args.quick, features)
    known = [s.key for s in scenarios(False)] + [s.key for s in store_rows]
    known += ["chats_rss", "two_nodes"]
    if args.only:
        unknown = [k for k in args.only if k not in known]
        if unknown:
            p.error(f"unknown scenario {unknown}; known: {', '.join(known)}")
        main_rows = [s for s in scenarios(False) if s.key in args.only]
        if args.quick:
            quick_rows = {s.key: s for s in scenarios(True)}
            main_rows = [quick_rows.get(s.key, s) for s in main_rows]
        store_rows = [s for s in store_rows if s.key in args.only]
    servers = [k for k in SERVERS if k in args.servers]

    started = time.monotonic()
    report: dict[str, Any] = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "reps": reps,
        "client": "node-ws",
        "servers": servers,
        "trio_channel_path": str(tools.trio_channel_path),
        "features": features.__dict__,
        "machine": machine(tools, node_version),
    }
    rows = []
    for scenario in main_rows:
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in servers}
        for rep in range(reps):
            order = servers if rep % 2 == 0 else servers[::-1]
            for kind in order:
                result = measure_quietly(kind, scenario.args, [], tools, quiet, retry)
                runs[kind].append(result)
                _progress(scenario.key, rep, reps, kind, result)
        rows.append(summarize(scenario, runs))
    store = []
    for ds in store_rows:
        vruns: dict[str, list[dict[str, Any]]] = {v.name: [] for v in ds.variants}
        for rep in range(reps):
            order = ds.variants if rep % 2 == 0 else ds.variants[::-1]
            for variant in order:
                if variant.missing:
                    continue
                result = measure_quietly(
                    TRIO_CHANNEL, ds.args, variant.flags, tools, quiet, retry
                )
                vruns[variant.name].append(result)
                _progress(ds.key, rep, reps, variant.name, result)
        store.append(summarize_durability(ds, vruns))
    nodes = None
    if not args.only or "two_nodes" in args.only:
        import two_nodes

        nodes = two_nodes.measure_all(tools, quick=args.quick, reps=reps)
    chats = None
    if args.only and "chats_rss" in args.only:
        import chats_rss

        chats = chats_rss.measure_all(tools, quick=args.quick, quiet=quiet)

    elapsed = time.monotonic() - started
    report.update(
        elapsed_s=round(elapsed, 1),
        quiet_wait_total_s=round(quiet.waited_s, 1),
        busy_retries=retry.used,
        scenarios=rows,
        durability=store,
        chats_rss=chats,
        two_nodes=nodes,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    for markdown in (False, True):
        text = report_text(rows, store, chats, servers, markdown, nodes)
        if markdown:
            md = args.output.with_suffix(".md")
            md.write_text(text + "\n")
        else:
            print(text)
    reps_text = f"{reps} repetition(s), " if rows or store else ""
    print(
        f"\n{len(rows) + len(store) + (1 if chats else 0) + (1 if nodes else 0)}"
        " scenarios, "
        f"{reps_text}{elapsed:.0f} s; details in {args.output} "
        f"(tables also in {args.output.with_suffix('.md')})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
