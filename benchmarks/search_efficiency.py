"""How many trials a sampler needs to find the front: samplers replayed on an exhaustive grid.

Two modes:

    .venv/bin/python benchmarks/search_efficiency.py record    # once, slow: every point of the grid space
    .venv/bin/python benchmarks/search_efficiency.py replay    # seconds: samplers x seeds x budgets

``record`` enumerates every point the define-by-run space of ``benchmarks/grid/space.yaml`` can
produce (``Space.suggest``, conditional parameters included), runs each through the trial
pipeline in this process (``search.trial.run_trial``, one at a time, the stage cache making it one
fine-tune per resolution and pruning setting), measures the baseline (``run_baseline``), and
writes ``benchmarks/grid/trials.csv`` (the columns of a run's ``trials.csv``, the baseline first)
and ``benchmarks/grid/README.md`` (how it was made). It resumes: points already in the table are
not run again, so an interrupted record continues where it stopped.

``replay`` runs plain Optuna studies (no Ray) whose objective looks the proposed point up in the
table: the sampler proposes through the project's own ``Space.suggest`` on the grid space, so it
sees the product's conditional structure. For every sampler, seed and budget (a fraction of the
grid's size), the score is the hypervolume of the front found over that of the whole grid's front
(``search.hypervolume``, normalised by the recorded baseline). A budget counts proposals, repeats
included: a real search pays for a repeated point too.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.baseline import BASELINE_ID  # noqa: E402  (after the path: run as a script)

GRID_DIR = ROOT / "benchmarks" / "grid"
SPACE = GRID_DIR / "space.yaml"
TABLE = GRID_DIR / "trials.csv"
NOTES = GRID_DIR / "README.md"
SPACE_LINE = "space file sha256: "  # the notes' line that ties the table to the space it was recorded from

BUDGETS = (0.05, 0.10, 0.15, 0.25, 0.50)  # fractions of the grid's size
SEEDS = tuple(range(10))
GOAL_RATIO, GOAL_BUDGET = 0.95, 0.25  # the default must reach 95% of the grid's hypervolume in 25% of its trials


# ---------------------------------------------------------------------------------------------
# Every point of a define-by-run space.


class _Enumerator:
    """An Optuna trial look-alike that answers each question with a planned choice.

    ``path`` holds the index of the answer to each question in the order they are asked; past
    its end the first choice is taken, and every question asked is remembered with its choices,
    so the caller can plan the siblings. Finite dimensions only: a grid has a last point.
    """

    def __init__(self, path: tuple[int, ...]):
        self.path, self.asked, self.params = path, [], {}

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        index = self.path[len(self.asked)] if len(self.asked) < len(self.path) else 0
        self.asked.append(len(choices))
        self.params[name] = choices[index]
        return choices[index]

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        return self.suggest_categorical(name, list(range(low, high + 1, step)))

    def suggest_float(self, name: str, low: float, high: float, **_) -> float:
        raise ValueError(f"{name} must be {{choices: [...]}} (or a stepped int range) in a grid space, "
                         f"but got a float range [{low}, {high}]")


def grid_points(space) -> list[dict[str, Any]]:
    """Every parameter set ``space.suggest`` can produce (the constants included), in a fixed
    order: depth first, each question's choices in the order the space file lists them."""
    points, pending = [], [()]
    while pending:
        path = pending.pop()
        trial = _Enumerator(path)
        constants = space.suggest(trial)
        points.append({**trial.params, **constants})
        # The siblings of every answer taken by default (past the planned path), pushed so that
        # the stack yields the deepest first and each question's choices in the file's order.
        for depth in range(len(path), len(trial.asked)):
            for index in reversed(range(1, trial.asked[depth])):
                pending.append((*path, *[0] * (depth - len(path)), index))
    return points


def point_key(params: dict[str, Any]) -> tuple:
    """A parameter set as a table key: the parameters that act, numbers compared as numbers
    (a CSV cell "0.3" and a proposed 0.3 are the same point)."""
    from search.params import TrialParams

    def value(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return str(v)

    acting = TrialParams.from_config({k: v for k, v in params.items() if v not in ("", None)}).as_dict()
    return tuple(sorted((name, value(v)) for name, v in acting.items()))


# ---------------------------------------------------------------------------------------------
# The recorded table.


@dataclass(frozen=True)
class Grid:
    """The recorded table as the replay reads it: each point's objective values (None: it failed)."""

    names: tuple[str, ...]
    directions: tuple[str, ...]
    baseline: tuple[float, ...]
    values: dict[tuple, tuple[float, ...] | None]

    def lookup(self, params: dict[str, Any]) -> tuple[float, ...] | None:
        key = point_key(params)
        if key not in self.values:
            raise KeyError(f"the point {dict(key)} is not in the recorded table: record it again "
                           f"(the space file changed since)")
        return self.values[key]

    def hypervolume(self, values: Sequence[Sequence[float]]) -> float:
        from search.hypervolume import hypervolume

        return hypervolume(list(values), self.directions, self.baseline) if len(values) else 0.0

    @property
    def front_hypervolume(self) -> float:
        return self.hypervolume([v for v in self.values.values() if v is not None])


def read_rows(table: Path) -> list[dict[str, str]]:
    if not table.exists():
        return []
    with table.open(newline="") as f:
        return list(csv.DictReader(f))


def load_grid(space, table: Path = TABLE) -> Grid:
    """The table's rows for the points of ``space`` (the baseline apart); every point must be there."""
    rows = read_rows(table)
    names = tuple(space.metric_names)
    baseline = next((r for r in rows if r["trial_id"] == BASELINE_ID), None)
    if baseline is None:
        raise ValueError(f"{table} must hold a baseline row (trial_id {BASELINE_ID!r}), but got none: record it")
    recorded = {point_key(_params(r)): r for r in rows if r["trial_id"] != BASELINE_ID}
    values = {}
    for params in grid_points(space):
        row = recorded.get(point_key(params))
        if row is None:
            raise ValueError(f"{table} must hold every point of {space.path}, but {params} is missing: record it")
        values[point_key(params)] = tuple(float(row[n]) for n in names) if row["status"] == "completed" else None
    return Grid(names, tuple(o.direction for o in space.objectives), tuple(float(baseline[n]) for n in names), values)


def _params(row: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.") and v != ""}


def write_rows(table: Path, rows: Sequence[dict[str, Any]]) -> None:
    """The table with the columns of a run's ``trials.csv`` (``search.record``), replaced atomically."""
    import io

    from search.files import write_text_atomic
    from search.record import COLUMNS

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(table, buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# record: every point through the trial pipeline, one at a time.


def _prepare(space, *, echo):
    """The dataset and the base model (trained once, cached as a search caches it), on one thread."""
    from search.compat import set_threads
    from search.inputs import base_model, load_data

    set_threads(space.budget.cpus_per_trial)  # the base training too: one core, as the trials
    dataset = load_data(space)
    echo(f"data: {len(dataset.train.examples)} train / {len(dataset.val.examples)} val images")
    base = base_model(space, dataset, progress=False)
    echo(f"base model: {'cached' if base.cached else f'trained in {base.seconds:.0f}s'}, "
         f"map50={base.map50:.3f} at {base.resolution}px")
    return dataset, base


def _measured_row(result, trial_id: str, *, baseline: dict | None) -> dict[str, Any]:
    import os

    from search.baseline import judge
    from search.record import BASELINE, csv_row

    record = result.record(trial_id, host=os.uname().nodename)
    if baseline is None:
        record = replace(record, status=BASELINE)
    record = judge(record, baseline=baseline, constraints=())
    return csv_row(replace(record, finished_at=round(time.time(), 3)))


def _failed_row(params: dict[str, Any], trial_id: str, error: Exception) -> dict[str, Any]:
    from search.params import TrialParams
    from search.record import FAILED, TrialRecord, csv_row

    message = f"{type(error).__name__}: {error}".splitlines()[0][:500]
    return csv_row(TrialRecord(trial_id, FAILED, message, params=TrialParams.from_config(params).as_dict(),
                               finished_at=round(time.time(), 3)))


def record(space, *, table: Path, stages_dir: Path, echo=print) -> dict[str, Any]:
    """Run every point of ``space`` missing from ``table`` and the baseline, rewriting the table
    after each; returns what the notes say about this session."""
    import tempfile

    from search.files import file_sha256
    from search.node_lock import node_guard
    from search.params import TrialParams
    from search.quantize import QUANT_MODES
    from search.trial import TrialContext, run_baseline, run_trial

    started = time.perf_counter()
    dataset, base = _prepare(space, echo=echo)
    context = TrialContext(space=space, dataset=dataset, base_weights=base.weights, stages_dir=str(stages_dir),
                           base_weights_sha256=file_sha256(base.weights))
    points = grid_points(space)
    rows = {r["trial_id"] if r["trial_id"] == BASELINE_ID else point_key(_params(r)): r for r in read_rows(table)}
    with tempfile.TemporaryDirectory() as scratch:  # the .tflite files are not kept: the table is the result
        if BASELINE_ID not in rows:
            result = run_baseline(context, resolution=space.base_training.resolution, out_dir=Path(scratch),
                                  guard=node_guard)
            rows[BASELINE_ID] = _measured_row(result, BASELINE_ID, baseline=None)
            echo(f"baseline: {_describe(rows[BASELINE_ID], space)}")
        baseline = {n: float(v) for n, v in rows[BASELINE_ID].items() if n in _compared(space) and v != ""}
        context = replace(context, baseline=baseline)
        todo = [(i, p) for i, p in enumerate(points) if point_key(p) not in rows]
        # Selective int8 (a debugger run per point) last: a record cut short still holds every
        # fine-tune with its quick conversions.
        todo.sort(key=lambda item: QUANT_MODES[item[1]["quantization"]].selective)
        echo(f"grid: {len(points)} points, {len(points) - len(todo)} already recorded, {len(todo)} to run")
        for done, (index, params) in enumerate(todo, start=1):
            trial_id = f"grid-{index:03d}"
            try:
                result = run_trial(TrialParams.from_config(params), context, out_dir=Path(scratch), guard=node_guard)
                rows[point_key(params)] = _measured_row(result, trial_id, baseline=baseline)
            except Exception as error:  # a failed trial is data, as in a search
                rows[point_key(params)] = _failed_row(params, trial_id, error)
            write_rows(table, _in_grid_order(rows, points))
            echo(f"[{done}/{len(todo)}] {trial_id} {TrialParams.from_config(params).describe()}: "
                 f"{_describe(rows[point_key(params)], space)} [{time.perf_counter() - started:.0f}s]")
    write_rows(table, _in_grid_order(rows, points))
    return {"base": base, "points": len(points), "ran": len(todo), "wall_s": time.perf_counter() - started}


def _compared(space) -> set[str]:
    """The baseline's metrics the trials are compared with (``search.baseline.compare``)."""
    from search.baseline import COMPARISONS

    return {*space.metric_names, *(c.metric for c in COMPARISONS.values())}


def _in_grid_order(rows: dict, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The baseline, then the recorded points in grid order, each with its index as trial id."""
    ordered = [rows[BASELINE_ID]]
    for index, params in enumerate(points):
        row = rows.get(point_key(params))
        if row is not None:
            ordered.append({**row, "trial_id": f"grid-{index:03d}"})
    return ordered


def _describe(row: dict[str, Any], space) -> str:
    if row["status"] == "failed":
        return f"FAILED {row['error']}"
    return ", ".join(f"{n}={float(row[n]):.4g}" for n in space.metric_names)


def write_notes(space, *, table: Path, notes: Path, session: dict[str, Any] | None, command: str) -> None:
    """``README.md`` beside the table: what it holds and how it was made (``session`` None: being recorded)."""
    from importlib.metadata import version

    from search.files import write_text_atomic

    rows = [r for r in read_rows(table) if r["trial_id"] != BASELINE_ID]
    failed = [r for r in rows if r["status"] != "completed"]
    trial_s = sum(float(r["time_total_s"] or 0) for r in rows)
    lock_s = sum(float(r["lock_wait_s"] or 0) for r in rows)  # waiting for other searches' steps before timing
    lines = [
        "# The recorded grid of benchmarks/search_efficiency.py",
        "",
        f"`trials.csv`: every point of `space.yaml` ({len(rows)} points, {len(failed)} failed) run through",
        "`search.trial.run_trial` one at a time in one process (one TensorFlow thread, the node lock held as",
        "a trial holds it), with the stage cache (one fine-tune per resolution and pruning setting); the first",
        "row is the baseline (`search.trial.run_baseline`: the base model, float32, at the base resolution).",
        "The columns are those of a run's `trials.csv`; `model_path` is empty (the models were not kept).",
        "",
        f"- {SPACE_LINE}`{space.sha256}`",
        f"- command: `{command}`",
    ]
    if session is None:
        lines.append(f"- being recorded since {time.strftime('%Y-%m-%d %H:%M %Z')}")
    else:
        base = session["base"]
        lines += [
            f"- recorded: finished {time.strftime('%Y-%m-%d %H:%M %Z')} on `{platform.node()}`, {_cpu_name()}, "
            f"{_cpu_count()} cores shared with other work",
            f"- base model: {'cached' if base.cached else f'trained here in {base.seconds:.0f} s on one thread'} "
            f"(key {base.key}), Keras map50 {base.map50:.3f} at {base.resolution} px",
            f"- seconds: {session['wall_s']:.0f} s wall for the last session ({session['ran']} points run); "
            f"the trials' own stages sum to {trial_s:.0f} s; {lock_s:.0f} s went waiting for the node lock "
            f"(other searches' steps) before latency timings",
            f"- versions: tensorflow {version('tensorflow')}, ai-edge-litert {version('ai-edge-litert')}, "
            f"optuna {version('optuna')}, Python {platform.python_version()}",
        ]
    write_text_atomic(notes, "\n".join(lines) + "\n")


def check_same_space(space, *, table: Path, notes: Path) -> None:
    """A table is only continued from the space file it was started from (its sha256 in the notes)."""
    if not read_rows(table):
        return
    text = notes.read_text() if notes.exists() else ""
    found = next((line.split("`")[1] for line in text.splitlines() if SPACE_LINE in line), None)
    if found != space.sha256:
        raise SystemExit(f"{table} must be continued from the space file it was recorded from (sha256 {found}), "
                         f"but {space.path} is {space.sha256}: delete the table to record it again")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# replay: samplers on the table.


def _optuna_tpe(budget):
    import optuna

    return optuna.samplers.TPESampler(seed=budget.seed)


def _gp(budget):
    import optuna

    return optuna.samplers.GPSampler(seed=budget.seed)


def replay_samplers() -> dict[str, tuple[str, Callable | None]]:
    """Name -> (what it is, budget -> seeded sampler); ``None`` with the reason when it cannot run here."""
    from search.samplers import SAMPLERS
    from search.space import BudgetSpec

    default = BudgetSpec.sampler
    table: dict[str, tuple[str, Callable | None]] = {
        "default": (f"the project's default, SAMPLERS[{default!r}]", SAMPLERS[default].make),
        "tpe": ("Optuna's TPESampler with its own defaults", _optuna_tpe),
        "nsga2": ("SAMPLERS['nsga2']", SAMPLERS["nsga2"].make),
        "random": ("SAMPLERS['random']", SAMPLERS["random"].make),
    }
    try:
        import torch  # noqa: F401  GPSampler's dependency
    except ImportError:
        table["gp"] = ("GP sampler: not applicable here (needs torch)", None)
    else:
        table["gp"] = ("Optuna's GPSampler", _gp)
    return table


class FailedPoint(Exception):
    """The proposed point failed when it was recorded: the study marks the trial FAIL, as the tuner does."""


def replay(grid: Grid, space, make_sampler: Callable, *, trials: int, seed: int) -> float:
    """One study of ``trials`` proposals; returns its front's hypervolume over the grid's."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    found = []

    def objective(trial):
        constants = space.suggest(trial)  # asks first: trial.params holds the answers only after
        values = grid.lookup({**trial.params, **constants})
        if values is None:
            raise FailedPoint()
        found.append(values)
        return values

    sampler = make_sampler(replace(space.budget, trials=trials, seed=seed))
    study = optuna.create_study(directions=list(grid.directions), sampler=sampler)
    study.optimize(objective, n_trials=trials, catch=(FailedPoint,))
    return grid.hypervolume(found) / grid.front_hypervolume


def budgets(size: int, fractions: Sequence[float] = BUDGETS) -> list[int]:
    """Trials per budget: the fraction of the grid's size, rounded down (never above it), at least one."""
    return [max(1, math.floor(f * size + 1e-9)) for f in fractions]


def replay_all(grid: Grid, space, samplers: dict, *, seeds: Sequence[int], fractions: Sequence[float],
               echo=print) -> dict[str, dict[int, list[float]]]:
    """``{sampler: {trials: [ratio per seed]}}`` for every sampler that runs here; the same seeds and
    budgets for each."""
    results = {}
    for name, (description, make) in samplers.items():
        if make is None:
            echo(description)
            continue
        started = time.perf_counter()
        results[name] = {n: [replay(grid, space, make, trials=n, seed=s) for s in seeds]
                         for n in budgets(len(grid.values), fractions)}
        echo(f"  {name}: {description} [{time.perf_counter() - started:.1f}s]")
    return results


def print_table(results: dict[str, dict[int, list[float]]], *, size: int, fractions: Sequence[float],
                echo=print) -> None:
    columns = budgets(size, fractions)
    header = "".join(f"{f'{f:.0%} ({n})':>16}" for f, n in zip(fractions, columns))
    echo(f"{'sampler':<10}{header}")
    for name, by_budget in results.items():
        cells = "".join(f"{f'{statistics.median(r):.3f} ({min(r):.3f})':>16}" for r in by_budget.values())
        echo(f"{name:<10}{cells}")
    echo("cells: median hypervolume ratio over seeds (min); ratio = found front / the whole grid's front")


def goal_line(results: dict[str, dict[int, list[float]]], *, size: int) -> tuple[bool, str]:
    """Whether the default reaches GOAL_RATIO of the grid's hypervolume within GOAL_BUDGET of its
    trials (median over seeds) and beats random's median at that budget."""
    default, random = results["default"], results["random"]
    limit = math.floor(GOAL_BUDGET * size + 1e-9)
    reached = [n for n in sorted(default) if n <= limit and statistics.median(default[n]) >= GOAL_RATIO]
    if not reached:
        best = max((n for n in default if n <= limit), key=lambda n: statistics.median(default[n]))
        return False, (f"goal MISSED: the default sampler does not reach {GOAL_RATIO:.0%} of the grid hypervolume "
                       f"within {limit} trials ({GOAL_BUDGET:.0%} of {size}); best median "
                       f"{statistics.median(default[best]):.3f} at {best} trials")
    n = reached[0]
    ours, theirs = statistics.median(default[n]), statistics.median(random[n])
    beats = ours > theirs
    verdict = "goal MET" if beats else "goal MISSED (does not beat random)"
    return beats, (f"{verdict}: the default sampler reaches {ours:.3f} >= {GOAL_RATIO:.2f} of the grid hypervolume "
                   f"with {n} trials ({n / size:.0%} <= {GOAL_BUDGET:.0%} of {size}), median over "
                   f"{len(default[n])} seeds; random at {n} trials: {theirs:.3f}")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("record", "replay"))
    parser.add_argument("--space", type=Path, default=SPACE)
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the space (record: e.g. storage.cache_dir=/tmp/cache)")
    parser.add_argument("--stages", type=Path, default=None,
                        help="record: the stage cache (default <cache_dir>/stages, where a search keeps it)")
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="replay: seeds per sampler and budget")
    args = parser.parse_args(argv)

    from search.space import load_space

    space = load_space(args.space, tuple(args.overrides))
    if args.mode == "record":
        notes = args.table.parent / NOTES.name
        check_same_space(space, table=args.table, notes=notes)
        command = "python benchmarks/search_efficiency.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_notes(space, table=args.table, notes=notes, session=None, command=command)
        session = record(space, table=args.table, stages_dir=args.stages or Path(space.shared_dir) / "stages")
        write_notes(space, table=args.table, notes=notes, session=session, command=command)
        return 0
    grid = load_grid(space, args.table)
    print(f"{args.table}: {len(grid.values)} points, {sum(v is None for v in grid.values.values())} failed; "
          f"grid front hypervolume {grid.front_hypervolume:.4f} (baseline {dict(zip(grid.names, grid.baseline))})")
    started = time.perf_counter()
    results = replay_all(grid, space, replay_samplers(), seeds=range(args.seeds), fractions=BUDGETS)
    print_table(results, size=len(grid.values), fractions=BUDGETS)
    met, line = goal_line(results, size=len(grid.values))
    print(line)
    print(f"replay: {time.perf_counter() - started:.0f}s")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
