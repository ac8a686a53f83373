"""A Darknet ``.cfg`` as a value: its sections in file order, read and written as Darknet does.

``parse_cfg`` / ``parse_cfg_text`` read the text into a ``Cfg`` (``[net]`` first, then one
``Section`` per Darknet layer); ``Cfg.text()`` writes it back, so a cfg read and written again
says the same thing. Reading a key goes through ``Section.integer`` / ``number`` / ``integers``,
whose errors name the file, the layer's index and type, the line and the key, on one line
(``WeightsError``, exit code 2). TensorFlow-free: the space validator reads cfgs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from search.errors import WeightsError

NET_SECTIONS = ("net", "network")  # Darknet accepts either name for the first section


@dataclass(frozen=True)
class Section:
    """One ``[kind]`` section: its ``key=value`` strings (spaces removed, as Darknet does)."""

    kind: str
    options: Mapping[str, str]
    index: int  # Darknet's layer index (-1 for [net]): what routes and errors count
    line: int = 0  # where it starts in its file (0: written by code)
    source: str = ""  # the file (or what holds the text), for errors

    def where(self) -> str:
        layer = "[net]" if self.index < 0 else f"layer {self.index} [{self.kind}]"
        return f"({self.source}, {layer}" + (f", line {self.line})" if self.line else ")")

    def fail(self, key: str | None, message: str) -> WeightsError:
        """The one-line error about ``key`` of this section (or the section itself, for ``None``)."""
        return WeightsError(f"{message} {self.where()}" if key is None else f"{key}: {message} {self.where()}")

    def text(self, key: str, default: str | None = None) -> str:
        if key in self.options:
            return self.options[key]
        if default is None:
            raise self.fail(key, f"is required in a [{self.kind}] section, but is missing")
        return default

    def integer(self, key: str, default: int | None = None) -> int:
        value = self.text(key, None if default is None else str(default))
        try:
            return int(value)
        except ValueError:
            raise self.fail(key, f"must be an integer, but got {value!r}") from None

    def number(self, key: str, default: float | None = None) -> float:
        value = self.text(key, None if default is None else repr(default))
        try:
            return float(value)
        except ValueError:
            raise self.fail(key, f"must be a number, but got {value!r}") from None

    def integers(self, key: str, default: str | None = None) -> tuple[int, ...]:
        """A comma-separated list (``layers=-1,23``, ``mask=3,4,5``); empty items are skipped, as Darknet does."""
        value = self.text(key, default)
        try:
            return tuple(int(v) for v in value.split(",") if v)
        except ValueError:
            raise self.fail(key, f"must be comma-separated integers, but got {value!r}") from None

    def with_options(self, **changes) -> Section:
        """This section with ``changes`` (key -> value) set, each written in the key's place if present."""
        return replace(self, options={**self.options, **{k: str(v) for k, v in changes.items()}})


@dataclass(frozen=True)
class Cfg:
    """A whole cfg: ``net`` (the ``[net]`` section) and ``layers`` (every section after it)."""

    net: Section
    layers: tuple[Section, ...] = field(default_factory=tuple)
    source: str = ""

    def text(self) -> str:
        """The cfg as Darknet reads it: one ``key=value`` a line, a blank line between sections."""
        blocks = ("\n".join([f"[{s.kind}]", *(f"{k}={v}" for k, v in s.options.items()), ""])
                  for s in (self.net, *self.layers))
        return "\n".join(blocks)

    def with_layer(self, index: int, **changes) -> Cfg:
        layers = list(self.layers)
        layers[index] = layers[index].with_options(**changes)
        return replace(self, layers=tuple(layers))

    def with_net(self, **changes) -> Cfg:
        return replace(self, net=self.net.with_options(**changes))


def parse_cfg(path) -> Cfg:
    """Read a Darknet cfg file (``parse_cfg_text``); ``WeightsError`` when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Darknet cfg file not found: {path}")
    return parse_cfg_text(path.read_text(errors="replace"), source=str(path))


def _raw_sections(text: str, *, source: str) -> list[tuple[str, dict[str, str], int]]:
    """``(kind, options, line)`` of each ``[section]``, in file order; comments and blank lines skipped."""
    sections: list[tuple[str, dict[str, str], int]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            sections.append((line[1:-1].strip().lower(), {}, number))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1][1][key.strip()] = value.replace(" ", "").replace("\t", "")
        else:
            raise WeightsError(f"expected '[section]' or 'key=value', but got {line[:60]!r} ({source}, line {number})")
    if not sections:
        raise WeightsError(f"no [section] in Darknet cfg ({source})")
    return sections


def parse_cfg_text(text: str, *, source: str) -> Cfg:
    """A Darknet cfg's text -> its ``Cfg``; ``source`` names it in errors (a path, or what holds it)."""
    (net_kind, net_options, net_line), *rest = _raw_sections(text, source=source)
    if net_kind not in NET_SECTIONS:
        raise WeightsError(f"the first section must be [net], but got [{net_kind}] ({source}, line {net_line})")
    net = Section(net_kind, net_options, -1, net_line, source)
    layers = tuple(Section(kind, options, index, line, source) for index, (kind, options, line) in enumerate(rest))
    return Cfg(net, layers, source)
