"""What filter pruning costs the official YOLOv4-tiny weights on coco128 val, without and with a short fine-tune.

Masks filters as ``search.prune_filters`` does (the plan at the target, every unit masked at once)
and scores the masked Keras model (the thin one computes the same, checked here on one image) on
the first ``--val-limit`` val images with the search's evaluator. Rows compare which filters go
and what their readers get instead:

- ``spread/zero``: ranked by the spread of the output (``filter_scores``, from the BN's statistics;
  the ranking of 2026-12-04), outputs zeroed;
- ``spread/fit``: the same ranking, each removed channel's least-squares fit on the kept ones folded
  into its readers (``search.filter_replacement.fold_replacements``);
- ``fit/fit``: what the code does now: the units the kept channels stand in for best
  (``choose_units``), their fits folded;
- ``fit/fit, global``: the same, but one greedy ranking over all layers decides how many each
  loses (``global_plan``: the fit's cost per filter), not the code's even spread.

Statistics come from ``STATISTICS_IMAGES`` coco128 train images, as in a trial.

    .venv/bin/python benchmarks/filter_pruning_accuracy.py [--real ../shared/real] [--resolution 320]
        [--val-limit 32] [--fine-tune-steps 60] [--fine-tune-targets 0.25,0.5]

Prints one line per row: map50, map, filters removed (the fine-tuned rows: the fraction removed).
Deterministic but for the fine-tune's threads.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import search.prune_filters as prune_filters  # noqa: E402
from search.compat import keras  # noqa: E402
from search.data.dataset import Split  # noqa: E402
from search.data.preprocess import split_arrays  # noqa: E402
from search.data.yolo_format import load_yolo_dataset  # noqa: E402
from search.filter_replacement import choose_units, reader_statistics  # noqa: E402
from search.models import get_family  # noqa: E402
from search.objectives.accuracy import measure_accuracy  # noqa: E402
from search.pruning import PruningSpec  # noqa: E402
from search.space import MeasureSpec  # noqa: E402

FAMILY = "yolov4_tiny"


def choose_by_spread(model, candidates, counts, **_):
    """The ranking of 2026-12-04: each cluster's lowest-spread units (``filter_scores``), no statistics."""
    scores = prune_filters.filter_scores(model, dense_layers=get_family(FAMILY).dense_layers(model))
    return [sorted(range(len(units)), key=lambda u: float(np.mean([scores[c][f] for c, f in units[u]])))[:count]
            for units, count in zip(candidates, counts)]


def global_plan(model, plan: prune_filters.FilterPlan, masks: prune_filters.FilterMasks) -> prune_filters.FilterPlan:
    """``plan`` with the removals of one greedy ranking over all units (``choose_units`` over every unit as
    one cluster: its picks in order, until the target's filters), each cluster's rounded to its step."""
    statistics = reader_statistics(model, {r for where in masks.readers.values() for r, _ in where}, masks.images)
    flat = [(c, unit) for c, cluster in enumerate(plan.clusters) for unit in cluster.units]
    order = choose_units(model, [[unit for _, unit in flat]], [len(flat)], readers=masks.readers,
                         statistics=statistics, gone=())[0]
    wanted, budget = [0] * len(plan.clusters), plan.target * plan.removable
    for i in order:
        c, unit = flat[i]
        if budget < len(unit):
            break
        wanted[c], budget = wanted[c] + 1, budget - len(unit)
    removals = []
    for cluster, want in zip(plan.clusters, wanted):
        allowed = [len(cluster.units) - kept for kept in range(cluster.step, len(cluster.units) + 1, cluster.step)]
        removals.append(min(allowed or [0], key=lambda r: abs(r - want)))
    return prune_filters.FilterPlan(plan.clusters, tuple(removals), plan.target)


def masked(model, family, images, *, target: float, choose: str, fold: bool, spread: str = "even"):
    """A copy of ``model`` with the plan's filters at ``target`` masked; (copy, the masks).
    ``choose``: "fit" (the code) or "spread"; ``fold``: False zeroes the outputs without a fit;
    ``spread``: "even" is the code's plan (every cluster loses ``target``), "global" is ``global_plan``."""
    wide = keras.models.clone_model(model)
    wide.set_weights(model.get_weights())
    spec = PruningSpec(schedule="constant", target_sparsity=target, structure="filters")
    plan = prune_filters.filter_plan(wide, spec, family=family)
    masks = prune_filters.FilterMasks(wide, plan, readers=family.channel_readers(wide), images=images)
    if spread == "global":
        masks.plan = global_plan(wide, plan, masks)
    current = prune_filters.choose_units, prune_filters.fold_replacements
    if choose == "spread":
        prune_filters.choose_units = choose_by_spread
    if not fold:
        prune_filters.fold_replacements = lambda *args, **kwargs: None
    try:
        masks.update(1.0)
        masks.apply()
    finally:
        prune_filters.choose_units, prune_filters.fold_replacements = current
    return wide, masks


def main(argv: list[str] | None = None) -> int:
    default_real = Path(__file__).resolve().parents[2] / "shared" / "real"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, default=default_real, help="folder with darknet/ and coco128/")
    parser.add_argument("--resolution", type=int, default=320)
    parser.add_argument("--val-limit", type=int, default=32)
    parser.add_argument("--fine-tune-steps", type=int, default=60, help="0: no fine-tune rows")
    parser.add_argument("--fine-tune-targets", default="0.25,0.5", help="filter fractions fine-tuned (each schedule)")
    args = parser.parse_args(argv)

    dataset = load_yolo_dataset(args.real / "coco128" / "data.yaml")
    val = Split(dataset.val.name, dataset.val.examples[: args.val_limit])
    family = get_family(FAMILY)
    model, num_classes = family.load_pretrained(args.real / "darknet" / "yolov4-tiny.cfg",
                                                args.real / "darknet" / "yolov4-tiny.weights", resolution=args.resolution)
    heads, m = family.heads(num_classes), MeasureSpec()
    train = split_arrays(dataset.train, resolution=args.resolution, mode="stretch")
    print(f"coco128 {val.name}: {len(val.examples)} images; {args.resolution} px; Keras, no fine-tune unless said; "
          f"statistics from {min(len(train.images), prune_filters.STATISTICS_IMAGES)} train images")

    def report(label: str, scored, removed: int | str = 0) -> None:
        start = time.perf_counter()
        result = measure_accuracy(lambda image: [h[0].numpy() for h in scored(image[None], training=False)], val,
                                  heads=heads, resolution=args.resolution, preprocessing="stretch",
                                  score_threshold=m.score_threshold, iou_threshold=m.iou_threshold,
                                  max_detections=m.max_detections)
        print(f"{label:<34} map50 {result['map50']:.4f}  map {result['map']:.4f}  removed {removed}  "
              f"[{time.perf_counter() - start:.0f}s]", flush=True)

    report("original", model)
    rows = [("spread", False, "even"), ("spread", True, "even"), ("fit", True, "even"), ("fit", True, "global")]
    for target in (0.1, 0.25, 0.5):
        for choose, fold, spread in rows:
            start = time.perf_counter()
            wide, masks = masked(model, family, train.images, target=target, choose=choose, fold=fold, spread=spread)
            label = f"mask {target:.0%} {choose}/{'fit' if fold else 'zero'}{', global' if spread == 'global' else ''}"
            report(f"{label} [{time.perf_counter() - start:.0f}s]", wide, len(masks.removed()))
    wide, masks = masked(model, family, train.images, target=0.5, choose="fit", fold=True)
    thin = family.thin(wide, masks.removed())
    image = np.random.default_rng(0).random((1, args.resolution, args.resolution, 3), np.float32)
    gap = max(float(np.abs(a - b).max()) for a, b in zip(wide(image), thin(image)))
    print(f"thin vs masked at 50%: largest output difference {gap:.2e}")

    if args.fine_tune_steps:
        from search.prune import prune_and_fine_tune

        specs = {"no pruning": PruningSpec()}  # what the fine-tune alone does to the official weights
        for target in (float(t) for t in args.fine_tune_targets.split(",")):
            for schedule in ("constant", "polynomial_decay"):
                specs[f"{target:.0%} filters, {schedule}"] = PruningSpec(schedule=schedule, target_sparsity=target,
                                                                        structure="filters")
        for label, spec in specs.items():
            start = time.perf_counter()
            tuned, sparsity = prune_and_fine_tune(
                model, spec, steps=args.fine_tune_steps, batch_size=4, learning_rate=1e-4,
                images=train.images, boxes=train.boxes, classes=train.classes,
                dense_layers=family.dense_layers(model), heads=heads, family=family)
            report(f"{label} + {args.fine_tune_steps} steps [{time.perf_counter() - start:.0f}s]", tuned,
                   f"{sparsity:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
