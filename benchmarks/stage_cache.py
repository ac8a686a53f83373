"""What the stage cache saves: one full trial (prune + fine-tune computed) against the same trial
with the stage found in the cache. Prints both trials' stage timings and the cost ratio; the
issue's goal is a cached trial at most 15% of a full one.

Both trials run one after the other in one worker process, as Ray Tune runs them
(``reuse_actors=True`` in ``search.tuner``), each under the node lock as on a cluster node
(``guard=node_guard``): the process imports TensorFlow once, before either trial, and that
start-up is printed on its own line. Each trial's wall time is everything ``run_trial`` took in
that process; its stages are ``TrialResult.seconds`` (the pipeline's steps and measurements).

    .venv/bin/python benchmarks/stage_cache.py                      # the full space's settings
    .venv/bin/python benchmarks/stage_cache.py --space spaces/smoke.yaml --resolution 64

The base weights are untrained (the timing does not depend on them), the data is the space's.
Timings on a shared machine are noisy: run it on an idle one for numbers to quote.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _worker(params, context, trials_dir: str, trial_ids: list[str]) -> tuple[float, list[dict]]:
    """In a new process: import what a trial imports (timed), then run the trials one by one.
    Each trial is returned as ``{"stage_cache", "time_<stage>_s" ..., "time_wall_s"}``."""
    import time

    started = time.perf_counter()
    import search.compat  # noqa: F401  TensorFlow and tf_keras, as the first trial of a worker loads them
    from search.node_lock import node_guard
    from search.trial import run_trial

    start_up = time.perf_counter() - started
    results = []
    for trial_id in trial_ids:
        out_dir = Path(trials_dir) / trial_id
        out_dir.mkdir(parents=True)
        started = time.perf_counter()
        result = run_trial(params, context, out_dir=out_dir, guard=node_guard)
        wall = time.perf_counter() - started  # everything the trial took in its process
        results.append({"stage_cache": result.stage_cache, **{f"time_{step}_s": s for step, s in result.seconds.items()},
                        "time_wall_s": wall})
    return start_up, results


def _in_one_worker(params, context, trials_dir: str, trial_ids: list[str]) -> tuple[float, list[dict]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_worker, params, context, trials_dir, trial_ids).result()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="spaces/yolov4_tiny.yaml")
    parser.add_argument("--resolution", type=int, default=160)  # the middle of the full space's choices
    parser.add_argument("--quantization", default="int8")
    parser.add_argument("--calibration-size", type=int, default=64)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    from search.inputs import load_data
    from search.models import get_family
    from search.params import TrialParams
    from search.quantize import QUANT_MODES
    from search.space import load_space
    from search.trial import TrialContext

    space = load_space(args.space, tuple(args.overrides))
    dataset = load_data(space)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "base.h5"
        family = get_family(space.model.name)
        family.build(num_classes=dataset.num_classes, resolution=args.resolution).save_weights(str(weights))
        context = TrialContext(space=space, dataset=dataset, base_weights=str(weights), stages_dir=str(Path(tmp) / "stages"))
        params = TrialParams(
            resolution=args.resolution, pruning_schedule="polynomial_decay", target_sparsity=0.5,
            pruning_structure="unstructured", quantization=args.quantization,
            calibration_size=args.calibration_size if QUANT_MODES[args.quantization].needs_calibration else None,
        )
        print(f"{args.space}: {params.describe()}, fine-tune {space.fine_tune.steps} steps x {space.fine_tune.batch_size}, "
              f"{len(dataset.val.examples)} val images, {space.budget.cpus_per_trial} thread(s)")
        start_up, (full, cached) = _in_one_worker(params, context, str(Path(tmp) / "trials"), ["full", "cached"])

    assert (full["stage_cache"], cached["stage_cache"]) == ("miss", "hit")
    stages = [key for key in full if key.startswith("time_") and key != "time_wall_s"]  # every stage the trial timed
    for trial in (full, cached):
        trial["time_stages_s"] = sum(trial.get(stage, 0.0) for stage in stages)
    print(f"{'stage':<18}{'full':>10}{'cached':>10}")
    for stage in (*stages, "time_stages_s", "time_wall_s"):
        print(f"{stage:<18}{full.get(stage, 0.0):>9.1f}s{cached.get(stage, 0.0):>9.1f}s")
    ratio = cached["time_stages_s"] / full["time_stages_s"]
    wall = cached["time_wall_s"] / full["time_wall_s"]
    print(f"worker start-up (importing TensorFlow), paid once per worker process: {start_up:.1f}s")
    print(f"cached / full trial: {ratio:.1%} of the stages, {wall:.1%} of the wall time (goal <= 15%); "
          f"fine-tune alone: {cached['time_fine_tune_s'] / full['time_fine_tune_s']:.1%}")
    print(f"if every trial paid the start-up too (a fresh process per trial): "
          f"{(cached['time_wall_s'] + start_up) / (full['time_wall_s'] + start_up):.1%}")


if __name__ == "__main__":
    main()
