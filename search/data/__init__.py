"""Datasets (generated, YOLO layout, COCO layout), the shared preprocessing, and their types.

Every loader returns a ``Dataset`` whose boxes are normalized xyxy of the original images; every
consumer (training, calibration, evaluation) gets network inputs from ``split_arrays``.
"""

from search.data.coco_format import load_coco_dataset, load_coco_folder
from search.data.dataset import Dataset, Example, Split
from search.data.generated import SHAPE_NAMES, generate_shapes_dataset
from search.data.preprocess import (
    PREPROCESSING,
    PreprocessingMode,
    SplitArrays,
    image_boxes_to_model,
    load_image,
    model_boxes_to_image,
    preprocess,
    preprocessing_mode,
    split_arrays,
)
from search.data.yolo_format import load_yolo_dataset

__all__ = [
    "PREPROCESSING",
    "SHAPE_NAMES",
    "Dataset",
    "Example",
    "PreprocessingMode",
    "Split",
    "SplitArrays",
    "generate_shapes_dataset",
    "image_boxes_to_model",
    "load_coco_dataset",
    "load_coco_folder",
    "load_image",
    "load_yolo_dataset",
    "model_boxes_to_image",
    "preprocess",
    "preprocessing_mode",
    "split_arrays",
]
