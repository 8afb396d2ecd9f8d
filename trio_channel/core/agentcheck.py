"""Checking what the agent sends, where it enters the channel (pure).

A ``msgspec.Struct`` does not check its fields when it is built, so an agent
can hand over ``Delta(text=5)``, ``GoalStatus(status="runing")`` or a
``goal_state`` holding an object JSON cannot encode. Let one through and it
reaches every client, or fails later in the store writer or a log line, far
from its cause. :func:`check_agent_event` encodes the event once (the
payload is needed anyway), decodes it back with the typed decoder (which
checks every type and ``Literal``), and returns either the clean event with
its payload or a :class:`BadEvent` naming the event type and field.

Lone surrogates in any string become U+FFFD (PROTOCOL 3) instead of failing
the encode. A ``seq`` set by the agent is ignored: the channel assigns it.
"""

from __future__ import annotations

import typing
from typing import Final

import attrs
import msgspec

from .events import AgentEvent
from .textsafe import scrub

__all__ = ["AGENT_EVENT_TYPES", "BadEvent", "check_agent_event", "event_type_name"]

#: Everything an agent may put on the outbound channel.
AGENT_EVENT_TYPES: Final = typing.get_args(AgentEvent)

_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(AgentEvent)


@attrs.frozen
class BadEvent:
    """An agent event that was dropped, and why (for one log line)."""

    event_type: str
    reason: str


def event_type_name(event: object) -> str:
    """The ``event`` tag of an event Struct, else the Python type's name."""
    config = getattr(type(event), "__struct_config__", None)
    tag = getattr(config, "tag", None)
    return tag if isinstance(tag, str) else type(event).__name__


def check_agent_event(event: object) -> tuple[AgentEvent, bytes] | BadEvent:
    """Validate one agent event; return it cleaned with its JSON payload.

    The payload never carries ``seq`` (the store adds it). The returned event
    is a fresh object decoded from the payload: builtins only, every field of
    the declared type.
    """
    name = event_type_name(event)
    if not isinstance(event, AGENT_EVENT_TYPES):
        return BadEvent(
            name, "not an agent event (expected one of trio_channel's events)"
        )
    try:
        payload = _encoder.encode(event)
    except UnicodeEncodeError:
        payload_or_bad = _encode_scrubbed(event, name)
        if isinstance(payload_or_bad, BadEvent):
            return payload_or_bad
        payload = payload_or_bad
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        return BadEvent(name, _unencodable(event, exc))
    try:
        clean = _decoder.decode(payload)
    except msgspec.ValidationError as exc:
        return BadEvent(name, str(exc))
    if getattr(clean, "seq", 0):
        clean = msgspec.structs.replace(clean, seq=0)
        payload = _encoder.encode(clean)
    return clean, payload


def _encode_scrubbed(event: AgentEvent, name: str) -> bytes | BadEvent:
    try:
        builtins = msgspec.to_builtins(event)
        return _encoder.encode(scrub(builtins))
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        return BadEvent(name, _unencodable(event, exc))


def _unencodable(event: AgentEvent, exc: Exception) -> str:
    """Name the first field JSON cannot encode (only on this failure path)."""
    for field in event.__struct_fields__:
        value = getattr(event, field)
        try:
            _encoder.encode(scrub(msgspec.to_builtins(value)))
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as field_exc:
            return f"{field}: cannot be encoded as JSON ({field_exc})"
    return f"cannot be encoded as JSON ({exc})"
