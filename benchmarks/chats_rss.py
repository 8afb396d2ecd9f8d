"""Chat metadata: does the daemon's memory stay bounded as chats pile up?

Usage::

    python benchmarks/chats_rss.py [--total 200000] [--step 50000]
        [--modes new_chat message] [--store-flags ...] [--quick]

or ``python benchmarks/run.py --only chats_rss`` (``nox -s bench -- --only
chats_rss``). trio_channel runs with its default session store (SQLite on
disk) and the benchmark agent; the load generator's ``chats`` scenario
creates ``--total`` chats through the protocol, in one of two ways (each in
a fresh daemon):

- ``new_chat``: a ``{"type":"new_chat"}`` frame per chat (the server mints
  the chat, replies ``attached`` and ``session_updated``);
- ``message``: a ``message`` to a fresh chat id per chat, which also runs
  one echo turn, so every chat has a history of five events.

Four connections at a time, 32 requests in flight on each, a new connection
every 1,000 chats: what the daemon holds afterwards is the chats, not
subscriptions. After every ``--step`` chats the load generator closes its
connections and waits; the server's RSS and the size of its data directory
are read (after a one-second pause for the store's batches), and it goes on.
The table shows RSS at 0, 50k, ... chats and the growth per chat between
checkpoints: flat growth per chat means memory grows with the number of
chats ever created, i.e. it is not bounded.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import run

SETTLE_S = 1.0
TIMEOUT_S = 1500.0
MODES = ("new_chat", "message")


def measure(
    tools: run.Tools,
    mode: str,
    total: int,
    step: int,
    flags: list[str],
) -> dict[str, Any]:
    """One fresh daemon; RSS and data-dir size at every checkpoint."""
    points: list[dict[str, Any]] = []
    args = [
        "chats",
        "--mode",
        mode,
        "--total",
        str(total),
        "--step",
        str(step),
        "--connections",
        "4",
        "--per-conn",
        "1000",
        "--window",
        "32",
        "--hold",
        "300",
        "--max-seconds",
        str(int(TIMEOUT_S)),
    ]
    started = time.monotonic()
    try:
        with run.running(run.TRIO_CHANNEL, flags, tools=tools) as server:
            load = run.PhasedLoadgen(server, args, tools, TIMEOUT_S)
            try:
                for _ in range(-(-total // step) + 1):
                    point = load.phase("checkpoint")
                    time.sleep(SETTLE_S)
                    if not server.alive():
                        raise RuntimeError(f"the daemon died:\n{server.log_tail(30)}")
                    point.update(
                        rss_kib=server.rss_kib(),
                        data_bytes=server.data_bytes(),
                        at_s=round(time.monotonic() - started, 1),
                    )
                    points.append(point)
                    print(
                        f"  chats_rss {mode:<9} {point['chats']:>7} chats: "
                        f"RSS {point['rss_kib'] / 1024:7.1f} MiB, data "
                        f"{point['data_bytes'] / 2**20:7.1f} MiB",
                        flush=True,
                        file=sys.stderr,
                    )
                    load.go()
                result = load.finish()
            finally:
                load.kill()
            warnings = [
                line.rstrip()
                for line in server.log_tail(200).splitlines()
                if "WARNING" in line or "ERROR" in line or "Traceback" in line
            ]
    except RuntimeError as exc:
        return {"mode": mode, "failed": str(exc)[-3000:], "points": points}
    return {
        "mode": mode,
        "flags": flags,
        "points": points,
        "result": result,
        "server_log_warnings": warnings[-10:],
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def measure_all(
    tools: run.Tools,
    *,
    quick: bool = False,
    quiet: run.QuietWait | None = None,
    total: int | None = None,
    step: int | None = None,
    modes: tuple[str, ...] = MODES,
    flags: list[str] | None = None,
) -> dict[str, Any]:
    total = total or (20_000 if quick else 200_000)
    step = step or (5_000 if quick else 50_000)
    out: dict[str, Any] = {"total": total, "step": step, "modes": {}}
    for mode in modes:
        if quiet is not None:
            quiet.wait()
        out["modes"][mode] = measure(tools, mode, total, step, flags or [])
    return out


def table(chats: dict[str, Any], markdown: bool = False) -> str:
    modes = chats["modes"]
    head: list[str] = ["chats"]
    for mode in modes:
        head += [f"{mode}: RSS MiB", "KiB/chat since last", "data MiB", "chats/s"]
    lines: list[list[str]] = [head]
    depth = max(len(m["points"]) for m in modes.values())
    for i in range(depth):
        line = [""]
        for m in modes.values():
            pts = m["points"]
            if i >= len(pts):
                line += ["", "", "", ""]
                continue
            p = pts[i]
            line[0] = f"{p['chats']:,}"
            growth = ""
            if i:
                made = p["chats"] - pts[i - 1]["chats"]
                if made:
                    growth = f"{(p['rss_kib'] - pts[i - 1]['rss_kib']) / made:.2f}"
            line += [
                f"{p['rss_kib'] / 1024:.1f}",
                growth,
                f"{p['data_bytes'] / 2**20:.1f}",
                f"{p['rate']:,.0f}" if p.get("rate") else "",
            ]
        lines.append(line)
    text = run.render_table(lines, markdown)
    for mode, m in modes.items():
        if m.get("failed"):
            text += f"\n! {mode}: failed: {m['failed'].strip().splitlines()[-1]}"
        errors = (m.get("result") or {}).get("error_count")
        if errors:
            text += f"\n! {mode}: {errors} errors: {m['result'].get('errors')[:2]}"
        if m.get("server_log_warnings"):
            text += f"\n? {mode}: server logged: {m['server_log_warnings'][:3]}"
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--total", type=int, default=None, help="default 200,000")
    p.add_argument("--step", type=int, default=None, help="default 50,000")
    p.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    p.add_argument("--quick", action="store_true", help="20,000 chats in 5,000s")
    p.add_argument(
        "--store-flags",
        nargs=argparse.REMAINDER,
        default=[],
        help="extra serve flags, e.g. --session-store memory (last option)",
    )
    p.add_argument("--node", default="node")
    args = p.parse_args(argv)
    run.raise_nofile_limit()
    tools = run.Tools(node=args.node)
    run.check_node(tools)
    chats = measure_all(
        tools,
        quick=args.quick,
        total=args.total,
        step=args.step,
        modes=tuple(args.modes),
        flags=args.store_flags,
    )
    print(table(chats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
