"""Every kind of bad input: one line (what, where, what is allowed), exit code 2, no Ray, nothing written.

Each case calls the command line in this process (``search.cli.main``, the same code ``python -m
search`` runs; tests/test_cli.py pins the subprocess itself) and checks the line on stderr, the
exit code, that the run directory was not created (or not touched), and that Ray never started.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from search.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "spaces" / "smoke.yaml"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad-input-cache")


def run_fails(capsys, *argv: str) -> str:
    """Run the CLI; it must fail as a user error. Returns the one line it printed."""
    import ray

    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert not ray.is_initialized()
    return err.rstrip("\n")


def space_with(tmp_path: Path, old: str, new: str) -> Path:
    text = SMOKE.read_text()
    assert old in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace(old, new))
    return bad


def run_space(capsys, tmp_path: Path, space: Path, cache: Path, *extra: str) -> str:
    run_dir = tmp_path / "run"
    line = run_fails(capsys, "run", str(space), "--run-dir", str(run_dir), "--set", f"storage.cache_dir={cache}", *extra)
    assert not run_dir.exists()
    return line


def test_malformed_yaml(capsys, tmp_path, cache):
    bad = space_with(tmp_path, "budget:\n  trials: 3", "budget:\n  trials: [3")
    line = run_space(capsys, tmp_path, bad, cache)
    assert line.startswith(f"SpaceError: {bad}: malformed YAML at line ")


def test_unknown_key_names_the_closest_valid_one(capsys, tmp_path, cache):
    bad = space_with(tmp_path, "max_concurrent: 2", "max_concurent: 2")
    line = run_space(capsys, tmp_path, bad, cache)
    assert line.startswith(f"SpaceError: {bad}: budget.max_concurent: is not a known key; allowed: ")
    assert line.endswith("did you mean 'max_concurrent'?")


def test_wrong_type(capsys, tmp_path, cache):
    bad = space_with(tmp_path, "trials: 3", "trials: three")
    line = run_space(capsys, tmp_path, bad, cache)
    assert line.startswith(f"SpaceError: {bad}: budget.trials: must be an integer")
    assert "'three'" in line


@pytest.mark.parametrize("low, high", [(0.6, 0.3), (0.5, 0.5)], ids=["inverted", "empty"])
def test_inverted_or_empty_range(capsys, tmp_path, cache, low, high):
    bad = space_with(tmp_path, "target_sparsity: {low: 0.3, high: 0.6}", f"target_sparsity: {{low: {low}, high: {high}}}")
    line = run_space(capsys, tmp_path, bad, cache)
    assert line == (f"SpaceError: {bad}: search.pruning.target_sparsity: must have low < high (a non-empty range), "
                    f"but got low={low}, high={high}")


def test_resolution_not_a_multiple_of_32(capsys, tmp_path, cache):
    bad = space_with(tmp_path, "resolution: {choices: [64, 96]}", "resolution: {choices: [64, 100]}")
    line = run_space(capsys, tmp_path, bad, cache)
    assert line == f"SpaceError: {bad}: search.resolution: must be multiples of 32 from 32 to 1024, but got 100"


def test_calibration_size_larger_than_the_training_split(capsys, tmp_path, cache):
    line = run_space(capsys, tmp_path, SMOKE, cache, "--set", "search.calibration_size={low: 4, high: 64}")
    assert line.startswith(f"SpaceError: {SMOKE}: search.calibration_size: must be <= the 48 training images in ")
    assert line.endswith(", but got 64")


def test_fine_tune_too_short_to_prune(capsys, tmp_path, cache):
    line = run_space(capsys, tmp_path, SMOKE, cache, "--set", "fine_tune.steps=5")
    assert line == (f"SpaceError: {SMOKE}: fine_tune.steps: must be >= 10 when search.pruning.schedule can prune "
                    "(the mask ramps up over the fine-tune, then the model recovers), but got 5")


def test_a_search_whose_every_trial_failed_exits_1(capsys, tmp_path):
    from search.cli import _outcome
    from search.pareto import Front
    from search.runner import SearchResult

    nothing = Front(completed=(), members=(), exported=None)
    assert _outcome(SearchResult(run_dir=tmp_path, completed=0, failed=3, front=nothing, export_dir=None)) == 1
    assert capsys.readouterr().err.startswith("NoCompletedTrial: all 3 trials failed;")
    assert _outcome(SearchResult(run_dir=tmp_path, completed=1, failed=2, front=nothing, export_dir=None)) == 0


def _darknet_space(tmp_path: Path, weights: Path) -> Path:
    from search.models.yolov4_tiny.darknet import yolov4_tiny_cfg_text

    cfg = tmp_path / "yolov4-tiny-3.cfg"
    cfg.write_text(yolov4_tiny_cfg_text(num_classes=3, resolution=64))
    return space_with(tmp_path, "weights: null ", f"weights: {weights}\n  cfg: {cfg} ")


def test_missing_weights(capsys, tmp_path, cache):
    weights = tmp_path / "nope.weights"
    line = run_space(capsys, tmp_path, _darknet_space(tmp_path, weights), cache)
    assert line.startswith("WeightsError: ") and "not found" in line and str(weights) in line


def test_corrupt_weights(capsys, tmp_path, cache):
    weights = tmp_path / "truncated.weights"
    weights.write_bytes(b"\x00" * 100)  # shorter than anything the cfg needs
    line = run_space(capsys, tmp_path, _darknet_space(tmp_path, weights), cache)
    assert line.startswith("WeightsError: ") and str(weights) in line


def _yolo_space(tmp_path: Path, data_yaml: Path) -> Path:
    return space_with(tmp_path, "format: generated", f"format: yolo\n  path: {data_yaml}")


def test_dataset_folder_missing(capsys, tmp_path, cache):
    data_yaml = tmp_path / "nowhere" / "data.yaml"
    line = run_space(capsys, tmp_path, _yolo_space(tmp_path, data_yaml), cache)
    assert line == f"DataError: data file not found: {data_yaml}"


def test_dataset_without_labels(capsys, tmp_path, cache):
    from PIL import Image

    data = tmp_path / "data"
    for split in ("train", "val"):
        (data / "images" / split).mkdir(parents=True)
        Image.new("RGB", (64, 64)).save(data / "images" / split / "a.jpg")
    (data / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [circle, square, triangle]\n")
    line = run_space(capsys, tmp_path, _yolo_space(tmp_path, data / "data.yaml"), cache)
    assert line == (f"DataError: labels folder not found: {data / 'labels' / 'train'} "
                    f"(the twin of {data / 'images' / 'train'}, from {data / 'data.yaml'})")


def test_run_directory_that_exists_is_never_overwritten(capsys, tmp_path, cache):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("precious")
    line = run_fails(capsys, "run", str(SMOKE), "--run-dir", str(run_dir), "--set", f"storage.cache_dir={cache}")
    assert line == f"RunDirError: {run_dir}: exists already; a run is never overwritten (choose another --run-dir)"
    assert [p.name for p in run_dir.iterdir()] == ["keep.txt"]


def test_run_directory_that_cannot_be_written(capsys, tmp_path, cache):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    run_dir = blocker / "run"
    line = run_fails(capsys, "run", str(SMOKE), "--run-dir", str(run_dir), "--set", f"storage.cache_dir={cache}")
    assert line == f"RunDirError: {run_dir}: cannot be created ({blocker} is not a writable folder)"


def test_unreachable_address(capsys, tmp_path, cache):
    line = run_space(capsys, tmp_path, SMOKE, cache, "--address", "127.0.0.1:9")
    assert line.startswith("ClusterError: --address 127.0.0.1:9: no Ray head answers there (")
    assert line.endswith("start one with `ray start --head` or `ray up cluster.yaml`")


def test_storage_that_cannot_be_written(capsys, tmp_path, cache):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = run_space(capsys, tmp_path, SMOKE, cache, "--storage", str(blocker / "storage"))
    assert line == (f"SpaceError: {SMOKE}: storage.path: must be a writable folder every node mounts, but got "
                    f"{blocker / 'storage'} ({blocker} is not a writable folder)")


def test_an_object_store_that_cannot_be_written(capsys, tmp_path, cache, s3_server):
    uri = f"s3://no-such-bucket/search?endpoint_override={s3_server}&scheme=http&region=us-east-1"
    line = run_space(capsys, tmp_path, SMOKE, cache, "--storage", uri)
    assert line.startswith(f"SpaceError: {SMOKE}: storage.path: must be an object store this machine can write "
                           f"to, but writing to {uri} failed (")
    assert "bucket does not exist" in line


def test_resume_of_something_that_is_not_a_run(capsys, tmp_path):
    line = run_fails(capsys, "resume", str(tmp_path / "nothing"))
    assert line == (f"RunDirError: {tmp_path / 'nothing'}: not a run directory that can be resumed "
                    "(no readable run.json: No such file or directory)")


def test_resume_of_a_finished_run(capsys, tmp_path):
    (tmp_path / "run.json").write_text('{"status": "finished", "completed_trials": 3}')
    line = run_fails(capsys, "resume", str(tmp_path))
    assert line == (f"RunDirError: {tmp_path}: finished already (3 completed trials); nothing to resume "
                    "(start a new run to search more)")


def test_resume_after_the_space_file_changed(capsys, tmp_path):
    space = space_with(tmp_path, "trials: 3", "trials: 4")
    (tmp_path / "run.json").write_text(f'{{"status": "running", "space_file": "{space}", "space_sha256": "{"0" * 64}"}}')
    line = run_fails(capsys, "resume", str(tmp_path))
    assert line.startswith(f"SpaceError: {space}: changed since the run started (sha256 ")
    assert line.endswith("was 000000000000); a resumed search must use the same space")
