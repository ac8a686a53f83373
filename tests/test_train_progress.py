"""Training progress in a log: a few plain lines, not a carriage-return redraw per step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = 40

# Trains a 64 px YOLOv4-tiny on 4 blank images with a named progress, in a process whose stderr
# is a pipe (as under nohup, CI or `make run > log`).
_TRAIN = f"""
import numpy as np
from search.models import get_family
from search.models.yolov4_tiny.builder import build_yolov4_tiny
from search.train import train

images = np.full((4, 64, 64, 3), 100, np.uint8)
boxes = [np.array([[0.2, 0.2, 0.6, 0.6]], np.float32)] * 4
classes = [np.array([0])] * 4
model = build_yolov4_tiny(num_classes=1, resolution=64)
train(model, heads=get_family("yolov4_tiny").heads(1), images=images, boxes=boxes, classes=classes,
      steps={STEPS}, batch_size=2, progress="base model")
"""


def test_progress_in_a_log_is_a_few_plain_lines():
    done = subprocess.run([sys.executable, "-c", _TRAIN], cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "\r" not in done.stderr  # tqdm's redraws would be one carriage return per update
    lines = [line for line in done.stderr.splitlines() if line.startswith("base model:")]
    # One line per LOG_EVERY_S seconds and one at the end: far fewer than one per step.
    assert 1 <= len(lines) <= STEPS // 4, lines
    assert lines[-1].startswith(f"base model: step {STEPS}/{STEPS}, loss "), lines
