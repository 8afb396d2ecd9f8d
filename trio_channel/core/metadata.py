"""The metadata handed to the agent with a client's message (PROTOCOL 3.2).

Clients (the web UI above all) attach hints such as ``cli_apps`` and
``mcp_presets`` to a message. They come straight from the network and end up
in an agent's prompt or UI, so they are cleaned here into a small, bounded,
predictable shape: at most 8 items, names from a tight alphabet, only known
fields, every string clipped. Pure functions; nothing here raises on any
JSON value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

#: Only this many raw items are looked at, valid or not.
MAX_ITEMS = 8
MAX_NAME_CHARS = 64
MAX_FIELD_CHARS = 160
MAX_URL_CHARS = 512

# re.ASCII: with IGNORECASE alone, [a-z] would also match U+212A (Kelvin sign)
# and U+017F (long s): names must stay plain ASCII.
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}", re.IGNORECASE | re.ASCII)

#: Kept string fields of a ``cli_apps`` item and their length limits.
CLI_APP_FIELDS: Mapping[str, int] = {
    "display_name": MAX_FIELD_CHARS,
    "category": MAX_FIELD_CHARS,
    "entry_point": MAX_FIELD_CHARS,
    "logo_url": MAX_URL_CHARS,
    "brand_color": MAX_FIELD_CHARS,
}
#: ``mcp_presets`` keep the same, plus these (and a boolean ``configured``).
MCP_PRESET_FIELDS: Mapping[str, int] = {
    **CLI_APP_FIELDS,
    "transport": MAX_FIELD_CHARS,
    "status": MAX_FIELD_CHARS,
}


def _named_items(raw: object) -> Iterator[tuple[str, Mapping[object, object]]]:
    """Yield ``(name, item)`` for the acceptable items among the first 8.

    The cut at 8 happens before validation, so a client cannot push a ninth
    item in by making earlier ones invalid. Names are lower-cased; the first
    item with a given name wins.
    """
    if not isinstance(raw, list):
        return
    seen: set[str] = set()
    for item in raw[:MAX_ITEMS]:
        if not isinstance(item, dict):
            continue
        name = item.get("name")
        if not isinstance(name, str):
            continue
        name = name.strip()[:MAX_NAME_CHARS]
        if _NAME_RE.fullmatch(name) is None:
            continue
        name = name.lower()
        if name in seen:
            continue
        seen.add(name)
        yield name, item


def _clipped_strings(
    item: Mapping[object, object], fields: Mapping[str, int]
) -> dict[str, str]:
    return {
        key: value[:limit]
        for key, limit in fields.items()
        if isinstance(value := item.get(key), str)
    }


def clean_cli_apps(raw: object) -> list[dict[str, str]] | None:
    """Clean a ``cli_apps`` list; ``None`` when nothing survives.

    Each result holds ``name`` and whichever of :data:`CLI_APP_FIELDS` were
    sent as strings, clipped; anything else in the item is dropped.
    """
    apps = [
        {"name": name, **_clipped_strings(item, CLI_APP_FIELDS)}
        for name, item in _named_items(raw)
    ]
    return apps or None


def clean_mcp_presets(raw: object) -> list[dict[str, object]] | None:
    """Clean an ``mcp_presets`` list like :func:`clean_cli_apps`.

    Also keeps ``transport`` and ``status`` (strings) and ``configured``
    when it is a real boolean (``"true"`` or ``1`` are dropped, not coerced).
    """
    presets: list[dict[str, object]] = []
    for name, item in _named_items(raw):
        preset: dict[str, object] = {
            "name": name,
            **_clipped_strings(item, MCP_PRESET_FIELDS),
        }
        configured = item.get("configured")
        if isinstance(configured, bool):
            preset["configured"] = configured
        presets.append(preset)
    return presets or None


def clean_image_generation(raw: object) -> dict[str, object] | None:
    """``{"enabled": True, "aspect_ratio": str | None}`` or ``None``.

    Only ``enabled`` being exactly ``True`` turns the feature on; a
    non-string ``aspect_ratio`` becomes ``None`` (the agent's default).
    """
    if not isinstance(raw, dict) or raw.get("enabled") is not True:
        return None
    aspect_ratio = raw.get("aspect_ratio")
    return {
        "enabled": True,
        "aspect_ratio": aspect_ratio if isinstance(aspect_ratio, str) else None,
    }


def build_metadata(
    *,
    remote: str,
    webui: object,
    cli_apps: object,
    mcp_presets: object,
    workspace_scope: object,
    image_generation: object,
    streaming: bool,
) -> dict[str, object]:
    """Assemble the metadata dict of an inbound message.

    ``remote`` and ``streaming`` are always present; every other key only
    when it carries something, so agents can test ``"key" in metadata``.
    ``workspace_scope`` must already be resolved by the scope policy; it is
    passed through untouched (``None`` leaves it out).
    """
    metadata: dict[str, object] = {"remote": remote}
    if webui is True:
        metadata["webui"] = True
    cleaned: dict[str, object | None] = {
        "cli_apps": clean_cli_apps(cli_apps),
        "mcp_presets": clean_mcp_presets(mcp_presets),
        "workspace_scope": workspace_scope,
        "image_generation": clean_image_generation(image_generation),
    }
    metadata.update((key, value) for key, value in cleaned.items() if value is not None)
    metadata["streaming"] = streaming
    return metadata
