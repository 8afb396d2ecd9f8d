"""``trio-channel health [URL]``: exit status from ``GET /healthz``.

For container and systemd health checks: exit 0 when the daemon answers
``200 {"status":"ok"}``, 1 otherwise (degraded store, unreachable, timeout),
with one line saying what it saw.
"""

from __future__ import annotations

import sys

import msgspec
import trio

from .auth import DEFAULT_URL, ClientError, ServerAddress, http_get

__all__ = ["DEFAULT_URL", "check_health", "health_main"]

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1


async def check_health(url: str, timeout_s: float = 5.0) -> tuple[bool, str]:
    """(healthy, what was seen) for the daemon at *url*."""
    address = ServerAddress.parse(url)
    answer = await http_get(address, "/healthz", timeout_s=timeout_s)
    text = " ".join(answer.body[:300].decode("utf-8", "replace").split())
    try:
        body = msgspec.json.decode(answer.body)
    except msgspec.DecodeError:
        body = None
    ok = answer.status == 200 and isinstance(body, dict) and body.get("status") == "ok"
    return ok, f"HTTP {answer.status} {text}"


def health_main(url: str, timeout: float) -> int:
    try:
        ok, seen = trio.run(check_health, url, timeout)
    except ClientError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return EXIT_UNHEALTHY
    print(
        f"{'healthy' if ok else 'unhealthy'}: {seen}",
        file=sys.stdout if ok else sys.stderr,
    )
    return EXIT_HEALTHY if ok else EXIT_UNHEALTHY
