"""Config values from the environment: ``TRIO_CHANNEL_<FIELD>`` for every field.

The variable of a field is its name upper-cased behind ``TRIO_CHANNEL_``
(``ping_interval_s`` -> ``TRIO_CHANNEL_PING_INTERVAL_S``). A variable that is
unset or empty is ignored, so an empty value never hides the file's. The
text is parsed by the field's type, read from the Struct itself so a new
field needs no entry here:

- booleans: ``true``/``false``/``1``/``0`` (any case);
- integers: decimal (``_`` separators allowed, as in Python);
- floats: a finite decimal number;
- lists (``allow_from``): a JSON array of strings (``["a", "b"]``, ``[]`` for
  an empty list), else comma-separated names with blanks around them dropped
  (``a, b``);
- strings and choices: the text as is (the choice is checked with the file's
  values, by the same code).

Bounds are not checked here: :func:`trio_channel.config.build_config` checks
every layer's values the same way and names the variable a bad one came from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec

__all__ = ["ENV_PREFIX", "env_var", "parse_env_value"]

ENV_PREFIX = "TRIO_CHANNEL_"

_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})
_list_decoder = msgspec.json.Decoder(list[str])


def env_var(field: str) -> str:
    """The environment variable that sets config field *field*."""
    return ENV_PREFIX + field.upper()


def _base(kind: msgspec.inspect.Type) -> msgspec.inspect.Type:
    while isinstance(kind, msgspec.inspect.Metadata):
        kind = kind.type
    return kind


def parse_env_value(kind: msgspec.inspect.Type, raw: str) -> object:
    """Parse *raw* for a field of type *kind*; raise ``ValueError`` with a reason.

    The reason is worded for a person (``expected true, false, 1 or 0``).
    """
    base = _base(kind)
    text = raw.strip()
    if isinstance(base, msgspec.inspect.BoolType):
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("expected true, false, 1 or 0")
    if isinstance(base, msgspec.inspect.IntType):
        try:
            return int(text, 10)
        except ValueError:
            raise ValueError("expected a whole number") from None
    if isinstance(base, msgspec.inspect.FloatType):
        try:
            number = float(text)
        except ValueError:
            raise ValueError("expected a number") from None
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        return number
    if isinstance(base, msgspec.inspect.VarTupleType | msgspec.inspect.ListType):
        if text.startswith("["):
            try:
                return tuple(_list_decoder.decode(text))
            except msgspec.DecodeError as exc:
                raise ValueError(f"expected a JSON array of strings ({exc})") from None
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return raw


def field_types(struct: type[msgspec.Struct]) -> Mapping[str, msgspec.inspect.Type]:
    """Field name -> msgspec type description, for :func:`parse_env_value`."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.name: f.type for f in info.fields}
