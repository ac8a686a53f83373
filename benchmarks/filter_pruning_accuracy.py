"""What filter pruning costs the official YOLOv4-tiny weights on coco128 val, without and with a short fine-tune.

Masks filters as ``search.prune_filters`` does (the plan at the target, every unit masked at once)
and scores the masked Keras model (the thin one computes the same, checked here on one image) on
the first ``--val-limit`` val images with the search's evaluator. Rows compare how filters are
ranked and what their outputs become:

- ``l1/zero``: before: the BN-folded kernel L1 norm ranks, a removed filter's output becomes 0;
- ``l1/mean``: the same ranking, a removed filter's mean output folded into its readers;
- ``std/zero``: ranked by the spread of the output (``output_statistics``), outputs zeroed;
- ``std/mean``: what the code does now (ranked by spread, mean folded into the readers);
- ``global``: the same, but one ranking over all the layers decides how many each loses (``global_plan``),
  not the code's even spread (every cluster loses the target's fraction).

    .venv/bin/python benchmarks/filter_pruning_accuracy.py [--real ../shared/real] [--resolution 320]
        [--val-limit 32] [--fine-tune-steps 60] [--fine-tune-target 0.25]

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
from search.models import get_family  # noqa: E402
from search.objectives.accuracy import measure_accuracy  # noqa: E402
from search.pruning import PruningSpec  # noqa: E402
from search.space import MeasureSpec  # noqa: E402

FAMILY = "yolov4_tiny"


def folded_l1_scores(model, *, dense_layers):
    """The ranking before: each filter's kernel L1 norm times its BN's |gamma| / sqrt(var + eps)."""
    scores = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.name not in dense_layers:
            l1 = np.abs(layer.get_weights()[0]).sum(axis=(0, 1, 2))
            norm = prune_filters._norm_after(layer)
            if norm is not None:
                gamma, _, _, variance = norm.get_weights()
                l1 = l1 * np.abs(gamma) / np.sqrt(variance + norm.epsilon)
            scores[layer.name] = l1
    return scores


RANKINGS = {"l1": folded_l1_scores, "std": prune_filters.filter_scores}  # name -> filter_scores(model, dense_layers=)


def global_plan(plan: prune_filters.FilterPlan, scores) -> prune_filters.FilterPlan:
    """``plan`` with the removals of one ranking over all units (lowest spread first, until the target's
    filters), each cluster's rounded down to its step, instead of the same fraction of every cluster."""
    units = sorted((float(np.mean([scores[conv][f] for conv, f in unit])), len(unit), i)
                   for i, cluster in enumerate(plan.clusters) for unit in cluster.units)
    wanted, budget = [0] * len(plan.clusters), plan.target * plan.removable
    for _, size, i in units:
        if budget < size:
            break
        wanted[i], budget = wanted[i] + 1, budget - size
    removals = []
    for cluster, want in zip(plan.clusters, wanted):
        allowed = [len(cluster.units) - kept for kept in range(cluster.step, len(cluster.units) + 1, cluster.step)]
        removals.append(max([r for r in allowed if r <= want] or [0]))
    return prune_filters.FilterPlan(plan.clusters, tuple(removals), plan.target)


def masked(model, family, *, target: float, ranking: str, fold: bool, fraction: float = 1.0,
           spread: str = "even"):
    """A copy of ``model`` with ``fraction`` of the plan's filters at ``target`` masked; (copy, the masks).
    ``spread`` "even" is the code's plan (every cluster loses ``target``), "global" is ``global_plan``."""
    wide = keras.models.clone_model(model)
    wide.set_weights(model.get_weights())
    current = prune_filters.filter_scores
    prune_filters.filter_scores = RANKINGS[ranking]  # the plan and the masks rank with it
    try:
        spec = PruningSpec(schedule="constant", target_sparsity=target, structure="filters")
        plan = prune_filters.filter_plan(wide, spec, family=family)
        if spread == "global":
            plan = global_plan(plan, RANKINGS[ranking](wide, dense_layers=family.dense_layers(wide)))
        masks = prune_filters.FilterMasks(wide, plan, dense_layers=family.dense_layers(wide),
                                          absorb=family.absorb_constants if fold else None)
        masks.update(fraction)
        masks.apply()
    finally:
        prune_filters.filter_scores = current
    return wide, masks


def main(argv: list[str] | None = None) -> int:
    default_real = Path(__file__).resolve().parents[2] / "shared" / "real"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, default=default_real, help="folder with darknet/ and coco128/")
    parser.add_argument("--resolution", type=int, default=320)
    parser.add_argument("--val-limit", type=int, default=32)
    parser.add_argument("--fine-tune-steps", type=int, default=60, help="0: no fine-tune rows")
    parser.add_argument("--fine-tune-target", type=float, default=0.25)
    args = parser.parse_args(argv)

    dataset = load_yolo_dataset(args.real / "coco128" / "data.yaml")
    val = Split(dataset.val.name, dataset.val.examples[: args.val_limit])
    family = get_family(FAMILY)
    model, num_classes = family.load_pretrained(args.real / "darknet" / "yolov4-tiny.cfg",
                                                args.real / "darknet" / "yolov4-tiny.weights", resolution=args.resolution)
    heads, m = family.heads(num_classes), MeasureSpec()
    print(f"coco128 {val.name}: {len(val.examples)} images; {args.resolution} px; Keras, no fine-tune unless said")

    def report(label: str, scored, removed: int | str = 0) -> None:
        start = time.perf_counter()
        result = measure_accuracy(lambda image: [h[0].numpy() for h in scored(image[None], training=False)], val,
                                  heads=heads, resolution=args.resolution, preprocessing="stretch",
                                  score_threshold=m.score_threshold, iou_threshold=m.iou_threshold,
                                  max_detections=m.max_detections)
        print(f"{label:<34} map50 {result['map50']:.4f}  map {result['map']:.4f}  removed {removed}  "
              f"[{time.perf_counter() - start:.0f}s]", flush=True)

    report("original", model)
    report("mask 0% std/mean", masked(model, family, target=0.1, ranking="std", fold=True, fraction=0.0)[0])
    for ranking, fold in [("l1", False), ("l1", True), ("std", False), ("std", True)]:
        report(f"mask 10% {ranking}/{'mean' if fold else 'zero'}",
               *(lambda w, k: (w, len(k.removed())))(*masked(model, family, target=0.1, ranking=ranking, fold=fold)))
    for target in (0.25, 0.5):
        report(f"mask {target:.0%} std/zero",
               *(lambda w, k: (w, len(k.removed())))(*masked(model, family, target=target, ranking="std", fold=False)))
        wide, masks = masked(model, family, target=target, ranking="std", fold=True)
        report(f"mask {target:.0%} std/mean", wide, len(masks.removed()))
    for target in (0.1, 0.25, 0.5):  # hypothesis: one ranking over all layers spares the layers that matter
        report(f"mask {target:.0%} std/mean, global",
               *(lambda w, k: (w, len(k.removed())))(*masked(model, family, target=target, ranking="std", fold=True,
                                                              spread="global")))
    wide, masks = masked(model, family, target=0.5, ranking="std", fold=True)
    thin = family.thin(wide, masks.removed())
    image = np.random.default_rng(0).random((1, args.resolution, args.resolution, 3), np.float32)
    gap = max(float(np.abs(a - b).max()) for a, b in zip(wide(image), thin(image)))
    print(f"thin vs masked at 50%: largest output difference {gap:.2e}")

    if args.fine_tune_steps:
        from search.prune import prune_and_fine_tune

        train = split_arrays(dataset.train, resolution=args.resolution, mode="stretch")
        specs = {"no pruning": PruningSpec(),  # what the fine-tune alone does to the official weights
                 f"{args.fine_tune_target:.0%} filters, constant": PruningSpec(
                     schedule="constant", target_sparsity=args.fine_tune_target, structure="filters")}
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
