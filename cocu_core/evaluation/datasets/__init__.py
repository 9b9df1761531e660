"""Readers for the zero-shot benchmarks in their standard on-disk layouts, one role per module (timm's readers):
`classes` (protocol settings, class names), `labels` (label files), `folders` (layouts), `segmentation` (one reader
per benchmark, `get_dataset`), `classification` (ImageNet-style folders, the toy world). See `segmentation.py`'s
docstring for each benchmark's label encoding."""

from typing import get_args

from cocu_core.config import EvalDataset
from cocu_core.evaluation.datasets.base import (IGNORE_INDEX, IMAGENET_S_IGNORE, DatasetFileError, DatasetLayoutError,
                                                ProtocolSettings, SegSample)
from cocu_core.evaluation.datasets.classes import (ADE20K_CLASSES, CITYSCAPES_CLASSES, COCO_OBJECT_CLASSES,
                                                   COCO_STUFF_CLASSES, COCO_THING_IDS, CONTEXT_CLASSES,
                                                   IMAGENET_S50_CLASSES, IMAGENET_S300_CLASSES, SETTINGS, VOC_CLASSES)
from cocu_core.evaluation.datasets.classification import (ClassificationFolder, ClsSample, ToyClassification,
                                                          imagenet_1k_names, imagenet_names)
from cocu_core.evaluation.datasets.labels import (annotation_mask, decode_rle_counts, imagenet_s_ids, polygon_mask,
                                                  rasterize_coco, reduce_zero_label, rle_mask)
from cocu_core.evaluation.datasets.segmentation import (DATASETS, ADE20KDataset, CityscapesDataset, COCOObjectDataset,
                                                        COCOStuffDataset, ContextDataset, ImageNetSDataset, SegDataset,
                                                        ToyDataset, VOCDataset, get_dataset)

assert set(DATASETS) == set(get_args(EvalDataset)), "every configurable dataset has a reader, and only those"

__all__ = ["IGNORE_INDEX", "IMAGENET_S_IGNORE", "DatasetFileError", "DatasetLayoutError", "ProtocolSettings",
           "SegSample", "ADE20K_CLASSES", "CITYSCAPES_CLASSES", "COCO_OBJECT_CLASSES", "COCO_STUFF_CLASSES",
           "COCO_THING_IDS", "CONTEXT_CLASSES", "IMAGENET_S50_CLASSES", "IMAGENET_S300_CLASSES", "SETTINGS",
           "VOC_CLASSES", "ClassificationFolder", "ClsSample", "ToyClassification", "imagenet_1k_names",
           "imagenet_names", "annotation_mask", "decode_rle_counts", "imagenet_s_ids", "polygon_mask", "rasterize_coco",
           "reduce_zero_label", "rle_mask", "DATASETS", "ADE20KDataset", "CityscapesDataset", "COCOObjectDataset",
           "COCOStuffDataset", "ContextDataset", "ImageNetSDataset", "SegDataset", "ToyDataset", "VOCDataset",
           "get_dataset"]
