"""Reading one YAML mapping into typed values, with errors that name the file and the key.

``Section`` wraps a mapping at a dotted key path. Each getter validates one key and returns a
plain Python value; ``finish()`` rejects keys nobody asked for, suggesting the closest valid one.
Every failure is a ``SpaceError`` of one line:
``spaces/x.yaml: budget.trials: must be an integer >= 1, but got 0``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from search.errors import SpaceError

_MISSING = object()


def closest(name: str, valid: Iterable[str]) -> str | None:
    """The valid name a typo most likely meant, or None when nothing is close."""
    matches = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """``allowed: a, b, c; did you mean 'b'?``: the tail of every unknown-name error."""
    valid = list(valid)
    guess = closest(name, valid)
    hint = f"; did you mean {guess!r}?" if guess else ""
    return f"allowed: {', '.join(map(str, valid))}{hint}"


def choose(table: Mapping[str, Any], name: Any, *, what: str) -> Any:
    """The row of ``table`` called ``name``; any other name is one ``SpaceError`` line:
    ``<what> must be one of the names below, but got 'tpee'; allowed: tpe, nsga2, random; did you mean 'tpe'?``

    Every finite choice (modes, schedules, structures, samplers, export rules, data formats,
    preprocessing, objectives, model families) is looked up through here, so an unknown name
    reads the same wherever it is met.
    """
    try:
        return table[name]
    except (KeyError, TypeError):
        raise SpaceError(f"{what} {unknown_name(name, table)}") from None


def unknown_name(name: Any, valid: Iterable[str]) -> str:
    """``must be one of the names below, but got 'x'; allowed: ...; did you mean ...?``: what
    ``choose`` and ``Section.choice`` say after the key, so both read the same."""
    return f"must be one of the names below, but got {_show(name)}; {did_you_mean(name, valid)}"


class Section:
    """The mapping found at ``path`` (dotted) in the space file ``source``."""

    def __init__(self, data: Any, *, source: str, path: str = ""):
        if data is None:
            data = {}
        self.source = source
        self.path = path
        if not isinstance(data, Mapping):
            self.fail("", f"must be a mapping of keys to values, but got {_show(data)}")
        self.data = dict(data)
        self._read: set[str] = set()

    # --- errors -------------------------------------------------------------------------------
    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path and name else (name or self.path or "<top level>")

    def fail(self, name: str, message: str) -> None:
        raise SpaceError(f"{self.source}: {self.key(name)}: {message}")

    # --- getters ------------------------------------------------------------------------------
    def raw(self, name: str, default: Any = _MISSING) -> Any:
        self._read.add(name)
        if name not in self.data or self.data[name] is None:
            if default is _MISSING:
                self.fail(name, "is required but missing")
            return default
        return self.data[name]

    def section(self, name: str, *, required: bool = False) -> Section:
        if required and self.data.get(name) is None:
            self.fail(name, "is required but missing")
        return Section(self.raw(name, {}), source=self.source, path=self.key(name))

    def integer(self, name: str, default: Any = _MISSING, *, low: int | None = None, high: int | None = None, optional: bool = False) -> int | None:
        value = self.raw(name, None if optional and default is _MISSING else default)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, f"must be an integer{_bounds(low, high)}, but got {_show(value)}")
        if (low is not None and value < low) or (high is not None and value > high):
            self.fail(name, f"must be an integer{_bounds(low, high)}, but got {value}")
        return value

    def number(self, name: str, default: Any = _MISSING, *, low: float | None = None, high: float | None = None, below: float | None = None, optional: bool = False) -> float | None:
        value = self.raw(name, None if optional and default is _MISSING else default)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(name, f"must be a number{_bounds(low, high, below)}, but got {_show(value)}")
        if (low is not None and value < low) or (high is not None and value > high) or (below is not None and value >= below):
            self.fail(name, f"must be a number{_bounds(low, high, below)}, but got {value}")
        return float(value)

    def string(self, name: str, default: Any = _MISSING, *, optional: bool = False) -> str | None:
        value = self.raw(name, None if optional and default is _MISSING else default)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            self.fail(name, f"must be a non-empty string, but got {_show(value)}")
        return value

    def choice(self, name: str, allowed: Iterable[str], default: Any = _MISSING) -> str:
        """A name from ``allowed`` (a table's keys, or the table itself)."""
        allowed = list(allowed)
        value = self.raw(name, default)
        if value not in allowed:
            self.fail(name, unknown_name(value, allowed))
        return value

    def boolean(self, name: str, default: Any = _MISSING) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            self.fail(name, f"must be true or false, but got {_show(value)}")
        return value

    def finish(self) -> None:
        """Reject keys that no getter read: typos must not be silently ignored."""
        for name in self.data:
            if name not in self._read:
                self.fail(name, f"is not a known key; {did_you_mean(name, sorted(self._read))}")


def _bounds(low: float | None, high: float | None, below: float | None = None) -> str:
    parts = []
    if low is not None:
        parts.append(f">= {low}")
    if high is not None:
        parts.append(f"<= {high}")
    if below is not None:
        parts.append(f"< {below}")
    return (" " + " and ".join(parts)) if parts else ""


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"{type(value).__name__} {value!r}"
    return repr(value)
