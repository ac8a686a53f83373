"""Peak memory of the converted model on the trial's node: the resident memory that loading,
allocating and invoking it adds to a process (what Edge Impulse and Qualcomm AI Hub users read
as RAM).

Measured in a fresh child process (``search.timing.on_node.peak_memory``, the same code a device
target runs for ``memory_bytes@<target>``): in the trial's own process the allocator's leftovers of
earlier models would hide it. Alone on the node, as timing is: a child loading a model beside
another trial's latency measurement would disturb that measurement.
"""

from __future__ import annotations

from typing import Any

from search.objectives.objective import Artifact, MeasureContext, Measurement

__all__ = ["MEASUREMENT"]


def measure(artifact: Artifact, context: MeasureContext) -> dict[str, Any]:
    from search.timing.on_node import peak_memory

    return peak_memory(artifact.content, num_threads=context.measure.latency_threads)


def how(m, metrics: dict[str, Any]) -> str:
    return (f"peak resident memory added by loading, allocating and invoking the .tflite with "
            f"{m.latency_threads} thread(s) in LiteRT, in a fresh process on the trial's node (the resident "
            f"set before loading subtracted); peak_rss_bytes is the process's whole peak")


MEASUREMENT = Measurement("memory", values=("memory_bytes",), details=("peak_rss_bytes",), measure=measure, how=how,
                          alone=True)
