"""One contract, run against every objective of ``OBJECTIVES``: measured on a real converted model,
each measurement returns exactly the columns it declares, and every objective can be recorded."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from search.errors import SpaceError
from search.objectives import DIRECTIONS, OBJECTIVES, Artifact, MeasureContext, measurements_for, recorded_columns
from search.record import COLUMNS, check_recordable

RESOLUTION = 64


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A tiny float32 model of the stock family, converted for real, and a small generated dataset."""
    from search.data.generated import generate_shapes_dataset
    from search.data.yolo_format import load_yolo_dataset
    from search.models import get_family
    from search.quantize import convert
    from search.space import MeasureSpec

    data_yaml = generate_shapes_dataset(tmp_path_factory.mktemp("data"), seed=0, num_train=4, num_val=4, image_size=96)
    dataset = load_yolo_dataset(data_yaml)
    family = get_family("yolov4_tiny")
    model = family.build(num_classes=dataset.num_classes, resolution=RESOLUTION)
    converted = convert(model, mode="float32")
    artifact = Artifact(content=converted.content, model=model, resolution=RESOLUTION, mode="float32")
    # No reference given: the latency measurement builds the real rungs it needs, float32 at 64 px
    # and the 256 px int8 anchor (search.timing.rungs).
    measure = MeasureSpec(latency_warmup=1, latency_min_runs=3, latency_min_seconds=0.0, latency_max_seconds=0.5,
                          latency_reference_seconds=0.5)
    context = MeasureContext(dataset=dataset, measure=measure, preprocessing="stretch",
                             heads=family.heads(dataset.num_classes), num_threads=1)
    return artifact, context


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_is_measured_and_recorded(name, measured):
    objective = OBJECTIVES[name]
    assert objective.direction in DIRECTIONS and objective.kind in ("accuracy", "size", "latency")
    measurement = objective.measurement
    assert name in measurement.values
    values = measurement.measure(*measured)
    assert set(values) == set(measurement.columns)
    assert isinstance(values[name], (int, float)) and math.isfinite(values[name]) and values[name] >= 0
    assert set(measurement.columns) <= set(recorded_columns()) <= set(COLUMNS)
    assert measurement.how(measured[1].measure, values)  # the card says how it was taken


def test_each_measurement_runs_once_however_many_objectives_it_yields():
    assert [m.name for m in measurements_for(["map50", "map", "latency_ms", "latency_p90_ms"])] == ["accuracy", "latency"]


def test_an_objective_no_measurement_declares_is_refused_before_anything_runs(monkeypatch):
    from dataclasses import replace

    broken = replace(OBJECTIVES["params"], name="params_typo")
    monkeypatch.setitem(OBJECTIVES, "params_typo", broken)
    with pytest.raises(SpaceError, match="params_typo cannot be recorded"):
        check_recordable(["map50", "params_typo"], source="spaces/x.yaml")


def test_reading_the_objectives_table_imports_no_heavy_library():
    code = ("import sys, search.objectives; "
            "print(sorted(m for m in ('tensorflow', 'pycocotools', 'ai_edge_litert', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
