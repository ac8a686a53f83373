"""Measuring a trial's model on the user's devices: one Ray task per device target.

A device joins the cluster offering a custom resource and no CPUs
(``ray start --address HEAD:6379 --resources '{"device:rpi5": 1}' --num-cpus 0``). Trials ask for
CPUs, so none of their stages can land there; a target's measurement is a zero-CPU task that asks
for one unit of the target's resource, so it runs only on that device, one at a time when the
device offers 1. It receives the ``.tflite`` bytes, the latency reference's rung for the model's
resolution and reference mode and the anchor's (``search.timing.rungs``: a device cannot build them), and returns what
``search.timing.on_node`` measured with the node's hardware. The device has this package
installed without its dependencies (``pip install --no-deps .``) and the ``[device]`` extra's
packages (numpy, ai-edge-litert, ray): what the task imports needs nothing else, and no
TensorFlow. (Ray cannot ship a local folder with a task submitted from a trial's worker, only
with the whole job, which would move every trial onto an uploaded copy of the code.)

The wait is bounded (``measure.target_timeout_s``): a device that is busy for longer, or gone,
leaves the target's values missing with the reason in ``error@<target>``; the trial is kept, and
the search goes on. ``resume`` measures such a trial's model again on the targets it missed
(``unmeasured_targets``), once the device is back.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from search.objectives.targets import column
from search.timing.on_node import device_task
from search.timing.reference import reference_mode

LATENCY_SETTINGS = ("latency_threads", "latency_warmup", "latency_min_runs", "latency_min_seconds",
                    "latency_max_seconds", "latency_reference_seconds")


# Ray finds the function by its module on the device, so it lives in search.timing.on_node, which
# imports only what a device has. max_retries=0: a lost device is reported, not retried on another.
_measure_on_device = ray.remote(num_cpus=0, max_retries=0)(device_task)


def _suffixed(values: dict[str, Any], target: str) -> dict[str, Any]:
    return {**{column(k, target): v for k, v in values.items()}, column("error", target): ""}


def unmeasured_targets(metrics: dict[str, Any], devices) -> list:
    """The device targets of ``devices`` that left a reason instead of values in ``metrics``."""
    return [t for t in devices if metrics.get(column("error", t.name))]


def measure_on_targets(content: bytes, *, resolution: int, mode: str, measure, references, echo=None,
                       devices=None) -> dict[str, Any]:
    """Every device target's values for ``content``, a model at ``resolution`` converted in ``mode``
    (a quantization mode: it picks the rung's reference mode), of ``devices`` (by default all of
    ``measure.devices``), suffixed ``@<target>``; a target that did not answer within
    ``measure.target_timeout_s`` (or whose node was lost) gets only ``error@<target>``.
    ``references``: the driver's ``LatencyReferences``; only the rung the model needs and the
    anchor travel."""
    devices = measure.devices if devices is None else devices
    if not devices:
        return {}
    settings = {key: getattr(measure, key) for key in LATENCY_SETTINGS}
    rung = references.rung_for(resolution, reference_mode(mode))
    content_ref, rung_ref, anchor_ref = ray.put(content), ray.put(rung), ray.put(references.anchor_rung.content)
    # "DEFAULT": out of the trial's placement group (Tune's, a CPU bundle), which would capture it.
    pending = {t: _measure_on_device.options(resources={t.resource: 1}, scheduling_strategy="DEFAULT")
               .remote(content_ref, rung_ref, anchor_ref, settings) for t in devices}
    deadline = time.monotonic() + measure.target_timeout_s
    found: dict[str, Any] = {}
    for target, ref in pending.items():
        try:
            found.update(_suffixed(ray.get(ref, timeout=max(0.0, deadline - time.monotonic())), target.name))
            continue
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            why = (f"no node offering {target.resource} measured it within {measure.target_timeout_s:g} s "
                   f"(the device is busy with other trials' models, or gone)")
        except ray.exceptions.RayError as error:  # the device's node or worker died, or the measurement raised
            cause = getattr(error, "cause", None) or error
            first = (str(cause).strip().splitlines() or [""])[0][:200]
            why = f"the measurement on {target.resource} failed: {type(cause).__name__}: {first}"
        found[column("error", target.name)] = why
        if echo:
            echo(f"  {target.name}: {why}")
    return found
