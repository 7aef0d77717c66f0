"""The data sets the reference's RGB Caffe FCNs were trained on: each one's classes and the
mean its data layer subtracts (BGR, 0-255), which the converted weights expect as input."""

from __future__ import annotations

from dataclasses import dataclass

from contract.palette import VOC_CLASSES
from model.data.classes import CONTEXT_CLASSES, NYUD_CLASSES, SIFTFLOW_CLASSES
from model.nets.preprocessing import CAFFE, Preprocessing


@dataclass(frozen=True)
class CaffeDataset:
    """A data set a reference net scores: its layout name, classes and input mean."""

    name: str  # as model.data names the layout, and fcn.dataset records it
    title: str
    classes: tuple[str, ...]
    preprocessing: Preprocessing


def _caffe_mean(name: str, bgr: tuple[float, float, float]) -> Preprocessing:
    return Preprocessing(
        name=f"caffe-{name}", channel_order="BGR", scale=1.0, mean=bgr, std=(1.0, 1.0, 1.0)
    )


# The means are the data layers': voc_layers.py (through net.py), pascalcontext_layers.py,
# siftflow_layers.py and nyud_layers.py (its colour mean). SIFT Flow's classes are its
# semantic head's; its nets' second, geometric head is SIFTFLOW_GEOMETRY_CLASSES'.
DATASETS: dict[str, CaffeDataset] = {
    d.name: d
    for d in (
        CaffeDataset("voc", "PASCAL VOC", tuple(VOC_CLASSES), CAFFE),
        CaffeDataset(
            "context",
            "PASCAL-Context (59 classes and background)",
            CONTEXT_CLASSES,
            _caffe_mean("context", (104.007, 116.669, 122.679)),
        ),
        CaffeDataset(
            "siftflow",
            "SIFT Flow (33 classes; 3 geometric)",
            SIFTFLOW_CLASSES,
            _caffe_mean("siftflow", (114.578, 115.294, 108.353)),
        ),
        CaffeDataset(
            "nyud",
            "NYUDv2 (40 classes)",
            NYUD_CLASSES,
            _caffe_mean("nyud", (116.190, 97.203, 92.318)),
        ),
    )
}


def dataset_for(num_classes: int) -> CaffeDataset | None:
    """The reference data set whose nets score ``num_classes`` classes, if one does."""
    return next((d for d in DATASETS.values() if len(d.classes) == num_classes), None)
