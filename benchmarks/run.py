"""Run every benchmark scenario against trio_channel and the bare baseline.

Usage::

    python benchmarks/run.py [--quick] [--reps N] [--only KEY ...]
                             [--client raw|websockets] [--output FILE]

For each scenario and each repetition, both servers are started fresh as
subprocesses on a free loopback port (the order alternates between
repetitions), the load generator (``benchmarks/loadgen.py``) runs in its own
process against each, and the servers are stopped. The median over the
repetitions is reported per server, with the ratio trio_channel / bare and
the target it must meet. A table goes to stdout and everything (every run's
raw figures, CPU use of server, load generator and the rest of the machine)
to ``benchmarks/results/latest.json``.

Servers:

- trio_channel: ``python -m trio_channel serve --port 0 --no-require-token
  --data-dir TMP --log-level warning --rate-limit 0 --max-connections 20000``
  (built-in echo agent). ``warning`` keeps the per-connection access lines
  (INFO) out of the measurement; the ``listening on URL`` line we parse is
  written at any level.
- bare: ``python benchmarks/bare_server.py --port 0`` (see that file).

Every child inherits this process's raised RLIMIT_NOFILE, and both the load
generator and the bare server raise theirs again. Only loopback is used.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
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
LOADGEN = HERE / "loadgen.py"
BARE_SERVER = HERE / "bare_server.py"
DEFAULT_OUTPUT = HERE / "results" / "latest.json"

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
#: Upper bound for one load generator run, whatever the scenario.
LOADGEN_TIMEOUT_S = 180.0
#: Pause after the idle connections are open before reading RSS.
RSS_SETTLE_S = 0.5

_LISTENING_RE = re.compile(r"listening on (ws://\S+)")
_SECRET_ENV = ("TRIO_CHANNEL_TOKEN", "TRIO_CHANNEL_TOKEN_ISSUE_SECRET")

TRIO_CHANNEL = "trio_channel"
BARE = "bare"
SERVERS = (TRIO_CHANNEL, BARE)


# --- scenarios -----------------------------------------------------------------


@dataclass
class Scenario:
    key: str
    label: str
    #: loadgen arguments after URL (the scenario name first).
    args: list[str]
    unit: str
    #: trio_channel / bare must be >= target (or <= when lower_is_better).
    target: float
    lower_is_better: bool = False
    #: extra ``serve`` flags for trio_channel in this scenario.
    tc_flags: list[str] = field(default_factory=list)
    #: set when the scenario cannot run yet: the reason shown in the table.
    unavailable: str | None = None


def scenarios(quick: bool, store: StoreSupport) -> list[Scenario]:
    dur = ["--duration", "0.6", "--warmup", "0.2"] if quick else ["--duration", "2.5"]
    idle_pre = "100" if quick else "500"
    fan_subs, fan_reps = ("20", "2") if quick else ("50", "10")
    connects = "200" if quick else "1000"
    idle_total = "300" if quick else "2000"
    rows = [
        Scenario("rtt_1", "round trips/s, 1 client", ["rtt", *dur], "rt/s", 0.8),
        Scenario(
            "rtt_20",
            "round trips/s, 20 clients",
            ["rtt", "--clients", "20", *dur],
            "rt/s",
            0.8,
        ),
        Scenario(
            "rtt_1_idle",
            f"round trips/s, 1 client + {idle_pre} idle",
            ["rtt", "--idle", idle_pre, *dur],
            "rt/s",
            0.8,
        ),
        Scenario(
            "stream_1",
            "stream:50 frames/s, 1 client",
            ["stream", "--deltas", "50", *dur],
            "frames/s",
            0.8,
        ),
        Scenario(
            "stream_10",
            "stream:50 frames/s, 10 clients",
            ["stream", "--deltas", "50", "--clients", "10", *dur],
            "frames/s",
            0.8,
        ),
        Scenario(
            "fanout",
            f"fan-out stream:200 to {fan_subs} subscribers, frames/s",
            ["fanout", "--clients", fan_subs, "--deltas", "200", "--reps", fan_reps],
            "frames/s",
            3.0,
        ),
        Scenario(
            "connects",
            f"connects/s ({connects}, 50 in flight)",
            ["connect", "--total", connects, "--concurrency", "50"],
            "conn/s",
            1.35,
        ),
        Scenario(
            "idle_rss",
            f"server RSS per idle connection ({idle_total})",
            ["idle", "--total", idle_total],
            "KiB/conn",
            1.2,
            lower_is_better=True,
        ),
    ]
    store_row = Scenario(
        "rtt_1_store",
        "round trips/s, 1 client, session store on",
        ["rtt", *dur],
        "rt/s",
        0.75,
        tc_flags=store.on_flags,
        unavailable=store.missing,
    )
    rows.append(store_row)
    return rows


@dataclass
class StoreSupport:
    """How to turn the session store on and off, if it exists yet."""

    on_flags: list[str] = field(default_factory=list)
    off_flags: list[str] = field(default_factory=list)
    missing: str | None = None


def detect_store() -> StoreSupport:
    """Find out how to switch the session store on and off in this tree.

    - ``--session-store sqlite|memory`` (the store as it landed): the store
      row runs with ``sqlite`` (a file in the data dir, the default), every
      other row with ``memory`` (SQLite ``:memory:``: the same code path
      without a file, the lightest setting there is; there is no "off").
    - a ``--no-...store...`` switch: the store row runs without it, the other
      rows with it.
    - no ``trio_channel/store.py``: the store row is "not available yet".
    """
    if importlib.util.find_spec("trio_channel.store.sqlite") is None:
        return StoreSupport(missing="not available yet (no trio_channel/store.py)")
    from trio_channel.flags import FLAG_FOR_FIELD

    for field_name, flag in FLAG_FOR_FIELD.items():
        if "store" not in field_name:
            continue
        if flag.startswith("--no-"):
            return StoreSupport(on_flags=[], off_flags=[flag])
        if field_name == "session_store":
            return StoreSupport(on_flags=[flag, "sqlite"], off_flags=[flag, "memory"])
    return StoreSupport()


# --- servers -------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def raise_nofile_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def server_command(kind: str, data_dir: str, flags: list[str]) -> list[str]:
    if kind == BARE:
        return [sys.executable, str(BARE_SERVER), "--port", "0"]
    return [
        sys.executable,
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
        *flags,
    ]


class Server:
    """One server subprocess; stderr is drained by a thread."""

    def __init__(
        self, kind: str, flags: list[str], *, wrapper: list[str] | None = None
    ) -> None:
        """``wrapper`` is put before the server's arguments (after python)."""
        self.kind = kind
        self._tmp = tempfile.TemporaryDirectory(prefix="tc-bench-")
        command = server_command(kind, str(Path(self._tmp.name) / "data"), flags)
        if wrapper:
            command = [command[0], *wrapper, *command[1:]]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        self.lines: list[str] = []
        self._urls: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        try:
            url = self._urls.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            url = None
        if url is None:
            self.stop()
            tail = "".join(self.lines[-20:])
            raise RuntimeError(f"{kind} server did not start:\n{tail}")
        self.url = url

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = _LISTENING_RE.search(line)
            if match:
                self._urls.put(match.group(1))
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

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._tmp.cleanup()


@contextlib.contextmanager
def running(
    kind: str, flags: list[str], *, wrapper: list[str] | None = None
) -> Iterator[Server]:
    server = Server(kind, flags, wrapper=wrapper)
    try:
        yield server
    finally:
        server.stop()


# --- running the load generator ---------------------------------------------------


def loadgen_command(server: Server, args: list[str], client: str) -> list[str]:
    return [
        sys.executable,
        str(LOADGEN),
        server.url,
        *args,
        "--client",
        client,
        "--server-pid",
        str(server.pid),
    ]


def run_loadgen(server: Server, args: list[str], client: str) -> dict[str, Any]:
    proc = subprocess.run(
        loadgen_command(server, args, client),
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


def run_idle_rss(server: Server, args: list[str], client: str) -> dict[str, Any]:
    """Open idle connections in the load generator; read the server's RSS."""
    proc = subprocess.Popen(
        loadgen_command(server, args, client),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert proc.stdin is not None and proc.stdout is not None
    deadline = time.monotonic() + LOADGEN_TIMEOUT_S
    try:

        def phase(name: str) -> dict[str, Any]:
            assert proc.stdout is not None
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                obj = json.loads(line)
                if obj.get("phase") == name:
                    return dict(obj)
            raise RuntimeError(f"loadgen never reached {name!r}")

        phase("baseline")
        time.sleep(RSS_SETTLE_S)
        before = server.rss_kib()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        holding = phase("holding")
        time.sleep(RSS_SETTLE_S)
        after = server.rss_kib()
        proc.stdin.write("close\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen idle failed:\n{err[-3000:]}")
    result = dict(json.loads(out.strip().splitlines()[-1]))
    count = holding["connections"]
    result.update(
        rss_before_kib=before,
        rss_after_kib=after,
        value=round((after - before) / count, 2),
        unit="KiB/conn",
    )
    return result


def measure(scenario: Scenario, kind: str, client: str, store: StoreSupport) -> Any:
    flags = []
    if kind == TRIO_CHANNEL:
        flags = scenario.tc_flags if scenario.key == "rtt_1_store" else store.off_flags
    with running(kind, flags) as server:
        if scenario.args[0] == "idle":
            return run_idle_rss(server, scenario.args, client)
        return run_loadgen(server, scenario.args, client)


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

    def wait(self) -> float:
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


# --- report ------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def summarize(scenario: Scenario, runs: dict[str, list[dict[str, Any]]]) -> Any:
    row: dict[str, Any] = {
        "key": scenario.key,
        "label": scenario.label,
        "unit": scenario.unit,
        "target": scenario.target,
        "lower_is_better": scenario.lower_is_better,
        "loadgen_args": scenario.args,
    }
    if scenario.unavailable:
        row.update(available=False, note=scenario.unavailable)
        return row
    medians = {}
    for kind in SERVERS:
        values = [r["value"] for r in runs[kind]]
        med = statistics.median(values)
        medians[kind] = med
        per_op = [
            r["server_cpu_s"] * 1e6 / r["count"]
            for r in runs[kind]
            if r.get("server_cpu_s") and r.get("count")
        ]
        row[kind] = {
            "median": med,
            "values": values,
            "server_cpu_us_per_op": round(statistics.median(per_op), 2)
            if per_op
            else None,
            "busy_cores_before": _median(runs[kind], "busy_cores_before"),
            "server_cpu_util": _median(runs[kind], "server_cpu_util"),
            "client_cpu_util": _median(runs[kind], "client_cpu_util"),
            "other_cpu_util": _median(runs[kind], "other_cpu_util"),
            "runs": runs[kind],
        }
    ratio = medians[TRIO_CHANNEL] / medians[BARE] if medians[BARE] else float("inf")
    met = (
        ratio <= scenario.target
        if scenario.lower_is_better
        else ratio >= scenario.target
    )
    row.update(available=True, ratio=round(ratio, 3), met=met)
    tc_op = row[TRIO_CHANNEL]["server_cpu_us_per_op"]
    bare_op = row[BARE]["server_cpu_us_per_op"]
    if tc_op and bare_op:
        row["cpu_efficiency_ratio"] = round(bare_op / tc_op, 3)
    return row


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "scenario",
        "trio_channel",
        "bare trio-websocket",
        "ratio",
        "target",
        "met?",
    )
    lines = [head]
    for row in rows:
        op = "<=" if row["lower_is_better"] else ">="
        target = f"{op} {row['target']}"
        if not row["available"]:
            lines.append((row["label"], row["note"], "", "", target, "n/a"))
            continue
        unit = row["unit"]
        lines.append(
            (
                row["label"],
                f"{_fmt(row[TRIO_CHANNEL]['median'])} {unit}",
                f"{_fmt(row[BARE]['median'])} {unit}",
                f"{row['ratio']:.2f}",
                target,
                "yes" if row["met"] else "NO",
            )
        )
    return render_table(lines)


def render_table(lines: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, a rule under the first (header) line."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for n, line in enumerate(lines):
        out.append(
            " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
        )
        if n == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)


def cpu_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "scenario",
        "trio_channel us/op",
        "bare us/op",
        "bare/tc",
        "other load (cores)",
    )
    lines = [head]
    for row in rows:
        if not row["available"] or "cpu_efficiency_ratio" not in row:
            continue
        tc, bare = row[TRIO_CHANNEL], row[BARE]
        other = [
            r.get("other_cpu_util")
            for kind in SERVERS
            for r in row[kind]["runs"]
            if r.get("other_cpu_util") is not None
        ]
        lines.append(
            (
                row["key"],
                f"{tc['server_cpu_us_per_op']:.1f}",
                f"{bare['server_cpu_us_per_op']:.1f}",
                f"{row['cpu_efficiency_ratio']:.2f}",
                f"{statistics.median(other):.2f}" if other else "",
            )
        )
    return render_table(lines)


def machine() -> dict[str, Any]:
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
                ["git", *args], cwd=HERE.parent, capture_output=True, text=True
            )
        except OSError:
            return None
        return out.stdout.strip() if out.returncode == 0 else None

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small counts, one repetition")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    p.add_argument(
        "--only", nargs="*", default=None, metavar="KEY", help="scenario keys"
    )
    p.add_argument("--client", choices=["raw", "websockets"], default="raw")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
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
        default=90.0,
        metavar="S",
        help="longest total wait for a quiet machine over the whole run",
    )
    args = p.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    raise_nofile_limit()
    store = detect_store()
    chosen = [
        s for s in scenarios(args.quick, store) if not args.only or s.key in args.only
    ]
    quiet = QuietWait(args.quiet_threshold, args.quiet_wait, args.quiet_budget)
    started = time.monotonic()
    rows = []
    for scenario in chosen:
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in SERVERS}
        if not scenario.unavailable:
            for rep in range(reps):
                order = SERVERS if rep % 2 == 0 else SERVERS[::-1]
                for kind in order:
                    busy = quiet.wait() if args.quiet_wait > 0 else None
                    result = measure(scenario, kind, args.client, store)
                    result["busy_cores_before"] = busy
                    runs[kind].append(result)
                    print(
                        f"  {scenario.key:<12} rep {rep + 1}/{reps} {kind:<12} "
                        f"{_fmt(result['value'])} {scenario.unit}",
                        file=sys.stderr,
                        flush=True,
                    )
        rows.append(summarize(scenario, runs))
    elapsed = time.monotonic() - started
    report = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 1),
        "quick": args.quick,
        "reps": reps,
        "client": args.client,
        "quiet_wait_total_s": round(quiet.waited_s, 1),
        "machine": machine(),
        "scenarios": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    print(
        "\nServer CPU per operation (round trip, frame, connect), medians; less"
        " sensitive to\nother work on the machine than the rates above:\n"
    )
    print(cpu_table(rows))
    print(
        f"\n{len(chosen)} scenarios, {reps} repetition(s), {elapsed:.0f} s; "
        f"details in {args.output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
