"""Where a server's memory per idle connection goes (tracemalloc, in-process).

Usage::

    python benchmarks/profile_memory.py [--server NAME]
        [--connections 2000] [--top 25]

The server runs as a subprocess under ``tracemalloc`` (this file is the
wrapper: it installs a SIGUSR1 handler that writes a snapshot, then runs the
server's own entry point). The load generator's ``idle`` scenario opens the
connections; a snapshot is taken before and after, and the difference is
printed per connection: by source line, by file, and the count of objects
per type (``gc``) that each connection adds. RSS before/after is printed too,
so the share tracemalloc sees (Python allocations) can be compared with it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import json
import os
import pickle
import runpy
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

FRAMES = 8


def child(snapdir: str, argv: list[str]) -> None:
    """Run a server entry point with tracemalloc; SIGUSR1 writes a snapshot."""
    tracemalloc.start(FRAMES)
    counter = [0]

    def dump(signum: int, frame: Any) -> None:
        counter[0] += 1
        gc.collect()
        types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        snap = tracemalloc.take_snapshot()
        path = Path(snapdir) / f"{counter[0]}.pickle"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pickle.dump({"snapshot": snap, "types": types}, f)
        tmp.rename(path)

    signal.signal(signal.SIGUSR1, dump)
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        with contextlib.suppress(SystemExit):
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")


def take(server_pid: int, snapdir: Path, n: int) -> dict[str, Any]:
    os.kill(server_pid, signal.SIGUSR1)
    path = snapdir / f"{n}.pickle"
    deadline = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("no snapshot from the server")
        time.sleep(0.1)
    with open(path, "rb") as f:
        return dict(pickle.load(f))


def short(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child(argv[1], argv[3:])  # --child DIR -- ARGS...
        return 0
    import run

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", choices=run.SERVERS, default=run.TRIO_CHANNEL)
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--top", type=int, default=25)
    p.add_argument(
        "--nanobot-python",
        default=run.Tools.default().nanobot_python,
        help="Python with nanobot-ai (for --server nanobot)",
    )
    args = p.parse_args(argv)
    run.raise_nofile_limit()
    tools = run.Tools(nanobot_python=args.nanobot_python)
    out_dir = run.HERE / "results" / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    snapdir = out_dir / f"mem-{args.server}"
    snapdir.mkdir(exist_ok=True)
    for old in snapdir.glob("*.pickle"):
        old.unlink()
    wrapper = [str(Path(__file__).resolve()), "--child", str(snapdir), "--"]
    n = args.connections
    with run.running(args.server, tools=tools, wrapper=wrapper) as server:
        load = subprocess.Popen(
            run.loadgen_command(server, ["idle", "--total", str(n)], tools=tools),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=run.child_env(),
        )
        assert load.stdin is not None and load.stdout is not None
        try:
            assert json.loads(load.stdout.readline())["phase"] == "baseline"
            time.sleep(run.RSS_SETTLE_S)
            rss0 = server.rss_kib()
            before = take(server.pid, snapdir, 1)
            load.stdin.write("go\n")
            load.stdin.flush()
            assert json.loads(load.stdout.readline())["phase"] == "holding"
            time.sleep(run.RSS_SETTLE_S)
            rss1 = server.rss_kib()
            after = take(server.pid, snapdir, 2)
            load.stdin.write("close\n")
            load.stdin.flush()
            load.communicate(timeout=120)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
    snap0, snap1 = before["snapshot"], after["snapshot"]
    traced = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    print(f"# {args.server}: {n} idle connections")
    print(
        f"RSS: {rss0} -> {rss1} KiB, {(rss1 - rss0) / n:.1f} KiB per connection "
        f"(under tracemalloc, which adds its own overhead)"
    )
    print(f"tracemalloc: {traced / n / 1024:.1f} KiB of Python allocations per conn\n")
    print("by file (bytes per connection):")
    for stat in snap1.compare_to(snap0, "filename")[: args.top]:
        if stat.size_diff <= 0:
            continue
        frame = stat.traceback[0]
        print(f"  {stat.size_diff / n:8.0f}  {short(frame.filename)}")
    print("\nby line (bytes per connection, allocations per connection):")
    for stat in snap1.compare_to(snap0, "lineno")[: args.top]:
        if stat.size_diff <= 0:
            continue
        frame = stat.traceback[0]
        print(
            f"  {stat.size_diff / n:8.0f}  {stat.count_diff / n:5.1f}  "
            f"{short(frame.filename)}:{frame.lineno}"
        )
    t0, t1 = before["types"], after["types"]
    print("\ngc-tracked objects added per connection, by type:")
    diffs = sorted(((t1[k] - t0.get(k, 0)) / n, k) for k in t1)
    for per, name in reversed(diffs[-args.top :]):
        if per > 0.01:
            print(f"  {per:6.2f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
