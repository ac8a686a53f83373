"""The search-space file, parsed and validated once, before anything runs.

``load_space(path, overrides)`` turns ``spaces/*.yaml`` into a frozen ``Space``. After this,
nobody reads the raw YAML: the trial, the tuner, the report and the export all take ``Space``.
Every key is documented in ``spaces/yolov4_tiny.yaml``; defaults below carry their reason.
Every finite choice is read from its table (quantization modes, pruning schedules and
structures, samplers, export rules, data formats, preprocessing, objectives, model families);
the tables import nothing heavy, so validating a space does not start TensorFlow.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from search.baseline import COMPARISONS, Constraint
from search.data.formats import DATA_FORMATS
from search.data.preprocess import PREPROCESSING
from search.errors import SpaceError
from search.models import DEFAULT_FAMILY, FAMILIES
from search.objectives import DIRECTIONS, OBJECTIVES, Objective, always_measured
from search.objectives.targets import DEFAULT_TARGETS, HOST, NAME_PATTERN, Target, target_objectives
from search.pareto import EXPORT_RULES
from search.pruning import SCHEDULES, STRUCTURES
from search.quantize import QUANT_MODES
from search.samplers import SAMPLERS
from search.spec import Section, closest, unknown_name
from search.storage import URI_SCHEMES, is_uri, uri_bucket, uri_scheme

MAX_RESOLUTION = 1024
MAX_DISTILL_WEIGHT = 100.0  # fine_tune.distill_weight: far past any useful balance; a larger one is a typo
PREFER_KINDS = ("latency", "size")  # objective kinds export.prefer may name (accuracy_budget)


# ---------------------------------------------------------------------------------------------
# One search dimension: a fixed value, a list of choices, or a numeric range.


@dataclass(frozen=True)
class Dimension:
    name: str  # the parameter's name in the trial config and in trials.csv (param.<name>)
    kind: str  # "fixed", "choices", "int" or "float"
    choices: tuple = ()  # "fixed" holds its one value here
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    @property
    def values(self) -> tuple:
        """Every value this dimension can take (ranges only when they are integer and stepped)."""
        if self.kind in ("fixed", "choices"):
            return self.choices
        if self.kind == "int":
            return tuple(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        return (self.low, self.high)

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial for a value (define-by-run; does no computation)."""
        if self.kind == "fixed":
            return self.choices[0]
        if self.kind == "choices":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


Check = Callable[[Any], "str | None"]  # value -> what must hold when it is not allowed, else None


def _value_validator(section: Section, where: str, value_kind: type, check: Check | None, names: Collection[str] | None):
    """``validate(value) -> value`` for one value of a dimension; raises a one-line ``SpaceError``.

    A name dimension (``names`` given) reads like every other unknown name; a number must be of
    ``value_kind`` and pass ``check``.
    """

    def validate(value):
        if names is not None:
            if not isinstance(value, str) or value not in names:
                raise SpaceError(f"{section.source}: {where}: {unknown_name(value, names)}")
            return value
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value_kind is int and isinstance(value, float):
            ok_type = False
        problem = None if ok_type else f"must be {value_kind.__name__} values"
        problem = problem or check(value)
        if problem:
            raise SpaceError(f"{section.source}: {where}: {problem}, but got {value!r}")
        return float(value) if value_kind is float else value

    return validate


def _dimension(section: Section, key: str, *, name: str, default: Any, value_kind: type = str,
               check: Check | None = None, names: Collection[str] | None = None) -> Dimension:
    """Read ``key`` as a fixed value, ``{choices: [...]}`` or ``{low, high, step?, log?}``.

    A name dimension gives ``names`` (a table); a numeric one its ``value_kind`` and ``check``.
    ``default`` None: the key is required.
    """
    raw = section.raw(key) if default is None else section.raw(key, default)
    where = section.key(key)
    validate = _value_validator(section, where, value_kind, check, names)
    if not isinstance(raw, dict):
        return Dimension(name, "fixed", (validate(raw),))
    sub = Section(raw, source=section.source, path=where)
    if "choices" in raw:
        return _choices_dimension(sub, name, validate)
    if names is not None:
        sub.fail("", f"must be a name or {{choices: [...]}}, but got {raw!r}")
    return _range_dimension(sub, name, value_kind, validate)


def _choices_dimension(sub: Section, name: str, validate) -> Dimension:
    choices = sub.raw("choices")
    if not isinstance(choices, list) or not choices:
        sub.fail("choices", f"must be a non-empty list, but got {choices!r}")
    sub.finish()
    values = tuple(validate(v) for v in choices)
    if len(set(values)) != len(values):
        sub.fail("choices", f"must not repeat a value, but got {list(choices)!r}")
    return Dimension(name, "choices", values)


def _range_dimension(sub: Section, name: str, value_kind: type, validate) -> Dimension:
    low, high = validate(sub.raw("low")), validate(sub.raw("high"))
    step = sub.raw("step", None)
    log = sub.boolean("log", False)
    sub.finish()
    if low >= high:
        sub.fail("", f"must have low < high (a non-empty range), but got low={low}, high={high}")
    if step is not None:
        step = validate(step) if value_kind is int else float(step)
        if step <= 0:
            sub.fail("step", f"must be > 0, but got {step}")
        if log:
            sub.fail("log", "cannot be combined with step (Optuna allows one or the other), but got both")
    if log and low <= 0:
        sub.fail("low", f"must be > 0 for a log-scaled range, but got {low}")
    return Dimension(name, "int" if value_kind is int else "float", (), low, high, step, log)


# ---------------------------------------------------------------------------------------------
# The sections of a space file.


@dataclass(frozen=True)
class ModelSpec:
    name: str = DEFAULT_FAMILY  # a key of search.models.FAMILIES
    weights: str | None = None  # None: train a base model on the data first
    cfg: str | None = None  # Darknet .cfg that goes with Darknet .weights


@dataclass(frozen=True)
class GeneratedDataSpec:
    seed: int = 0
    num_train: int = 512  # enough for the stock detector to learn 3 shapes in ~800 steps
    num_val: int = 128  # mAP on fewer images is too noisy to rank trials
    image_size: int = 256  # larger than every searched resolution, so resolution matters


@dataclass(frozen=True)
class DataSpec:
    format: str = "generated"  # a key of search.data.formats.DATA_FORMATS; needs nothing but a seed
    path: str | None = None  # yolo: the data.yaml; coco: a folder with images/ and annotations/
    preprocessing: str = "stretch"  # key of PREPROCESSING: Darknet's and OpenCV's resize; the same in train, calibration, eval
    generated: GeneratedDataSpec = field(default_factory=GeneratedDataSpec)
    val_limit: int | None = None  # evaluate on the first N val images only (None: all)


@dataclass(frozen=True)
class TrainingSpec:
    """Training of the base model (``resolution`` set) or each trial's fine-tune (at the trial's)."""

    steps: int
    batch_size: int = 8  # fits a 2-core machine; larger batches gain nothing per second on a CPU
    learning_rate: float = 1e-3
    resolution: int | None = None


@dataclass(frozen=True)
class FineTuneSpec(TrainingSpec):
    """Each trial's fine-tune: its training, and how much it distils from the unpruned base model
    (a field of its own class, so the base training's settings, which key the cached base model, stay as they were)."""

    # The weight of search.train.distillation_loss (the unpruned base model's heads as soft targets)
    # beside the YOLO loss, in the pruning fine-tune and in QAT; 0: off. Off by default: on coco128 at
    # 416 px (150 steps) weight 20 gained ~1 AP point at 50% sparsity, none in AP50, for up to 1.8x a
    # step's time; it paid most where the fine-tune itself drifts (README, "Distillation").
    distill_weight: float = 0.0


# Base training from scratch: 800 steps at 160 px take ~4-6 min on 2 cores and reach mAP@0.5 0.69
# on the generated data at lr 2e-3 (0.56 at 1e-3). Fine-tune: 150 steps, the bulk of a trial's
# time. At 160 px from a base of mAP@0.5 0.642, 60 steps gave 0.603 dense and 0.506 at 50%
# sparsity; 150 steps gave 0.659 and 0.607: shorter fine-tunes blame pruning for what is really
# too little recovery.
BASE_TRAINING = TrainingSpec(steps=800, batch_size=8, learning_rate=2e-3, resolution=160)
FINE_TUNE = FineTuneSpec(steps=150, batch_size=8, learning_rate=5e-4)


@dataclass(frozen=True)
class SearchDimensions:
    resolution: Dimension
    pruning_schedule: Dimension
    target_sparsity: Dimension
    pruning_structure: Dimension
    quantization: Dimension
    calibration_size: Dimension
    float_layers: Dimension
    # Also convert pruned weights with TFLite's sparse tensor encoding and keep the smaller file
    # (if LiteRT loads it). On by default: at 50% (unstructured or 2:4) it cut float32 files 29% and
    # float16 10% at 416 px for the same latency (README, "Sparse tensor encoding"); int8 files grow
    # at 50%, so they stay dense, and shrink at 90%.
    sparse_encoding: bool = True

    def all(self) -> tuple[Dimension, ...]:
        return (self.resolution, self.pruning_schedule, self.target_sparsity, self.pruning_structure, self.quantization,
                self.calibration_size, self.float_layers)


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    direction: str


@dataclass(frozen=True)
class BudgetSpec:
    trials: int | None = 12
    time_budget_s: float | None = None
    max_concurrent: int = 2  # one trial per core on a 2-core machine
    cpus_per_trial: int = 1
    seed: int = 0
    sampler: str = "tpe"  # a key of search.samplers.SAMPLERS: model-guided, and handles conditional parameters
    max_retries: int = 1  # retries of a trial lost to infrastructure (a dead worker), not to its own error


@dataclass(frozen=True)
class MeasureSpec:
    latency_threads: int = 1  # what a phone app usually gets; the card records it
    latency_warmup: int = 5
    latency_min_runs: int = 20
    latency_min_seconds: float = 6.0  # timed for at least this long: 8 measurements agreed within 2.0% here at 6 s, 3% at 3 s
    latency_max_seconds: float = 10.0
    # The anchor reference's latency on a node is measured once, this long, and kept on the node,
    # and so is each rung's ratio to it (the reference at a resolution in a reference mode: one
    # more such measurement per rung a trial on the node uses): every trial's latency_ms there is a ratio times them, so they are
    # worth a long, quiet look.
    latency_reference_seconds: float = 20.0
    # How raw heads become the detections mAP is computed on. The one place these defaults are
    # written: the accuracy objective and the export card read them from here.
    score_threshold: float = 0.001  # low, as mAP needs the whole precision-recall curve
    iou_threshold: float = 0.45  # Darknet's NMS threshold for mAP
    max_detections: int = 100  # COCO's limit per image
    # Where latency is measured: host (the trial's node) and the user's devices (search.objectives.targets).
    targets: tuple[Target, ...] = DEFAULT_TARGETS
    # How long a trial waits for a device's measurement (queued behind other trials' on a busy
    # device, or for a device that is gone) before recording it missing with the reason: a search
    # must not stall on a board that was unplugged. A device measurement takes ~10-40 s.
    target_timeout_s: float = 600.0

    @property
    def devices(self) -> tuple[Target, ...]:
        """The targets that are not the trial's own node."""
        return tuple(t for t in self.targets if t.resource is not None)


@dataclass(frozen=True)
class ExportSpec:
    # A key of search.pareto.EXPORT_RULES. accuracy_budget ships what a user would: the fastest
    # model that loses at most max_drop points against the uncompressed baseline.
    rule: str = "accuracy_budget"
    accuracy: str | None = None  # the accuracy objective the rule ranks by; None: the first one
    max_drop: float = 1.0  # accuracy_budget: points of `accuracy` a model may lose against the baseline
    prefer: str = "latency"  # accuracy_budget: within the budget, the best on this kind ("latency" or "size"; the other breaks ties)
    max_size_bytes: int | None = None  # within_limits only
    max_latency_ms: float | None = None  # within_limits only

    @property
    def limits(self) -> dict[str, float]:
        """Metric -> the most an exported trial may have (within_limits)."""
        named = {"size_bytes": self.max_size_bytes, "latency_ms": self.max_latency_ms}
        return {name: limit for name, limit in named.items() if limit is not None}


@dataclass(frozen=True)
class Space:
    path: str
    sha256: str
    name: str
    model: ModelSpec
    data: DataSpec
    base_training: TrainingSpec
    fine_tune: FineTuneSpec
    search: SearchDimensions
    objectives: tuple[ObjectiveSpec, ...]
    budget: BudgetSpec
    measure: MeasureSpec
    export: ExportSpec
    cache_dir: str = ".cache/search"
    overrides: tuple[str, ...] = ()
    # Where trials write (their .tflite and records, the shared stage cache): a folder every node
    # mounts, or an object-store URI (search.storage). None: the run directory and cache_dir,
    # which is right for one machine.
    storage_path: str | None = None
    constraints: tuple[Constraint, ...] = ()  # what every trial must meet (search.baseline)

    @property
    def shared_dir(self) -> str:
        """Where what every node must read goes: the generated dataset, the base weights, the stage
        cache. ``storage.path`` when it is a folder (a cluster's shared mount), else ``cache_dir``
        (with an object store, the trials' files and the stage cache go there, ``search.storage``)."""
        if self.storage_path and not is_uri(self.storage_path):
            return self.storage_path
        return self.cache_dir

    @property
    def metric_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def objective_table(self) -> dict[str, Objective]:
        """``OBJECTIVES`` and the objectives of the space's device targets (``latency_ms@rpi5``, ...)."""
        return {**OBJECTIVES, **target_objectives(self.measure.targets)}

    @property
    def export_prefers(self) -> list[str]:
        """accuracy_budget's tie-break order: the space's first objective of ``export.prefer``'s kind,
        then of the other kind (latency_ms / size_bytes when the space names none of that kind)."""
        kinds = [self.export.prefer, *(k for k in PREFER_KINDS if k != self.export.prefer)]
        fallback = {"latency": "latency_ms", "size": "size_bytes"}
        table = self.objective_table
        return [next((n for n in self.metric_names if table[n].kind == kind), fallback[kind]) for kind in kinds]

    @property
    def measured_names(self) -> list[str]:
        """What every trial measures: the objectives, the metrics the export's limits read, and
        the counts that cost nothing (``search.objectives.always_measured``)."""
        needed = [COMPARISONS[c.metric].metric if c.metric in COMPARISONS else c.metric for c in self.constraints]
        prefers = self.export_prefers if self.export.rule == "accuracy_budget" else []
        names = [*self.metric_names, *self.export.limits, *needed, *prefers, *always_measured()]
        return list(dict.fromkeys(names))

    @property
    def trial_measured_names(self) -> list[str]:
        """Of ``measured_names``, those the trial's pipeline measures on its own node (not a device's)."""
        return [name for name in self.measured_names if name in OBJECTIVES]

    @property
    def modes(self) -> list[str]:
        """Ray/Optuna wording of the directions: "max" / "min"."""
        return ["max" if o.direction == "maximize" else "min" for o in self.objectives]

    def to_dict(self) -> dict:
        return asdict(self)

    def suggest(self, trial) -> dict[str, Any]:
        """Optuna define-by-run space: conditional parameters are only asked for when they act.

        Which act is read from the rows of the tables (a schedule that prunes, a structure that
        leaves the sparsity to its target, a mode that calibrates or keeps float layers).
        Returns the constants (fixed dimensions) for Ray to add to the trial's config.
        """
        constants: dict[str, Any] = {}

        def ask(dim: Dimension) -> Any:
            value = dim.suggest(trial)
            if dim.kind == "fixed":
                constants[dim.name] = value
            return value

        dims = self.search
        ask(dims.resolution)
        if SCHEDULES[ask(dims.pruning_schedule)].prunes:
            # 2:4 zeroes exactly half of every block of four: a target sparsity would have no effect
            if STRUCTURES[ask(dims.pruning_structure)].implied_sparsity is None:
                ask(dims.target_sparsity)
        mode = QUANT_MODES[ask(dims.quantization)]
        if mode.needs_calibration:
            ask(dims.calibration_size)
        if mode.selective:
            ask(dims.float_layers)
        return constants


# ---------------------------------------------------------------------------------------------
# The parser: one function per section, in the order of the file.


def parse_space(raw: Any, *, source: str, sha256: str = "", overrides: tuple[str, ...] = ()) -> Space:
    """Validate an already-loaded YAML document; raises ``SpaceError`` with one line."""
    top = Section(raw, source=source)
    name = top.string("name", Path(source).stem)
    model = _parse_model(top.section("model"))
    data = _parse_data(top.section("data"))
    base = _parse_training(top.section("base_training"), BASE_TRAINING)
    fine_tune = _parse_fine_tune(top.section("fine_tune"))
    search = _parse_search(top.section("search", required=True))
    measure = _parse_measure(top.section("measure"))  # first: its targets add objectives
    table = {**OBJECTIVES, **target_objectives(measure.targets)}
    objectives = _parse_objectives(top, table)
    budget = _parse_budget(top.section("budget"))
    export = _parse_export(top.section("export"), objectives, table)
    cache_dir, storage_path = _parse_storage(top.section("storage"))
    constraints = _parse_constraints(top.section("constraints"), table)
    top.finish()
    return Space(source, sha256, name, model, data, base, fine_tune, search, objectives, budget, measure, export,
                 cache_dir, overrides, storage_path, constraints)


def _parse_model(m: Section) -> ModelSpec:
    model = ModelSpec(m.choice("name", FAMILIES, ModelSpec.name), m.string("weights", optional=True),
                      m.string("cfg", optional=True))
    m.finish()
    return model


def _parse_data(d: Section) -> DataSpec:
    data = DataSpec(
        format=d.choice("format", DATA_FORMATS, DataSpec.format),
        path=d.string("path", optional=True),
        preprocessing=d.choice("preprocessing", PREPROCESSING, DataSpec.preprocessing),
        generated=_parse_generated(d.section("generated")),
        val_limit=d.integer("val_limit", low=1, optional=True),
    )
    d.finish()
    if DATA_FORMATS[data.format].needs_path and not data.path:
        d.fail("path", f"is required for format {data.format!r} (the dataset's location), but got nothing")
    return data


def _parse_generated(g: Section) -> GeneratedDataSpec:
    defaults = GeneratedDataSpec()
    generated = GeneratedDataSpec(
        seed=g.integer("seed", defaults.seed, low=0),
        num_train=g.integer("num_train", defaults.num_train, low=1),
        num_val=g.integer("num_val", defaults.num_val, low=1),
        image_size=g.integer("image_size", defaults.image_size, low=32, high=2048),
    )
    g.finish()
    return generated


def _parse_training(section: Section, defaults: TrainingSpec) -> TrainingSpec:
    resolution = None
    if defaults.resolution is not None:  # only the base model has a resolution of its own
        resolution = section.integer("resolution", defaults.resolution, low=32, high=MAX_RESOLUTION)
        if resolution % 32:
            section.fail("resolution", f"must be a multiple of 32, but got {resolution}")
    spec = TrainingSpec(
        steps=section.integer("steps", defaults.steps, low=1),
        batch_size=section.integer("batch_size", defaults.batch_size, low=1),
        learning_rate=section.number("learning_rate", defaults.learning_rate, low=0.0, below=1.0),
        resolution=resolution,
    )
    section.finish()
    return spec


def _parse_fine_tune(section: Section) -> FineTuneSpec:
    distill_weight = section.number("distill_weight", FINE_TUNE.distill_weight, low=0.0, high=MAX_DISTILL_WEIGHT)
    return FineTuneSpec(**asdict(_parse_training(section, FINE_TUNE)), distill_weight=distill_weight)


def _resolution_problem(value: int) -> str | None:
    if value < 32 or value > MAX_RESOLUTION or value % 32:
        return f"must be multiples of 32 from 32 to {MAX_RESOLUTION}"
    return None


def _parse_search(s: Section) -> SearchDimensions:
    resolution = _dimension(s, "resolution", name="resolution", value_kind=int, check=_resolution_problem, default=None)
    if resolution.kind == "int" and (resolution.step or 1) % 32:
        s.fail("resolution.step", f"must be a multiple of 32, but got {resolution.step}")
    schedule, sparsity, structure, sparse_encoding = _parse_pruning(s.section("pruning"))
    quantization = _dimension(s, "quantization", name="quantization", names=QUANT_MODES, default=None)
    calibration = _dimension(s, "calibration_size", name="calibration_size", value_kind=int,
                             check=lambda v: None if v >= 1 else "must be >= 1 image", default=64)
    float_layers = _dimension(s, "float_layers", name="float_layers", value_kind=int,
                              check=lambda v: None if v >= 1 else "must be >= 1 layer", default=4)
    s.finish()
    return SearchDimensions(resolution, schedule, sparsity, structure, quantization, calibration, float_layers,
                            sparse_encoding)


def _parse_pruning(p: Section) -> tuple[Dimension, Dimension, Dimension, bool]:
    schedule = _dimension(p, "schedule", name="pruning_schedule", names=SCHEDULES, default="none")
    sparsity = _dimension(p, "target_sparsity", name="target_sparsity", value_kind=float,
                          check=lambda v: None if 0.0 < v < 1.0 else "must be fractions with 0 < sparsity < 1", default=0.5)
    structure = _dimension(p, "structure", name="pruning_structure", names=STRUCTURES, default="unstructured")
    sparse_encoding = p.boolean("sparse_encoding", SearchDimensions.sparse_encoding)
    p.finish()
    return schedule, sparsity, structure, sparse_encoding


def _parse_objectives(top: Section, table: dict[str, Objective]) -> tuple[ObjectiveSpec, ...]:
    raw = top.raw("objectives")
    if not isinstance(raw, list) or not raw:
        top.fail("objectives", f"must be a non-empty list of {{name, direction}}, but got {raw!r}")
    parsed = []
    for i, item in enumerate(raw):
        o = Section(item, source=top.source, path=f"objectives[{i}]")
        name = o.choice("name", table)
        direction = o.choice("direction", DIRECTIONS, table[name].direction)
        o.finish()
        if direction != table[name].direction:
            o.fail("direction", f"{name} can only be {table[name].direction}d, but got {direction!r}")
        if name in [p.name for p in parsed]:
            o.fail("name", f"each objective may appear once, but got {name!r} twice")
        parsed.append(ObjectiveSpec(name, direction))
    if not any(table[o.name].kind == "accuracy" for o in parsed):
        top.fail("objectives", f"must include an accuracy objective (map50 or map), but got {[o.name for o in parsed]}")
    return tuple(parsed)


def _parse_budget(b: Section) -> BudgetSpec:
    defaults = BudgetSpec()
    budget = BudgetSpec(
        # an explicit `trials: null` means "no trial limit": the time budget alone ends the search
        trials=b.integer("trials", low=1, optional=True) if "trials" in b.data else defaults.trials,
        time_budget_s=b.number("time_budget_s", low=1.0, optional=True),
        max_concurrent=b.integer("max_concurrent", defaults.max_concurrent, low=1),
        cpus_per_trial=b.integer("cpus_per_trial", defaults.cpus_per_trial, low=1),
        seed=b.integer("seed", defaults.seed, low=0),
        sampler=b.choice("sampler", SAMPLERS, defaults.sampler),
        max_retries=b.integer("max_retries", defaults.max_retries, low=0),
    )
    b.finish()
    if budget.trials is None and budget.time_budget_s is None:
        b.fail("", "must set trials, time_budget_s or both (a search needs an end), but got neither")
    return budget


def _parse_measure(me: Section) -> MeasureSpec:
    defaults = MeasureSpec()
    measure = MeasureSpec(
        latency_threads=me.integer("latency_threads", defaults.latency_threads, low=1),
        latency_warmup=me.integer("latency_warmup", defaults.latency_warmup, low=0),
        latency_min_runs=me.integer("latency_min_runs", defaults.latency_min_runs, low=1),
        latency_min_seconds=me.number("latency_min_seconds", defaults.latency_min_seconds, low=0.0),
        latency_max_seconds=me.number("latency_max_seconds", defaults.latency_max_seconds, low=0.1),
        latency_reference_seconds=me.number("latency_reference_seconds", defaults.latency_reference_seconds, low=0.1),
        score_threshold=me.number("score_threshold", defaults.score_threshold, low=0.0, below=1.0),
        iou_threshold=me.number("iou_threshold", defaults.iou_threshold, low=0.0, high=1.0),
        max_detections=me.integer("max_detections", defaults.max_detections, low=1),
        targets=_parse_targets(me),
        target_timeout_s=me.number("target_timeout_s", defaults.target_timeout_s, low=1.0),
    )
    if measure.latency_min_seconds > measure.latency_max_seconds:
        me.fail("latency_min_seconds", f"must be <= latency_max_seconds ({measure.latency_max_seconds:g}), "
                                       f"but got {measure.latency_min_seconds:g}")
    me.finish()
    return measure


def _parse_targets(me: Section) -> tuple[Target, ...]:
    """``targets: [{name: host}, {name: rpi5, resource: "device:rpi5"}]``: host is the trial's own node,
    every other target the Ray custom resource its device offers."""
    raw = me.raw("targets", [{"name": HOST}])
    if not isinstance(raw, list) or not raw:
        me.fail("targets", f"must be a non-empty list of {{name, resource}}, but got {raw!r}")
    targets: list[Target] = []
    for i, item in enumerate(raw):
        t = Section(item, source=me.source, path=me.key(f"targets[{i}]"))
        name, resource = t.string("name"), t.string("resource", optional=True)
        t.finish()
        if not NAME_PATTERN.fullmatch(name):
            t.fail("name", f"must be letters, digits, '_', '-' or '.', but got {name!r}")
        if name in [target.name for target in targets]:
            t.fail("name", f"each target may appear once, but got {name!r} twice")
        if (name == HOST) != (resource is None):
            t.fail("resource", f"must be given for every target but {HOST} (the trial's own node), and only then, "
                               f"but got {resource!r} for {name!r}")
        targets.append(Target(name, resource))
    return tuple(targets)


def _parse_export(e: Section, objectives: tuple[ObjectiveSpec, ...], table: dict[str, Objective]) -> ExportSpec:
    accuracy_names = [o.name for o in objectives if table[o.name].kind == "accuracy"]
    export = ExportSpec(
        rule=e.choice("rule", EXPORT_RULES, ExportSpec.rule),
        accuracy=e.choice("accuracy", accuracy_names, accuracy_names[0]),
        max_drop=e.number("max_drop", ExportSpec.max_drop, low=0.0),
        prefer=e.choice("prefer", PREFER_KINDS, ExportSpec.prefer),
        max_size_bytes=e.integer("max_size_bytes", low=1, optional=True),
        max_latency_ms=e.number("max_latency_ms", low=0.0, optional=True),
    )
    e.finish()
    if export.rule == "within_limits" and export.max_size_bytes is None and export.max_latency_ms is None:
        e.fail("rule", "within_limits needs max_size_bytes and/or max_latency_ms, but got neither")
    return export


def _parse_constraints(c: Section, table: dict[str, Objective]) -> tuple[Constraint, ...]:
    """``constraints: {max_size_bytes: 6e6, min_map50: 0.5, max_map50_drop: 1.0, ...}``: ``max_`` or
    ``min_`` and an objective's or a comparison's name (``search.baseline.COMPARISONS``)."""
    metrics = [*table, *COMPARISONS]
    keys = [f"{bound}_{metric}" for metric in metrics for bound in ("max", "min")]
    constraints = []
    for key in list(c.data):
        if key not in keys:
            guess = closest(key, keys)
            c.fail(key, f"must be max_<metric> or min_<metric> with a metric among {', '.join(metrics)}, but got "
                        f"{key!r}" + (f"; did you mean {guess!r}?" if guess else ""))
        bound, metric = key.split("_", 1)
        constraints.append(Constraint(metric, bound, float(c.number(key))))
    c.finish()
    return tuple(constraints)


def _parse_storage(st: Section) -> tuple[str, str | None]:
    """``(cache_dir, storage path)``; a ``file://`` URI is the folder it names."""
    cache_dir = st.string("cache_dir", ".cache/search")
    storage_path = st.string("path", optional=True)
    if storage_path and is_uri(storage_path):
        if uri_scheme(storage_path) not in URI_SCHEMES:
            st.fail("path", f"must be a folder every node mounts at the same path, or an object store URI "
                            f"({', '.join(s + '://' for s in URI_SCHEMES)}), but got {storage_path!r}")
        if not uri_bucket(storage_path):
            st.fail("path", f"must name a bucket (e.g. s3://my-bucket/search), but got {storage_path!r}")
    storage_path = storage_path.removeprefix("file://") if storage_path else None
    st.finish()
    return cache_dir, storage_path


def apply_overrides(raw: Any, overrides: tuple[str, ...], *, source: str) -> Any:
    """Apply ``--set key.path=value`` overrides (value parsed as YAML) to the loaded document."""
    if not isinstance(raw, dict):
        return raw
    for item in overrides:
        if "=" not in item:
            raise SpaceError(f"{source}: --set {item!r}: must be KEY.PATH=VALUE, e.g. budget.trials=4")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise SpaceError(f"{source}: --set {key}: {part} is not a mapping, so it has no key {parts[-1]!r}")
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value) if value else None
    return raw


def load_space(path: str | Path, overrides: tuple[str, ...] = ()) -> Space:
    """Read, override, and validate a space file. Raises ``SpaceError`` (one line) on any problem."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise SpaceError(f"{source}: no such space file") from None
    except OSError as error:
        raise SpaceError(f"{source}: cannot be read ({error.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SpaceError(f"{source}: malformed YAML at {where}: {problem}") from None
    raw = apply_overrides(raw, tuple(overrides), source=source)
    space = parse_space(raw, source=source, sha256=hashlib.sha256(text).hexdigest(), overrides=tuple(overrides))
    return absolute_paths(space)


def absolute_paths(space: Space) -> Space:
    """Relative paths in a space file are relative to where the command runs; make them absolute.

    Ray runs each trial in its own working directory (and a cluster on other machines), so a path
    that is not absolute would name a different place, or nothing, inside a trial.
    """

    def absolute(path: str | None) -> str | None:
        return str(Path(path).expanduser().resolve()) if path and not is_uri(path) else path

    return replace(
        space,
        model=replace(space.model, weights=absolute(space.model.weights), cfg=absolute(space.model.cfg)),
        data=replace(space.data, path=absolute(space.data.path)),
        cache_dir=absolute(space.cache_dir),
        storage_path=absolute(space.storage_path),
    )
