"""Configuration errors: one line each, naming the field."""

from __future__ import annotations

__all__ = ["ConfigError", "ConfigErrors"]


class ConfigError(Exception):
    """A configuration problem, reported as one line: ``field: message``.

    ``field`` is a :class:`ChannelConfig` field name, or ``config`` when the
    file itself cannot be used. The text never spans lines, so the CLI can
    print ``config error: {err}`` and exit 2 without a traceback.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = _one_line(field)
        self.message = _one_line(message)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ConfigErrors(ConfigError):
    """Several configuration problems at once; ``errors`` lists every one.

    It is a :class:`ConfigError` (the first problem), so code that reports one
    line still works; the CLI prints one ``config error:`` line per entry.
    """

    def __init__(self, errors: list[ConfigError]) -> None:
        if not errors:
            raise ValueError("ConfigErrors needs at least one error")
        super().__init__(errors[0].field, errors[0].message)
        self.errors = list(errors)

    def __reduce__(self) -> tuple[type[ConfigErrors], tuple[list[ConfigError]]]:
        return (ConfigErrors, (self.errors,))


def _one_line(text: str) -> str:
    return " ".join(text.split())
