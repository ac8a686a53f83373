"""The per-layer int8 error report and the int8_selective mode built on its ranking."""

import csv
import json

import numpy as np
import pytest

from search.quantize import audit, convert, layer_error_report, write_layer_report
from search.quantize.debugger import RANK_KEY
from search.tflite_model import TFLiteDetector

FLOAT_LAYERS = 3


@pytest.fixture(scope="module")
def report(model, images):
    return layer_error_report(model, calibration_images=images[:8], mode="int8")


@pytest.fixture(scope="module")
def selective(model, images):
    return convert(model, mode="int8_selective", calibration_images=images[:8], float_layers=FLOAT_LAYERS)


def test_report_names_every_layer_worst_first(report, tmp_path):
    assert [row["rank"] for row in report] == list(range(1, len(report) + 1))
    keys = [row[RANK_KEY] for row in report]
    assert keys == sorted(keys, reverse=True)
    layers = {row["layer"] for row in report}
    assert {f"conv_{i}" for i in (0, 1, 2, 27, 29, 36)} <= layers  # the heads too, not "StatefulPartitionedCall"
    assert sum(row["op"] == "CONV_2D" for row in report) == 21
    # Every quantized op rounds: at least the 1/sqrt(12) of pure rounding, minus sampling noise.
    conv_keys = [row[RANK_KEY] for row in report if row["op"] == "CONV_2D"]
    assert min(conv_keys) > 0.2 and all(np.isfinite(conv_keys))

    written = write_layer_report(report, tmp_path / "quant_errors.csv")
    rows = list(csv.DictReader(written.open()))
    assert [row["layer"] for row in rows] == [row["layer"] for row in report]
    as_json = json.loads(write_layer_report(report, tmp_path / "quant_errors.json").read_text())
    assert as_json["rank_key"] == RANK_KEY and as_json["layers"][0]["layer"] == report[0]["layer"]
    with pytest.raises(ValueError, match=r"\.csv or \.json"):
        write_layer_report(report, tmp_path / "quant_errors.txt")


def test_report_refuses_modes_it_cannot_measure(model, images):
    with pytest.raises(ValueError, match="error report exists for modes int8, int8_selective"):
        layer_error_report(model, calibration_images=images[:2], mode="float16")


def test_selective_keeps_exactly_the_worst_layers_in_float(selective, report):
    assert selective.audit.passed, selective.audit.problems
    assert len(selective.float_layers) == FLOAT_LAYERS
    assert selective.float_layers == tuple(row["tensor"] for row in report[:FLOAT_LAYERS])
    assert sorted(selective.audit.float_layers) == sorted(selective.float_layers)
    assert f"float {FLOAT_LAYERS}:" in selective.audit.summary()
    float_convs = sum(row["op"] == "CONV_2D" for row in report[:FLOAT_LAYERS])
    assert selective.audit.weight_dtypes.get("FLOAT32", 0) == float_convs
    assert selective.audit.op_counts["CONV_2D"] == 21


def test_audit_of_a_selective_model_names_the_float_layers(selective):
    as_int8 = audit(selective.content, mode="int8")  # without the allowance: every kept op is a problem
    assert not as_int8.passed
    named = selective.float_layers[0].split(";")[0]
    assert any(named in problem and "FLOAT32" in problem for problem in as_int8.problems)
    too_few = audit(selective.content, mode="int8_selective", float_layers=selective.float_layers[1:])
    assert not too_few.passed
    typo = audit(selective.content, mode="int8_selective", float_layers=(*selective.float_layers, "conv_99"))
    assert not typo.passed and "not in the model: conv_99" in typo.problems[0]


def test_selective_zero_is_int8_and_float_layers_need_the_mode(model, images):
    plain = convert(model, mode="int8_selective", calibration_images=images[:8], float_layers=0)
    assert plain.audit.passed and plain.float_layers == () and audit(plain.content, mode="int8").passed
    with pytest.raises(ValueError, match="selective modes only"):
        convert(model, mode="int8", calibration_images=images[:8], float_layers=2)


def test_selective_follows_float_at_least_as_closely_as_int8(model, images, selective):
    image = images[8]  # not among the calibration images
    reference = [head.numpy()[0] for head in model(image[None], training=False)]
    full = convert(model, mode="int8", calibration_images=images[:8])

    def error(content):
        heads = TFLiteDetector(content)(image)
        return max(float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(heads, reference))

    print(f"relative error: int8 {error(full.content):.4f}, int8_selective({FLOAT_LAYERS}) {error(selective.content):.4f}")
    assert error(selective.content) <= error(full.content) * 1.05
