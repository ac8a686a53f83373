"""What a latency target's node measures for one model: drift-free latency, peak memory, and the
hardware that did it.

Runs on the device (``device_task``, made a Ray task by ``search.targets``), so it needs numpy,
LiteRT and Ray only, and imports nothing of the package beyond ``search.timing`` and the stdlib-only
``search.node_lock`` / ``search.provenance``: Ray imports this module on the device to run it. The
latency is taken as on a search node (``search.timing.interleaved`` against the reference's rung
of the model's resolution and reference mode, whose latency on this node, its link to the anchor x the anchor's, is
measured once and kept here: ``search.timing.rungs``). The driver ships the rung's bytes and the
anchor's: a device has no TensorFlow to build them. The peak memory is taken in a fresh child
process: the resident memory a model adds by loading, allocating and invoking is what a user's
app pays, and in a process that already ran other models the allocator's leftovers would hide it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.provenance import cpu_model

if TYPE_CHECKING:
    from search.timing.rungs import Rung

DELEGATE = "XNNPACK (LiteRT's default CPU delegate)"
MEMORY_TIMEOUT_S = 300  # loading and invoking a large float model on a small board takes seconds, not minutes

# The child: imports first, so their memory is not counted; then the peak resident set it reaches
# while loading, allocating and invoking the model, less the resident set before. On Linux the
# peak is reset after the imports (clear_refs 5), since importing LiteRT peaks above what it keeps;
# elsewhere ru_maxrss (KiB on Linux, bytes on macOS) is the best there is.
_MEMORY_CHILD = r"""
import json, resource, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before, peak = status("VmRSS"), lambda: status("VmHWM")
except OSError:
    scale = 1 if sys.platform == "darwin" else 1024
    maxrss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    before, peak = maxrss(), maxrss
content = open(sys.argv[1], "rb").read()  # the model's bytes count: an app holds them too
interpreter = Interpreter(model_content=content, num_threads=int(sys.argv[2]))
interpreter.allocate_tensors()
for detail in interpreter.get_input_details():
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
for _ in range(3):
    interpreter.invoke()
after = peak()
print(json.dumps({"memory_bytes": int(after - before), "peak_rss_bytes": int(after)}))
"""


def peak_memory(content: bytes, *, num_threads: int) -> dict[str, int]:
    """Peak resident bytes added by loading, allocating and invoking ``content``, in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="yolo-search-memory-") as folder:
        path = Path(folder) / "model.tflite"
        path.write_bytes(content)
        done = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(path), str(num_threads)],
                              capture_output=True, text=True, timeout=MEMORY_TIMEOUT_S)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the memory child process must exit 0, but got {done.returncode}: {last[:300]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def hardware(num_threads: int) -> dict[str, Any]:
    """The node's hardware and software as a latency figure needs them said."""
    try:
        litert = metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        litert = "unknown"
    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "arch": platform.machine(), "os": platform.platform(),
            "host": platform.node(), "litert": litert, "delegate": DELEGATE, "threads": num_threads}


def measure_here(content: bytes, rung: Rung, anchor: bytes, settings: dict[str, Any]) -> dict[str, Any]:
    """Latency (drift-free, against ``rung``, on the ``anchor``'s scale), p90, peak memory and
    hardware for ``content`` on this node.

    ``settings``: the space's ``measure:`` latency keys (``latency_threads``, ``latency_warmup``,
    ``latency_min_runs``, ``latency_min_seconds``, ``latency_max_seconds``,
    ``latency_reference_seconds``), as plain values: a device has no space parser.
    """
    from search.timing.interleaved import measure_interleaved
    from search.timing.rungs import node_rung_latency

    threads = int(settings["latency_threads"])
    node = node_rung_latency(rung, anchor, num_threads=threads, seconds=settings["latency_reference_seconds"])
    stats = measure_interleaved(content, rung.content, num_threads=threads, warmup=settings["latency_warmup"],
                                min_runs=settings["latency_min_runs"], min_seconds=settings["latency_min_seconds"],
                                max_seconds=settings["latency_max_seconds"])
    return {
        "latency_ms": stats.ratio * node.median_ms, "latency_p90_ms": stats.ratio_p90 * node.median_ms,
        **peak_memory(content, num_threads=threads),
        "latency_raw_ms": stats.median_ms, "latency_ref_ratio": stats.ratio, "latency_ref_ms": node.median_ms,
        "latency_ref_sha256": node.sha256, "latency_ref_resolution": node.resolution,
        "latency_ref_mode": node.mode, "latency_ref_link": node.link,
        "latency_anchor_ms": node.anchor.median_ms, "latency_runs": stats.pairs, "latency_spread": stats.spread,
        "latency_cpus": stats.cpus, **hardware(threads),
    }


def device_task(content: bytes, rung: Rung, anchor: bytes, settings: dict[str, Any]) -> dict[str, Any]:
    """``measure_here`` alone on the machine (the node lock, as a trial's own latency measurement),
    with the Ray node id that ran it."""
    import ray

    from search.node_lock import exclusive

    with exclusive():
        values = measure_here(content, rung, anchor, settings)
    return {**values, "node": ray.get_runtime_context().get_node_id()}
