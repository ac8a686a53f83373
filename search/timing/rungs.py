"""Latency references matched to the trial's resolution and reference mode ("rungs"), all on the
anchor's scale.

A trial's model is timed against the reference built at its own resolution, in the reference mode
its quantization mode computes in (int8 or float32: ``search.timing.reference.reference_mode``):
only that cancels the host's drift for small models, and for float ones. On the
AVX-512 host (2026-12-07), the per-pair ratio of the default network, int8 at 96 px, spread over
8 windows of 6 s (idle / with a search beside it) 8.6% / 11.1% against the 256 px reference,
11.7% / 9.0% against a 160 px one, and 1.0% / 1.7% against a 96 px one; at 416 px, 1.6% / 1.9%
against 256 px and 0.8% / 0.7% against 416 px. The drift hits workloads of different
working-set size differently, and the nearest cost is not enough (160 px was worse than 256 px
for 96 px). A float32 96 px model spread 9.5% / 9.2% against the int8 96 px rung and 13.4% / 9.3%
against the int8 256 px one: float and int8 kernels are different workloads too.

Each rung's latency on a node is its link, the median per-pair ratio rung / anchor over one
interleaved measurement (``latency_reference_seconds``, once per node, kept there), times the
anchor's absolute latency there (``node_reference_latency``). Measuring each rung's absolute
latency instead would put the rungs on scales 10-16% apart (the absolute drift between windows);
chained through the anchor, they agree as the anchor and a trial do. The link is measured the
first time a trial at that rung is timed on the node, so rungs no trial uses cost nothing there
(a space with float and int8 modes uses up to twice as many).

Needs numpy and LiteRT only when timing, as the rest of ``search.timing``: a device runs it with
the bytes the driver shipped (it has no TensorFlow to build a rung).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from search.files import write_text_atomic
from search.timing import reference
from search.timing.reference import ANCHOR, ANCHOR_MODE, ReferenceLatency, check_mode, node_reference_latency

__all__ = ["LatencyReferences", "Rung", "RungLatency", "latency_references", "node_rung_latency", "rung_name"]


def rung_name(resolution: int, mode: str) -> str:
    """How a rung is named in run.json and the driver's output: ``int8@96``, as the benchmarks' ``--models``."""
    return f"{mode}@{resolution}"


def _by_mode(key: tuple[int, str]) -> tuple[str, int]:
    """The order rungs are listed in: by mode, then resolution."""
    resolution, mode = key
    return mode, resolution


@dataclass(frozen=True)
class Rung:
    """The reference built at one resolution in one reference mode: what a trial at (or nearest)
    that resolution, in a quantization mode of that reference mode, alternates with."""

    resolution: int
    mode: str  # the reference mode: a value of search.timing.reference.REFERENCE_MODES
    content: bytes = field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class LatencyReferences:
    """Every rung the driver built, by (resolution, reference mode), and which of them is the anchor."""

    rungs: Mapping[tuple[int, str], bytes] = field(repr=False)
    anchor: tuple[int, str] = (ANCHOR, ANCHOR_MODE)

    def __post_init__(self) -> None:
        if self.anchor not in self.rungs:
            raise ValueError(f"the anchor's rung ({rung_name(*self.anchor)}) must be among the rungs, but got "
                             f"{', '.join(rung_name(*key) for key in sorted(self.rungs, key=_by_mode))}")

    def rung_for(self, resolution: int, mode: str) -> Rung:
        """The rung at ``resolution`` in ``mode`` (a reference mode), else the nearest resolution of
        that mode; of two equally near, the larger (a fixed rule; the driver builds a rung for every
        resolution and reference mode its space can give a trial, so only a model from elsewhere is
        ever timed against a rung not its own). A mode with no rung at all falls back to the
        anchor's mode (int8), whose rungs are always there."""
        check_mode(mode)
        if not any(m == mode for _, m in self.rungs):
            mode = self.anchor[1]
        chosen = min((r for r, m in self.rungs if m == mode), key=lambda r: (abs(r - resolution), -r))
        return Rung(chosen, mode, self.rungs[chosen, mode])

    @property
    def anchor_rung(self) -> Rung:
        return Rung(*self.anchor, self.rungs[self.anchor])

    def describe(self) -> dict[str, dict]:
        """Each rung's sha256 and size, by ``rung_name`` (run.json)."""
        return {rung_name(*key): {"sha256": hashlib.sha256(c).hexdigest(), "bytes": len(c)}
                for key, c in sorted(self.rungs.items(), key=lambda item: _by_mode(item[0]))}


def latency_references(wanted: Iterable[tuple[int, str]], *, cache_dir: Path | None = None) -> LatencyReferences:
    """A rung for each (resolution, reference mode) of ``wanted`` and the anchor, built (TensorFlow)
    or read from ``cache_dir``."""
    keys = sorted({(int(r), m) for r, m in wanted} | {(ANCHOR, ANCHOR_MODE)})
    return LatencyReferences({(r, m): reference.reference_model(r, m, cache_dir) for r, m in keys})


@dataclass(frozen=True)
class RungLatency:
    """A rung's latency on one node: its link to the anchor there x the anchor's latency there."""

    resolution: int
    mode: str  # the rung's reference mode
    sha256: str  # of the rung's bytes
    link: float  # median per-pair ratio rung / anchor, interleaved, on this node; 1 for the anchor itself
    link_pairs: int  # 0 for the anchor: nothing timed
    link_seconds: float
    anchor: ReferenceLatency
    cache: str  # the link's: "hit" (read from the node's cache) or "miss" (measured now)

    @property
    def median_ms(self) -> float:
        return self.link * self.anchor.median_ms


def node_rung_latency(rung: Rung, anchor: bytes, *, num_threads: int, seconds: float,
                      cache_dir: Path | None = None) -> RungLatency:
    """``rung``'s latency on this node: the anchor's (``node_reference_latency``) x the link, measured
    once for ``seconds`` and kept in ``cache_dir`` (default ``NODE_CACHE``) under the rung's hash, the
    anchor's, the thread count, the LiteRT version, ``seconds`` and how pairs are timed. The caller holds
    the node alone."""
    from search.timing.interleaved import TIMING_VERSION, measure_interleaved

    node = node_reference_latency(anchor, num_threads=num_threads, seconds=seconds, cache_dir=cache_dir)
    sha = rung.sha256
    if sha == node.sha256:
        return RungLatency(rung.resolution, rung.mode, sha, 1.0, 0, 0.0, node, node.cache)
    folder = Path(cache_dir or reference.NODE_CACHE)
    path = folder / (f"link-{sha[:16]}-to-{node.sha256[:16]}-t{num_threads}-litert{node.litert}-{seconds:g}s"
                     f"-timing{TIMING_VERSION}.json")
    try:
        kept = json.loads(path.read_text())
        return RungLatency(rung.resolution, rung.mode, sha, kept["link"], kept["link_pairs"], kept["link_seconds"],
                           node, "hit")
    except (OSError, ValueError, TypeError, KeyError):
        pass  # not measured on this node yet (or an unreadable leftover): measure it now
    stats = measure_interleaved(rung.content, anchor, num_threads=num_threads, warmup=10, min_runs=50,
                                min_seconds=seconds, max_seconds=seconds * 1.5)
    measured = RungLatency(rung.resolution, rung.mode, sha, stats.ratio, stats.pairs, stats.seconds, node, "miss")
    folder.mkdir(parents=True, exist_ok=True)
    kept = {k: v for k, v in asdict(measured).items() if k not in ("anchor", "cache")}
    write_text_atomic(path, json.dumps({**kept, "anchor_sha256": node.sha256, "num_threads": num_threads,
                                        "litert": node.litert, "cpus": stats.cpus, "measured_at": round(time.time(), 3)}))
    return measured
