"""Profile a server under one benchmark scenario with py-spy; summarize as text.

Usage::

    python benchmarks/profile_server.py SCENARIO [--server NAME]
        [--seconds 4] [--rate 250] [--top 20] [--out benchmarks/results/profiles]
        [--client node|raw|websockets]

``SCENARIO`` is a key from ``run.py`` (``rtt_1``, ``stream_10``, ``fanout``,
``connects``, ...). The server is started like ``run.py`` does, the load
generator runs a longer version of the scenario, and after a short warm-up
``py-spy record --pid ... --format raw`` samples the server for ``--seconds``.
The raw (collapsed) stacks are written to ``OUT/SERVER-SCENARIO.txt`` and
summarized on stdout: where samples land by package, the top functions by
self time and by inclusive time, and the load generator's own figures (so
the throughput under the profiler is on record too; py-spy pauses the
server to sample, so it is lower than in ``run.py``).

py-spy must be installed (``pip install py-spy``) and allowed to ptrace the
server (root, or ``kernel.yama.ptrace_scope`` 0).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import run

_FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")

#: Where a self-time sample lands, by the file of its innermost frame.
PACKAGES = [
    ("trio_channel", "trio_channel/"),
    ("trio_websocket", "trio_websocket/"),
    ("wsproto", "wsproto/"),
    ("h11", "h11/"),
    ("trio (scheduler, sockets)", "trio/"),
    ("outcome/sniffio/attrs", "outcome/"),
    ("sqlite3", "sqlite3"),
    ("threading/queue", "threading.py"),
    ("socket (stdlib)", "socket.py"),
    ("json/uuid/re (stdlib)", "json/"),
]


def package_of(file: str) -> str:
    for name, needle in PACKAGES:
        if needle in file:
            return name
    if "uuid.py" in file or "re/" in file:
        return "json/uuid/re (stdlib)"
    return "other"


def parse_frame(frame: str) -> tuple[str, str]:
    match = _FRAME_RE.match(frame)
    if not match:
        return frame, ""
    return match.group("func"), match.group("file")


def summarize(raw: str, top: int) -> str:
    self_by_func: collections.Counter[str] = collections.Counter()
    incl_by_func: collections.Counter[str] = collections.Counter()
    by_package: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [parse_frame(f) for f in stack.split(";")]
        func, file = frames[-1]
        self_by_func[f"{func} ({file})"] += count
        by_package[package_of(file)] += count
        seen = set()
        for func, file in frames:
            key = f"{func} ({file})"
            if key not in seen:
                seen.add(key)
                incl_by_func[key] += count
    if not total:
        return "no samples"
    out = [f"{total} samples (active CPU only; idle waits are not sampled)", ""]
    out.append("self time by package:")
    for name, count in by_package.most_common():
        out.append(f"  {100 * count / total:5.1f}%  {name}")
    out.append("")
    out.append(f"top {top} functions by self time:")
    for key, count in self_by_func.most_common(top):
        out.append(f"  {100 * count / total:5.1f}%  {key}")
    out.append("")
    out.append(f"top {top} functions by inclusive time (entry points excluded):")
    skip = ("<module>", "_run_module_as_main", "_run_code", "main (", "run (")
    shown = 0
    for key, count in incl_by_func.most_common():
        if key.startswith(skip) or "unrolled_run" in key:
            continue
        out.append(f"  {100 * count / total:5.1f}%  {key}")
        shown += 1
        if shown >= top:
            break
    return "\n".join(out)


def longer(args: list[str], seconds: float) -> list[str]:
    """The scenario's load generator arguments, stretched to cover the profile."""
    args = list(args)
    kind = args[0]

    def set_opt(name: str, value: str) -> None:
        if name in args:
            args[args.index(name) + 1] = value
        else:
            args.extend([name, value])

    if kind in ("rtt", "stream"):
        set_opt("--duration", str(seconds + 3))
        set_opt("--warmup", "0.5")
    elif kind == "fanout":
        set_opt("--reps", "400")
        set_opt("--duration", str(seconds + 2))
    elif kind == "connect":
        set_opt("--total", str(int(600 * (seconds + 2))))
    return args


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenario")
    p.add_argument("--server", choices=run.SERVERS, default=run.TRIO_CHANNEL)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rate", type=int, default=250)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--out", type=Path, default=run.HERE / "results" / "profiles")
    p.add_argument(
        "--client",
        choices=["node", "raw", "websockets"],
        default="node",
        help="node: the benchmark's load generator; raw/websockets: loadgen.py",
    )
    p.add_argument(
        "--server-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help=(
            "an extra flag for the server (repeat),"
            " e.g. --server-flag=--session-store=memory"
        ),
    )
    p.add_argument(
        "--nanobot-python",
        default=run.Tools.default().nanobot_python,
        help="Python with nanobot-ai (for --server nanobot)",
    )
    args = p.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    run.raise_nofile_limit()
    tools = run.Tools(nanobot_python=args.nanobot_python)
    known = {s.key: s for s in run.scenarios(False)}
    if args.scenario not in known:
        raise SystemExit(f"unknown scenario; pick one of {', '.join(known)}")
    scenario = known[args.scenario]
    if scenario.args[0] == "idle":
        raise SystemExit("that scenario cannot be profiled this way")
    args.out.mkdir(parents=True, exist_ok=True)
    raw_path = args.out / f"{args.server}-{scenario.key}.txt"
    with run.running(args.server, args.server_flag, tools=tools) as server:
        load = subprocess.Popen(
            run.loadgen_command(
                server, longer(scenario.args, args.seconds), args.client, tools
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=run.child_env(),
        )
        try:
            time.sleep(1.0)
            subprocess.run(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(server.pid),
                    "--duration",
                    str(int(args.seconds)),
                    "--rate",
                    str(args.rate),
                    "--format",
                    "raw",
                    "--output",
                    str(raw_path),
                ],
                check=True,
                capture_output=True,
                timeout=args.seconds + 30,
            )
            out, err = load.communicate(timeout=args.seconds + 120)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
    print(f"# {args.server} under {scenario.key} ({scenario.label})")
    if out.strip():
        result = json.loads(out.strip().splitlines()[-1])
        figures = {
            k: result.get(k)
            for k in ("value", "unit", "server_cpu_util", "client_cpu_util")
        }
        print(f"load generator under the profiler: {figures}")
    if load.returncode:
        print(f"load generator failed: {err[-2000:]}")
    print(f"raw stacks: {raw_path}\n")
    print(summarize(raw_path.read_text(), args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
