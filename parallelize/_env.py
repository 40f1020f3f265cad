"""Parsers for PARALLELIZE_* environment variables: one per value type, each with an error naming the variable."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from ._errors import ConfigError
from ._frames import user_stacklevel

PREFIX = "PARALLELIZE_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NONE = {"", "none"}
_warned: set[str] = set()


def parse_int(variable: str, text: str) -> int | None:
    if text.strip().lower() in _NONE:
        return None
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(f"{variable}={text!r} is not an integer") from None


def _number(variable: str, text: str, what: str) -> float | None:
    if text.strip().lower() in _NONE:
        return None
    try:
        return float(text.strip())
    except ValueError:
        raise ConfigError(f"{variable}={text!r} is not {what}") from None


def parse_float(variable: str, text: str) -> float | None:
    return _number(variable, text, "a number of seconds")


def parse_chunk_size(variable: str, text: str) -> float | None:
    return _number(variable, text, "a chunk size: a positive number of tasks per chunk, or none")


def parse_bool(variable: str, text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{variable}={text!r} is not a boolean: use one of 1/0, true/false, yes/no, on/off")


def parse_bool_or_auto(variable: str, text: str) -> bool | str:
    if text.strip().lower() == "auto":
        return "auto"
    if text.strip().lower() in _TRUE | _FALSE:
        return parse_bool(variable, text)
    raise ConfigError(f"{variable}={text!r} is not a boolean or 'auto': use one of 1/0, true/false, yes/no, on/off, "
                      "or auto")


def parse_str(variable: str, text: str) -> str | None:
    value = text.strip()
    return None if value.lower() in _NONE else value


Parser = Callable[[str, str], Any]


# The environment as last read (CPython's bytes store behind os.environ, copied) and its PARALLELIZE_* variables.
_last_read: tuple[dict[Any, Any] | None, dict[str, str]] = (None, {})


def variables() -> dict[str, str]:
    """The PARALLELIZE_* variables now. Every call resolves its options from them, so the environment is read only
    when it changed: comparing it with a copy is about 1 us, where a read of each variable through os.environ
    (encoding, decoding) and a scan for misspelt names cost about 0.2 ms per call."""
    global _last_read
    store = getattr(os.environ, "_data", None)  # CPython's; elsewhere the environment is read every time
    seen, found = _last_read
    if isinstance(store, dict):
        if seen == store:
            return found
        seen = dict(store)
    found = {name: value for name, value in os.environ.items() if name.startswith(PREFIX)}
    _last_read = (seen if isinstance(store, dict) else None, found)  # one assignment: safe across threads
    return found


def read(variable: str, parser: Parser) -> tuple[bool, Any]:
    """(is set, parsed value) for one variable."""
    text = variables().get(variable)
    if text is None:
        return False, None
    return True, parser(variable, text)


def warn_unknown(known: Iterable[str]) -> None:
    """One warning per unknown PARALLELIZE_* variable, suggesting the closest valid name."""
    known_names = set(known)
    for name in variables():
        if name in known_names or name in _warned:
            continue
        _warned.add(name)
        import difflib  # only for a misspelt variable

        close = difflib.get_close_matches(name, sorted(known_names), n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; known variables: {', '.join(sorted(known_names))}"
        warnings.warn(f"unknown environment variable {name} is ignored{hint}", UserWarning,
                      stacklevel=user_stacklevel())
