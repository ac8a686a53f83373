"""The latency reference: one fixed recipe every latency is measured against, built at any
resolution in either reference mode, and the anchor's latency per node.

Absolute latency on a shared VM drifts 10-16% from one 3 s window to the next; alternating
invokes of a trial's model and a reference and taking the median of the per-pair ratios repeats
within ~1-2% (``search.timing.interleaved``), but only when the reference is the same network at
the trial's resolution, computing as the trial does: the host's drift hits workloads of different
working-set size, and float and int8 kernels, differently. So a trial is timed against the
reference built at its own resolution in its mode's reference mode (``reference_mode``), its rung
(``search.timing.rungs``). One rung, the anchor (``ANCHOR`` px, ``ANCHOR_MODE``), has its latency
measured once per node, absolute, long, and kept on the node (``node_reference_latency``); every
other rung's latency there is its ratio to the anchor times that number, so all rungs sit on one
scale.

The recipe (``RECIPE``): the default family's network as its built-in cfg describes it, 80
classes, at the given resolution, weights drawn from ``numpy.random.default_rng(RECIPE["seed"])``
(He-scaled normal kernels, identity BatchNorm), converted in the reference mode: float32, or
full-integer int8 (float I/O) calibrated on ``RECIPE["calibration_images"]`` seeded uniform images.
The weights' values do not change latency; the bytes' sha256 is recorded with every measurement
and on the card.

The driver builds the rungs once (``reference_model``, TensorFlow) and ships their bytes to every
trial and device, so all nodes time the same files. Nothing here imports TensorFlow or LiteRT
until called.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from search.files import write_bytes_atomic, write_text_atomic
from search.models import DEFAULT_FAMILY

RECIPE = {"family": DEFAULT_FAMILY, "classes": 80, "seed": 0, "calibration_images": 4,
          "version": 3}  # bump "version" when the way it is built changes: the cache keys follow
# The reference mode a trial is timed against, by its quantization mode's activation dtype
# (QUANT_MODES' ``activation_dtype``): what its kernels compute in. Float and int8 kernels are
# different workloads, and the drift cancels only between alike ones: a float32 96 px model's ratio
# spread 9.5% / 9.2% (idle / with a search beside it, 8 windows of 6 s) against the int8 96 px
# rung, where an int8 96 px model's spread 1.1% / 1.7%. int16x8 (integer kernels, int8 weights) has
# no rung of its own and is timed against int8; how alike the two are is not measured.
REFERENCE_MODES = {"INT8": "int8", "INT16": "int8", "FLOAT32": "float32"}
# The rung whose absolute latency is measured per node (every other rung is a ratio to it there).
# 256 px int8 runs 3-8 ms on the hosts measured: long enough for a steady absolute median, short
# enough to alternate with; and it was the one reference before the rungs, so nodes' numbers compare.
ANCHOR = 256
ANCHOR_MODE = "int8"
NODE_CACHE = Path(tempfile.gettempdir()) / "yolo-search" / "latency"  # on each node: the reference and its latency


def reference_mode(quant_mode: str) -> str:
    """The reference mode (``REFERENCE_MODES``) a model converted in ``quant_mode`` (a key of
    ``QUANT_MODES``) is timed against; an unknown mode raises ``SpaceError`` with a hint."""
    from search.quantize.modes import get_mode  # here: a device imports this module, never calls this

    return REFERENCE_MODES[get_mode(quant_mode).activation_dtype]


def recipe_text(resolution: int | None = None, mode: str | None = None) -> str:
    """The recipe in one line (at ``resolution`` in ``mode``, else at any), for the card and the README."""
    r = RECIPE
    at = f"at {resolution} px" if resolution else f"at the trial's resolution (anchor {ANCHOR} px {ANCHOR_MODE})"
    calibrated = f"calibrated on {r['calibration_images']} seeded images"
    any_mode = f"in the trial's reference mode (float32 for float activations, else int8 {calibrated})"
    converted = {"int8": f"int8 {calibrated}", "float32": "float32"}.get(mode, any_mode)
    return (f"{r['family']} as its built-in cfg ({r['classes']} classes) {at}, seeded weights "
            f"(seed {r['seed']}), {converted}")


def check_resolution(resolution: int) -> None:
    """A resolution the recipe can be built at, or ValueError."""
    if resolution < 32 or resolution % 32:
        raise ValueError(f"a latency reference's resolution must be a multiple of 32 from 32 up, but got {resolution!r}")


def check_mode(mode: str) -> None:
    """A reference mode (a value of ``REFERENCE_MODES``), or ValueError."""
    modes = sorted(set(REFERENCE_MODES.values()))
    if mode not in modes:
        raise ValueError(f"a latency reference's mode must be one of {', '.join(modes)}, but got {mode!r}")


def _seeded_weights(model, seed: int) -> None:
    """Give every layer weights drawn from one seeded generator: the same bytes on every machine,
    whatever the framework's own initialisers do. Kernels He-scaled so activations stay finite."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for weight in layer.weights:
            shape, name = tuple(weight.shape), weight.name.lower()
            if len(shape) > 1:
                fan_in = int(np.prod(shape[:-1]))
                values.append(rng.normal(0.0, (2.0 / fan_in) ** 0.5, shape).astype(np.float32))
            elif "gamma" in name or "variance" in name:
                values.append(np.ones(shape, np.float32))
            else:
                values.append(np.zeros(shape, np.float32))
        if values:
            layer.set_weights(values)


def build_reference(resolution: int, mode: str) -> bytes:
    """The reference ``.tflite`` built from ``RECIPE`` at ``resolution`` in ``mode`` (TensorFlow: seconds)."""
    import numpy as np

    from search.models import get_family
    from search.quantize import QUANT_MODES, convert

    check_resolution(resolution)
    check_mode(mode)
    r, size = RECIPE, resolution
    model = get_family(r["family"]).build(num_classes=r["classes"], resolution=size)
    _seeded_weights(model, r["seed"])
    images = None
    if QUANT_MODES[mode].needs_calibration:
        images = np.random.default_rng(r["seed"]).random((r["calibration_images"], size, size, 3), dtype=np.float32)
    return convert(model, mode=mode, calibration_images=images).content


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def reference_model(resolution: int, mode: str, cache_dir: Path | None = None) -> bytes:
    """The reference's bytes at ``resolution`` in ``mode`` (a reference mode), built once per recipe,
    resolution, mode and TensorFlow version and kept in ``cache_dir`` (default ``NODE_CACHE``)."""
    check_resolution(resolution)
    check_mode(mode)
    key = hashlib.sha256(json.dumps([RECIPE, resolution, mode, _version("tensorflow")], sort_keys=True)
                         .encode()).hexdigest()[:16]
    path = Path(cache_dir or NODE_CACHE) / f"reference-{resolution}px-{mode}-{key}.tflite"
    if path.exists():
        return path.read_bytes()
    content = build_reference(resolution, mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, content)
    return content


@dataclass(frozen=True)
class ReferenceLatency:
    """The anchor's latency on one node: what every rung's link to it is multiplied by."""

    sha256: str  # of the reference's bytes
    median_ms: float  # over the quieter half of a long timed phase (search.timing.absolute)
    p90_ms: float
    spread: float
    runs: int
    seconds: float
    num_threads: int
    cpus: str
    litert: str  # the ai-edge-litert version that timed it
    measured_at: float  # epoch seconds
    cache: str  # "hit" (read from the node's cache) or "miss" (measured now)


def node_reference_latency(reference: bytes, *, num_threads: int, seconds: float,
                           cache_dir: Path | None = None) -> ReferenceLatency:
    """The absolute latency of ``reference`` (the anchor) on this node, measured once for ``seconds``
    and kept in ``cache_dir`` (default ``NODE_CACHE``) under its hash, the thread count, the LiteRT
    version and ``seconds``.

    The caller holds the node alone (a latency measurement's lock), so a second trial waiting for
    it finds the first one's measurement here.
    """
    from search.timing.absolute import measure_latency

    sha = hashlib.sha256(reference).hexdigest()
    litert = _version("ai-edge-litert")
    path = Path(cache_dir or NODE_CACHE) / f"reference-latency-{sha[:16]}-t{num_threads}-litert{litert}-{seconds:g}s.json"
    try:
        return ReferenceLatency(**{**json.loads(path.read_text()), "cache": "hit"})
    except (OSError, ValueError, TypeError):
        pass  # not measured on this node yet (or an unreadable leftover): measure it now
    stats = measure_latency(reference, num_threads=num_threads, warmup=10, min_runs=50, min_seconds=seconds,
                            max_seconds=seconds * 1.5)
    measured = ReferenceLatency(sha, stats.median_ms, stats.p90_ms, stats.spread, stats.runs, stats.seconds,
                                num_threads, stats.cpus, litert, round(time.time(), 3), "miss")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(asdict(measured)))
    return measured
