"""What a person reads after a search: the front as a table, as CSV, and as plots.

Everything here consumes the value ``search.pareto.Front`` (records and indices); nothing here
decides what is on the front.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from search.files import write_bytes_atomic, write_text_atomic
from search.objectives import OBJECTIVES
from search.pareto import Front
from search.record import TrialRecord, csv_row, records_to_csv
from search.space import Space


def _fmt(name: str, value: Any) -> str:
    if value in ("", None):
        return "-"
    if name.startswith("size"):
        return f"{float(value) / 1e6:.2f} MB"
    if name.startswith("latency"):
        return f"{float(value):.1f} ms"
    if name in ("map50", "map", "sparsity", "param.target_sparsity"):
        return f"{float(value):.3f}"
    return str(value)


PARAM_COLUMNS = ("resolution", "pruning_schedule", "target_sparsity", "quantization", "calibration_size")


def _table_cells(record: TrialRecord, objectives: list[str]) -> dict[str, Any]:
    """The record as the front table shows it: id, the main parameters, the space's objectives, sparsity."""
    row = csv_row(record)
    return {"trial_id": record.trial_id, **{p: row[f"param.{p}"] for p in PARAM_COLUMNS},
            **{name: row[name] for name in objectives}, "sparsity": row["sparsity"]}


def summary_table(front: Front, space: Space) -> str:
    """The front as a fixed-width text table, most accurate first; the exported trial marked *."""
    objectives, accuracy = space.metric_names, space.export.accuracy
    order = sorted(front.members, key=lambda i: -front.completed[i].value(accuracy))
    cells = [_table_cells(front.completed[i], objectives) for i in order]
    header = ["", "trial_id", *PARAM_COLUMNS, *objectives, "sparsity"]
    lines = [[("*" if i == front.exported else ""), *(_fmt(k, v) for k, v in c.items())] for i, c in zip(order, cells)]
    widths = [max(len(str(row[k])) for row in [header, *lines]) for k in range(len(header))]
    render = lambda row: "  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([render(header), *map(render, lines)])


UNITS = {"bytes": ("MB", 1e-6), "_ms": ("ms", 1.0)}  # objective name ending -> axis unit, scale


def plot_axes(space: Space) -> list[tuple[str, str, float]]:
    """(objective, axis label, scale) of each plot's x axis: the space's first size objective and
    its first latency objective, each plotted against the accuracy the export ranks by."""
    axes = []
    for kind in ("size", "latency"):
        name = next((n for n in space.metric_names if OBJECTIVES[n].kind == kind), None)
        if name is not None:
            unit, scale = next((u for end, u in UNITS.items() if name.endswith(end)), ("", 1.0))
            axes.append((name, f"{name} ({unit})" if unit else name, scale))
    return axes


def _annotation(record: TrialRecord) -> str:
    pruned = f" s={record.sparsity or 0:.0%}" if record.params.get("pruning_schedule", "none") != "none" else ""
    return f"{record.params['quantization']}@{record.params['resolution']}{pruned}"


def plot_front(front: Front, space: Space, path: Path) -> None:
    """Accuracy vs size and accuracy vs latency, every completed trial, the front highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accuracy, axes_spec = space.export.accuracy, plot_axes(space)
    fig, axes = plt.subplots(1, max(1, len(axes_spec)), figsize=(6 * max(1, len(axes_spec)), 4.8), squeeze=False)
    for ax, (x_key, x_label, scale) in zip(axes[0], axes_spec):
        xs = [r.value(x_key) * scale for r in front.completed]
        ys = [r.value(accuracy) for r in front.completed]
        ax.scatter(xs, ys, c="lightgrey", edgecolors="grey", label="trial", zorder=2)
        ax.scatter([xs[i] for i in front.members], [ys[i] for i in front.members], c="tab:red", label="Pareto front", zorder=3)
        for i in front.members:
            ax.annotate(_annotation(front.completed[i]), (xs[i], ys[i]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        if front.exported is not None:
            ax.scatter([xs[front.exported]], [ys[front.exported]], marker="*", s=260, c="gold", edgecolors="black",
                       label=f"exported ({space.export.rule})", zorder=4)
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"{accuracy} ({OBJECTIVES[accuracy].description.split(' of')[0]})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{space.name}: {len(front.completed)} completed trials, {len(front.members)} on the front "
                 f"({', '.join(space.metric_names)})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(front: Front, space: Space, run_dir: Path) -> None:
    """``pareto.csv``, ``report.png`` and a self-contained ``report.html``."""
    write_text_atomic(run_dir / "pareto.csv", records_to_csv(front.records))
    if not front.completed:
        return
    png = run_dir / "report.png"
    tmp = run_dir / ".report.tmp.png"
    plot_front(front, space, tmp)
    write_bytes_atomic(png, tmp.read_bytes())
    tmp.unlink()
    image = base64.b64encode(png.read_bytes()).decode()
    table = html.escape(summary_table(front, space))
    page = (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(space.name)} search</title>"
        f"<h1>{html.escape(space.name)}: Pareto front</h1>"
        f"<p>Objectives: {html.escape(', '.join(f'{o.name} ({o.direction})' for o in space.objectives))}. "
        f"Exported (*): rule <b>{html.escape(space.export.rule)}</b>.</p>"
        f"<img src='data:image/png;base64,{image}' style='max-width:100%'>"
        f"<pre>{table}</pre><p>All trials: trials.csv; the front: pareto.csv.</p>"
    )
    write_text_atomic(run_dir / "report.html", page)
