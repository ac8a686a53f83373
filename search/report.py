"""What a person reads after a search: the front as a table, as CSV, and as plots.

Everything here consumes the value ``Front`` (rows and indices, computed by ``search.pareto``);
nothing here decides what is on the front.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objectives import OBJECTIVES
from search.atomic import write_bytes_atomic, write_text_atomic
from search.pareto import pareto_front, pick_export
from search.record import rows_to_csv
from search.space import Space


@dataclass(frozen=True)
class Front:
    completed: list[dict[str, Any]]  # completed trials, in the order they finished
    members: list[int]  # indices into ``completed`` of the non-dominated trials
    exported: int | None  # index into ``completed`` of the trial the export rule picked

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [self.completed[i] for i in self.members]


def compute_front(rows: list[dict[str, Any]], space: Space) -> Front:
    completed = [r for r in rows if r["status"] == "completed"]
    values = [[float(r[name]) for name in space.metric_names] for r in completed]
    directions = [o.direction for o in space.objectives]
    members = pareto_front(values, directions)
    e = space.export
    exported = pick_export(
        values, space.metric_names, directions, rule=e.rule, accuracy=e.accuracy,
        max_size_bytes=e.max_size_bytes, max_latency_ms=e.max_latency_ms,
        size_bytes=[float(r["size_bytes"]) for r in completed], latency_ms=[float(r["latency_ms"]) for r in completed],
    ) if completed else None
    return Front(completed, members, exported)


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


TABLE_COLUMNS = ("trial_id", "param.resolution", "param.pruning_schedule", "param.target_sparsity", "param.quantization",
                 "param.calibration_size", "map50", "map", "size_bytes", "latency_ms", "sparsity")


def summary_table(front: Front) -> str:
    """The front as a fixed-width text table, most accurate first; the exported trial marked *."""
    header = ["", *(c.removeprefix("param.") for c in TABLE_COLUMNS)]
    order = sorted(front.members, key=lambda i: -float(front.completed[i]["map50"] or 0))
    lines = [[("*" if i == front.exported else ""), *(_fmt(c, front.completed[i][c]) for c in TABLE_COLUMNS)] for i in order]
    widths = [max(len(str(row[k])) for row in [header, *lines]) for k in range(len(header))]
    render = lambda row: "  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([render(header), *map(render, lines)])


def plot_front(front: Front, space: Space, path: Path) -> None:
    """Accuracy vs size and accuracy vs latency, every completed trial, the front highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accuracy = space.export.accuracy
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, (x_key, x_label, scale) in zip(axes, (("size_bytes", "size (MB)", 1e-6), ("latency_ms", "median latency (ms)", 1.0))):
        xs = [float(r[x_key]) * scale for r in front.completed]
        ys = [float(r[accuracy]) for r in front.completed]
        ax.scatter(xs, ys, c="lightgrey", edgecolors="grey", label="trial", zorder=2)
        fx = [xs[i] for i in front.members]
        fy = [ys[i] for i in front.members]
        ax.scatter(fx, fy, c="tab:red", label="Pareto front", zorder=3)
        for i in front.members:
            r = front.completed[i]
            pruned = f" s={float(r['sparsity']):.0%}" if r["param.pruning_schedule"] not in ("", "none") else ""
            ax.annotate(f"{r['param.quantization']}@{r['param.resolution']}{pruned}", (xs[i], ys[i]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
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
    write_text_atomic(run_dir / "pareto.csv", rows_to_csv(front.rows))
    if not front.completed:
        return
    png = run_dir / "report.png"
    tmp = run_dir / ".report.tmp.png"
    plot_front(front, space, tmp)
    write_bytes_atomic(png, tmp.read_bytes())
    tmp.unlink()
    image = base64.b64encode(png.read_bytes()).decode()
    table = html.escape(summary_table(front))
    page = (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(space.name)} search</title>"
        f"<h1>{html.escape(space.name)}: Pareto front</h1>"
        f"<p>Objectives: {html.escape(', '.join(f'{o.name} ({o.direction})' for o in space.objectives))}. "
        f"Exported (*): rule <b>{html.escape(space.export.rule)}</b>.</p>"
        f"<img src='data:image/png;base64,{image}' style='max-width:100%'>"
        f"<pre>{table}</pre><p>All trials: trials.csv; the front: pareto.csv.</p>"
    )
    write_text_atomic(run_dir / "report.html", page)
