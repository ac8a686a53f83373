"""What a person reads after a search: the front as a table, as CSV, as a plot, and as a page.

Everything here consumes the value ``search.pareto.Front`` (records, indices, the baseline and
why the export rule picked what it picked); nothing here decides what is on the front. The page
is built in two steps, as Optuna keeps ``_get_pareto_front_info`` apart from drawing:
``report_data`` turns the front, the space, the hypervolume history and the study into plain
values (tested without a browser), and ``render_html`` draws them with plotly, its JavaScript
inlined so that the page works offline.
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.baseline import COMPARISONS
from search.files import write_bytes_atomic, write_text_atomic
from search.objectives import OBJECTIVES
from search.pareto import Front
from search.record import TrialRecord, csv_row, records_to_csv, target_columns
from search.space import Space


def _fmt(name: str, value: Any) -> str:
    if value in ("", None):
        return "-"
    if name in COMPARISONS:
        return f"{float(value):.2f}" if COMPARISONS[name].kind == "drop" else f"{float(value):.2f}x"
    if name.startswith("size"):
        return f"{float(value) / 1e6:.2f} MB"
    if name.startswith("latency"):
        return f"{float(value):.1f} ms"
    if name in ("map50", "map", "sparsity", "param.target_sparsity"):
        return f"{float(value):.3f}"
    return str(value)


PARAM_COLUMNS = ("resolution", "pruning_schedule", "target_sparsity", "pruning_structure", "quantization", "calibration_size")
BASE_MARK, EXPORTED_MARK = "base", "*"


# --- the front as a table -------------------------------------------------------------------------


def _comparison_columns(space: Space, records: Sequence[TrialRecord]) -> list[str]:
    """The comparisons with the baseline of the space's objectives that some row has."""
    return [name for name, c in COMPARISONS.items()
            if c.metric in space.metric_names and any(name in r.metrics for r in records)]


def front_table(front: Front, space: Space) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows: the baseline (marked "base") first, then the front, most
    accurate first, the exported trial marked "*"; the objectives, then the drops and ratios
    against the baseline."""
    accuracy = space.export.accuracy
    order = sorted(front.members, key=lambda i: -front.completed[i].value(accuracy))
    rows = [(BASE_MARK, front.baseline)] if front.baseline is not None else []
    rows += [(EXPORTED_MARK if i == front.exported else "", front.completed[i]) for i in order]
    compared = _comparison_columns(space, [r for _, r in rows])
    names = [*(f"param.{p}" for p in PARAM_COLUMNS), *space.metric_names, *compared, "sparsity"]
    header = ["", "trial_id", *PARAM_COLUMNS, *space.metric_names, *compared, "sparsity"]
    body = []
    for mark, record in rows:
        cells = {**csv_row(record, target_columns([record])), **{c: record.metrics.get(c) for c in compared}}
        body.append([mark, record.trial_id, *(_fmt(n, cells.get(n)) for n in names)])
    return header, body


def summary_table(front: Front, space: Space) -> str:
    """The front as a fixed-width text table (``front_table``), for the run's printout."""
    header, rows = front_table(front, space)
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(len(header))]
    render = lambda row: "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([render(header), *map(render, rows)])


# --- the static plot (report.png) -----------------------------------------------------------------

UNITS = {"bytes": ("MB", 1e-6), "_ms": ("ms", 1.0)}  # objective name ending -> axis unit, scale


def plot_axes(space: Space) -> list[tuple[str, str, float]]:
    """(objective, axis label, scale) of each plot's x axis: the space's first size objective and
    its first latency objective, each plotted against the accuracy the export ranks by."""
    axes = []
    for kind in ("size", "latency"):
        name = next((n for n in space.metric_names if space.objective_table[n].kind == kind), None)
        if name is not None:
            unit, scale = next((u for end, u in UNITS.items() if name.endswith(end)), ("", 1.0))
            axes.append((name, f"{name} ({unit})" if unit else name, scale))
    return axes


def _accuracy_label(accuracy: str) -> str:
    return f"{accuracy} ({OBJECTIVES[accuracy].description.split(' of')[0]})"


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
        ax.set_ylabel(_accuracy_label(accuracy))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{space.name}: {len(front.completed)} completed trials, {len(front.members)} on the front "
                 f"({', '.join(space.metric_names)})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the page's data (report.html), plain values ----------------------------------------------------

ROLES = ("trial", "infeasible", "front", "baseline", "exported")  # drawn in this order, the last on top


@dataclass(frozen=True)
class Series:
    """Markers drawn alike (one ``ROLES`` entry): per trial its x, y, id and hover text."""

    role: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    ids: tuple[str, ...]
    hover: tuple[str, ...]


@dataclass(frozen=True)
class Limit:
    """A constraint drawn on a panel: a vertical ("x") or horizontal ("y") line."""

    axis: str
    value: float
    label: str


@dataclass(frozen=True)
class Panel:
    """Accuracy (y) against one size or latency objective (x)."""

    x_label: str
    y_label: str
    series: tuple[Series, ...]
    limits: tuple[Limit, ...]


@dataclass(frozen=True)
class ReportData:
    title: str
    facts: tuple[str, ...]  # the lines under the title: objectives, baseline, export and why, limits, hypervolume
    panels: tuple[Panel, ...]
    history: tuple[dict, ...]  # {"trials", "seconds", "hypervolume"} after each trial
    importances: dict[str, dict[str, float]]  # objective -> parameter -> importance (each sums to 1)
    importance_note: str  # how they were computed, or why there are none
    table_header: tuple[str, ...]
    table_rows: tuple[tuple[str, ...], ...]


def _role(front: Front, index: int) -> str:
    record = front.completed[index]
    if record.feasible is False:
        return "infeasible"
    return "front" if index in front.members else "trial"


def _hover(record: TrialRecord, space: Space, role: str) -> str:
    """The trial's id, what it is, its parameters and every metric the report knows about."""
    metrics = [*space.metric_names, *(c.metric for c in space.constraints), *COMPARISONS]
    lines = [f"<b>{html.escape(record.trial_id)}</b> ({role})"]
    lines += [f"{html.escape(k)} = {html.escape(_fmt(k, v))}" for k, v in record.params.items()]
    lines += [f"{name} = {_fmt(name, record.metrics[name])}" for name in dict.fromkeys(metrics) if name in record.metrics]
    lines.append(f"sparsity = {_fmt('sparsity', record.sparsity)}")
    if record.feasible is not None:
        lines.append(f"meets the constraints: {'yes' if record.feasible else 'no'}")
    return "<br>".join(lines)


def _series(role: str, records: Sequence[TrialRecord], space: Space, x_name: str, scale: float) -> Series:
    accuracy = space.export.accuracy
    points = [r for r in records if x_name in r.metrics and accuracy in r.metrics]
    return Series(role, tuple(r.value(x_name) * scale for r in points), tuple(r.value(accuracy) for r in points),
                  tuple(r.trial_id for r in points), tuple(_hover(r, space, role) for r in points))


def _limits(space: Space, baseline: TrialRecord | None, x_name: str, scale: float) -> tuple[Limit, ...]:
    """The constraints that bound this panel's axes: on an objective itself, or on a drop or a
    ratio against the baseline (drawn where the baseline puts it)."""
    accuracy, limits = space.export.accuracy, []
    for c in space.constraints:
        label = f"{c.key} {_fmt(c.metric, c.limit)}"
        if c.metric == x_name:
            limits.append(Limit("x", c.limit * scale, label))
        elif c.metric == accuracy:
            limits.append(Limit("y", c.limit, label))
        elif c.metric in COMPARISONS and baseline is not None:
            comparison = COMPARISONS[c.metric]
            if comparison.metric == x_name and comparison.kind == "ratio" and x_name in baseline.metrics:
                limits.append(Limit("x", baseline.value(x_name) * c.limit * scale, label))
            elif comparison.metric == accuracy and comparison.kind == "drop" and accuracy in baseline.metrics:
                limits.append(Limit("y", baseline.value(accuracy) - c.limit / 100.0, label))
    return tuple(limits)


def _panels(front: Front, space: Space) -> tuple[Panel, ...]:
    groups: dict[str, list[TrialRecord]] = {role: [] for role in ROLES}
    for i, record in enumerate(front.completed):
        groups[_role(front, i)].append(record)
    groups["baseline"] = [front.baseline] if front.baseline is not None else []
    groups["exported"] = [front.exported_record] if front.exported_record is not None else []  # a star over its point
    panels = []
    for x_name, x_label, scale in plot_axes(space):
        series = [_series(role, groups[role], space, x_name, scale) for role in ROLES if groups[role]]
        panels.append(Panel(x_label, _accuracy_label(space.export.accuracy), tuple(series),
                            _limits(space, front.baseline, x_name, scale)))
    return tuple(panels)


def parameter_importances(study, space: Space) -> tuple[dict[str, dict[str, float]], str]:
    """Optuna's parameter importances for each objective and how they were computed, or none and why.

    Optuna's default evaluator ranks parameters by how they reach *low* target values, so a
    maximized objective is negated: the importances say what it takes to be good on each.
    """
    if study is None:
        return {}, "No Optuna study was given, so there are no parameter importances."
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 2:
        return {}, f"Parameter importances need at least 2 completed trials in the study, but it has {len(done)}."
    if len(study.directions) != len(space.objectives):
        return {}, (f"The study has {len(study.directions)} objectives but the space {len(space.objectives)}, "
                    "so its importances cannot be named.")
    importances = {}
    try:
        for i, objective in enumerate(space.objectives):
            sign = -1.0 if objective.direction == "maximize" else 1.0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the warning about the target's sign: set above
                found = optuna.importance.get_param_importances(study, target=lambda t, i=i, s=sign: s * t.values[i])
            importances[objective.name] = {name: float(value) for name, value in found.items()}
    except Exception as error:  # noqa: BLE001 -- a report without importances beats no report
        return {}, f"Parameter importances could not be computed: {type(error).__name__}: {error}"
    return importances, (f"Optuna's default importance evaluator over the study's {len(done)} completed trials: what "
                         "matters for being good on each objective (its bars sum to 1); few trials make it rough.")


def _facts(front: Front, space: Space, history: Sequence[dict]) -> tuple[str, ...]:
    facts = ["Objectives: " + ", ".join(f"{o.name} ({o.direction})" for o in space.objectives) + "."]
    if front.baseline is not None:
        values = ", ".join(f"{n} {_fmt(n, front.baseline.metrics.get(n))}" for n in space.metric_names)
        facts.append(f"Baseline (uncompressed float32 model, measured like a trial): {values}.")
    else:
        facts.append("No baseline was measured, so there are no drops or ratios against it.")
    exported = front.exported_record
    picked = f"trial {exported.trial_id}" if exported is not None else "nothing"
    note = f": {front.note}" if front.note else ""
    facts.append(f"Exported (star): {picked}, by the rule {space.export.rule}{note}.")
    constraints = space.constraints
    if constraints:
        infeasible = sum(r.feasible is False for r in front.completed)
        limits = ", ".join(f"{c.key} {_fmt(c.metric, c.limit)}" for c in constraints)
        facts.append(f"Constraints: {limits}; {infeasible} of {len(front.completed)} trials do not meet them (marked x) "
                     "and are left out of the front and the export.")
    if history:
        last = history[-1]
        facts.append(f"Hypervolume of the front: {last['hypervolume']:.4g} after {last['trials']} trials "
                     f"and {last['seconds']:.0f} s.")
    return tuple(facts)


def report_data(front: Front, space: Space, *, history: Sequence[dict] = (), study=None) -> ReportData:
    """Everything the page shows, as plain values."""
    importances, importance_note = parameter_importances(study, space)
    header, rows = front_table(front, space)
    title = f"{space.name}: {len(front.completed)} completed trials, {len(front.members)} on the front"
    return ReportData(title, _facts(front, space, history), _panels(front, space), tuple(dict(h) for h in history),
                      importances, importance_note, tuple(header), tuple(tuple(r) for r in rows))


# --- the page, drawn (report.html) -----------------------------------------------------------------

# role -> (legend name, plotly marker): grey for the rest, crosses for what breaks a limit,
# red for the front, a black diamond for the baseline, a gold star for the export.
STYLES = {
    "trial": ("trial", dict(color="lightgrey", size=9, line=dict(color="grey", width=1))),
    "infeasible": ("breaks a constraint", dict(color="grey", size=10, symbol="x")),
    "front": ("Pareto front", dict(color="#d62728", size=10)),
    "baseline": ("baseline (float32)", dict(color="black", size=12, symbol="diamond")),
    "exported": ("exported", dict(color="gold", size=22, symbol="star", line=dict(color="black", width=1))),
}


def _front_figure(panels: Sequence[Panel]):
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, horizontal_spacing=0.06)
    for col, panel in enumerate(panels, start=1):
        for s in panel.series:
            name, marker = STYLES[s.role]
            fig.add_trace(go.Scatter(x=s.x, y=s.y, mode="markers", name=name, legendgroup=s.role, showlegend=col == 1,
                                     marker=marker, text=s.hover, customdata=s.ids, hoverinfo="text"), row=1, col=col)
        for limit in panel.limits:
            line = dict(line_dash="dash", line_color="#9467bd", annotation_text=limit.label, row=1, col=col)
            (fig.add_vline if limit.axis == "x" else fig.add_hline)(limit.value, **line)
        fig.update_xaxes(title_text=panel.x_label, row=1, col=col)
    if panels:
        fig.update_yaxes(title_text=panels[0].y_label, row=1, col=1)
    fig.update_layout(height=520, margin=dict(t=30), legend=dict(orientation="h", y=-0.18), hoverlabel=dict(align="left"))
    return fig


def _history_figure(history: Sequence[dict]):
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06)
    y = [h["hypervolume"] for h in history]
    for col, key, label in ((1, "trials", "completed trials"), (2, "seconds", "wall time (s)")):
        fig.add_trace(go.Scatter(x=[h[key] for h in history], y=y, mode="lines+markers", line_shape="hv",
                                 name=f"vs {label}", showlegend=False), row=1, col=col)
        fig.update_xaxes(title_text=label, row=1, col=col)
    fig.update_yaxes(title_text="hypervolume", row=1, col=1)
    fig.update_layout(height=360, margin=dict(t=30))
    return fig


def _importance_figure(importances: dict[str, dict[str, float]]):
    import plotly.graph_objects as go

    fig = go.Figure()
    params = list(dict.fromkeys(p for values in importances.values() for p in values))
    for objective, values in importances.items():
        fig.add_trace(go.Bar(x=params, y=[values.get(p, 0.0) for p in params], name=objective))
    fig.update_layout(barmode="group", height=380, margin=dict(t=30), yaxis_title="importance (sums to 1 per objective)")
    return fig


# Script errors go into the page itself (the <html> element's data-js-errors), where a headless
# browser's --dump-dom shows them to a test; console.error too, as plotly reports some there.
_ERROR_TRAP = """<script>
(function () {
  var errors = [];
  function record(text) {
    errors.push(String(text));
    document.documentElement.setAttribute("data-js-errors", JSON.stringify(errors));
  }
  window.onerror = function (message, source, line) { record(message + " (" + source + ":" + line + ")"); };
  window.addEventListener("unhandledrejection", function (event) { record("unhandled rejection: " + event.reason); });
  var consoleError = console.error;
  console.error = function () { record(Array.prototype.join.call(arguments, " ")); return consoleError.apply(console, arguments); };
})();
</script>"""

_STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; }
div.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { padding: 0.25em 0.5em; border-bottom: 1px solid #ddd; text-align: left; white-space: nowrap; }
tr.exported { background: #fff4c2; } tr.baseline { color: #555; font-style: italic; }
p.note { color: #555; }
</style>"""


def _table_html(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    kinds = {BASE_MARK: " class='baseline'", EXPORTED_MARK: " class='exported'"}
    body = "".join(f"<tr{kinds.get(row[0], '')}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<div class='scroll'><table id='front-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _figure_div(fig, div_id: str) -> str:
    import plotly.io

    return plotly.io.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                             config={"displaylogo": False, "responsive": True})


def render_html(data: ReportData) -> str:
    """The page: plotly's JavaScript inlined once (no CDN: it works offline), then each section."""
    from plotly.offline import get_plotlyjs

    sections = [f"<h1>{html.escape(data.title)}</h1>", *(f"<p>{html.escape(f)}</p>" for f in data.facts)]
    sections.append("<h2>Accuracy against size and latency</h2><p class='note'>Hover a point for its parameters "
                    "and metrics; click a legend entry to hide its points.</p>")
    sections.append(_figure_div(_front_figure(data.panels), "front-plot") if data.panels
                    else "<p>The space has no size or latency objective to plot accuracy against.</p>")
    sections.append("<h2>The front</h2>" + _table_html(data.table_header, data.table_rows))
    sections.append("<h2>Hypervolume of the front as the search went</h2>")
    sections.append(_figure_div(_history_figure(data.history), "hypervolume-plot") if data.history
                    else "<p>No hypervolume history was recorded.</p>")
    sections.append("<h2>Parameter importances per objective</h2>")
    if data.importances:
        sections.append(_figure_div(_importance_figure(data.importances), "importance-plot"))
    sections.append(f"<p class='note'>{html.escape(data.importance_note)}</p>")
    sections.append("<p class='note'>All trials: trials.csv; the front: pareto.csv; the same plot as an image: "
                    "report.png.</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(data.title)}</title>{_STYLE}"
            f"{_ERROR_TRAP}<script>{get_plotlyjs()}</script></head><body>{''.join(sections)}</body></html>")


def write_report(front: Front, space: Space, run_dir: Path, *, history: Sequence[dict] = (), study=None) -> None:
    """``pareto.csv``, ``report.png`` and a self-contained, interactive ``report.html``."""
    write_text_atomic(run_dir / "pareto.csv", records_to_csv(front.records))
    if not front.completed:
        return
    tmp = run_dir / ".report.tmp.png"
    plot_front(front, space, tmp)
    write_bytes_atomic(run_dir / "report.png", tmp.read_bytes())
    tmp.unlink()
    data = report_data(front, space, history=history, study=study)
    write_text_atomic(run_dir / "report.html", render_html(data))

