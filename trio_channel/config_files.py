"""Reading a config file: TOML or JSON, a whole nanobot config or one section."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

import msgspec

from .config_errors import ConfigError

__all__ = ["read_config_file"]


def _camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(part.capitalize() for part in rest)


#: ``pingIntervalS`` -> ``ping_interval_s``: the spelling nanobot writes
#: (pydantic's ``to_camel``). Only exact spellings map, so a typo such as
#: ``Port`` is reported as an unknown field rather than guessed at.
def _by_camel(field_names: Iterable[str]) -> Mapping[str, str]:
    return {_camel(f): f for f in field_names}


def _decode(data: bytes, suffix: str) -> object:
    if suffix == ".toml":
        try:
            return tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError("config", f"invalid TOML: {exc}") from None
    if suffix == ".json":
        try:
            return msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise ConfigError("config", f"invalid JSON: {exc}") from None
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as json_exc:
        try:
            return tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as toml_exc:
            raise ConfigError(
                "config", f"neither JSON ({json_exc}) nor TOML ({toml_exc})"
            ) from None


def _section(doc: object) -> dict[str, object]:
    """Return the websocket section: nanobot's nested one, or the top level."""
    if not isinstance(doc, dict):
        raise ConfigError("config", "top level must be an object (a table)")
    channels = doc.get("channels")
    if channels is None:
        return doc
    websocket = channels.get("websocket") if isinstance(channels, dict) else None
    if not isinstance(websocket, dict):
        raise ConfigError("config", "channels.websocket must be an object (a table)")
    return websocket


def read_config_file(
    path: str | os.PathLike[str], field_names: Iterable[str]
) -> dict[str, object]:
    """Read a config file into a mapping of the field names it sets.

    ``.toml`` is read as TOML, ``.json`` as JSON, anything else as JSON and
    then TOML. A whole nanobot config (``{"channels": {"websocket": {...}}}``)
    is unwrapped to that section, so users can point at the file they already
    have. camelCase keys of known fields become snake_case; the values are
    not checked here (``build_config`` does that after layering).
    """
    name = os.fspath(path)
    try:
        data = Path(name).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError("config", f"cannot read {name}: {reason}") from None
    section = _section(_decode(data, Path(name).suffix.lower()))
    result: dict[str, object] = {}
    spelled: dict[str, str] = {}
    by_camel = _by_camel(field_names)
    for key, value in section.items():
        field = by_camel.get(key, key)
        if field in spelled:
            raise ConfigError(field, f"given twice (as {spelled[field]} and {key})")
        spelled[field] = key
        result[field] = value
    return result
