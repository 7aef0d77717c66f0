"""The published trained networks ``fcn pretrained`` knows: where their weights are, how
they are checked, and the figures their authors published for them.

Plain data (no torch): ``fcn pretrained --list`` reads it without loading a framework.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from model.errors import FCNError

Kind = Literal["caffe", "torchvision"]

CAFFE_HOST = "http://dl.caffe.berkeleyvision.org"
TORCHVISION_HOST = "https://download.pytorch.org/models"
REFERENCE = "https://github.com/shelhamer/fcn.berkeleyvision.org"
TORCHVISION_DOCS = "https://docs.pytorch.org/vision/stable/models/fcn.html"
# The reference scores its PASCAL nets on seg11valid: the 736 images of VOC2011 val that
# are not in SBD's training set.
SEG11VALID = "PASCAL VOC 2011 seg11valid (736 images), published by the reference"
COCO_VOC = "COCO val2017, VOC's 20 categories, published by torchvision"
# The paper's figures for the other data sets (Long, Shelhamer, Darrell, CVPR 2015).
CONTEXT_VAL = "PASCAL-Context 59-class task, VOC2010 val (5,105 images), the paper's Table 6"
NYUD_TEST = "NYUDv2 40-class task, test (654 images), the paper's Table 4"
SIFTFLOW_TEST = (
    "SIFT Flow test (200 images), 33 classes and geometric accuracy, the paper's Table 5"
)
# The paper's Table 5 gives FCN-16s only; no figure was published for the other two nets.
SIFTFLOW_UNPUBLISHED = "no figure published (the paper's Table 5 gives FCN-16s only)"


class UnknownModelError(FCNError, KeyError):
    """A name that is not in the registry; the message lists the names there are."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Pretrained:
    """One published network: the file of its weights and what is known about it."""

    name: str
    kind: Kind
    # Our architecture name: a model.nets.fcn ARCHS entry, or a torchvision builder's name.
    arch: str
    summary: str
    url: str
    # The published SHA1 of the file, a SHA256 prefix (torchvision's file names carry one),
    # or neither where none was ever published: then the download is checked only for being
    # complete, and its content by the conversion, which reads and checks every layer.
    sha1: str | None = None
    sha256: str | None = None
    size_mib: int = 0  # about, for the listing
    # The authors' figures for these weights, as fractions under our metric names.
    metrics: Mapping[str, float] = field(default_factory=dict)
    metrics_on: str = ""
    reference: str = REFERENCE
    # The trunk of a Caffe entry's net (model.names.BACKBONES), as its conversion finds it.
    backbone: str = "vgg16"
    # The data set of a Caffe entry's classes and input mean (model.caffe.datasets).
    dataset: str = "voc"

    @property
    def file_name(self) -> str:
        return urlsplit(self.url).path.rsplit("/", 1)[-1]

    @property
    def digest(self) -> str:
        """How the file is checked, in words."""
        if self.sha1:
            return f"SHA1 {self.sha1}"
        if self.sha256:
            return f"SHA256 {self.sha256}..."
        return "no published digest"


def _caffe(
    name: str,
    arch: str,
    file: str,
    mean_iu: float,
    summary: str,
    *,
    size_mib: int = 513,
    **kw: str,
) -> Pretrained:
    return Pretrained(
        name=name,
        kind="caffe",
        arch=arch,
        summary=summary,
        url=f"{CAFFE_HOST}/{file}",
        size_mib=size_mib,
        metrics={"mean_iu": mean_iu},
        metrics_on=SEG11VALID,
        **kw,
    )


def _table(pixel_acc: float, mean_acc: float, mean_iu: float, fw_iu: float) -> dict[str, float]:
    """A row of the paper's tables (pixel acc., mean acc., mean IU, f.w. IU, in percent) as
    fractions under our metric names, mean IU first as listings show it."""
    row = {
        "mean_iu": mean_iu,
        "pixel_accuracy": pixel_acc,
        "mean_accuracy": mean_acc,
        "frequency_weighted_iu": fw_iu,
    }
    return {name: round(value / 100, 4) for name, value in row.items()}


def _other(
    name: str,
    arch: str,
    file: str,
    summary: str,
    metrics: dict[str, float],
    *,
    dataset: Literal["context", "nyud", "siftflow"],
    size_mib: int,
) -> Pretrained:
    """A reference net of another data set: PASCAL-Context, NYUDv2 or SIFT Flow
    (``dataset``). ``size_mib`` is its weights' float32 bytes (no size was published; the
    file is a little larger)."""
    where = {"context": CONTEXT_VAL, "nyud": NYUD_TEST, "siftflow": SIFTFLOW_TEST}[dataset]
    return Pretrained(
        name=name,
        kind="caffe",
        arch=arch,
        summary=summary,
        url=f"{CAFFE_HOST}/{file}",
        size_mib=size_mib,
        metrics=metrics,
        metrics_on=where if metrics else SIFTFLOW_UNPUBLISHED,
        dataset=dataset,
    )


def _torchvision(name: str, arch: str, file: str, size_mib: int, **metrics: float) -> Pretrained:
    backbone = arch.removeprefix("fcn_")
    return Pretrained(
        name=name,
        kind="torchvision",
        arch=arch,
        summary=f"torchvision's FCN on a dilated {backbone} (output stride 8), COCO with "
        "VOC's labels",
        url=f"{TORCHVISION_HOST}/{file}",
        # The digits after the last "-" of the file name begin the file's SHA256.
        sha256=file.rsplit("-", 1)[1].split(".", 1)[0],
        size_mib=size_mib,
        metrics=metrics,
        metrics_on=COCO_VOC,
        reference=TORCHVISION_DOCS,
    )


# The SHA1s are those the reference lists for fcn8s (README) and OpenCV's test-data
# downloader lists for fcn32s (opencv_extra, testdata/dnn/download_models.py); none was
# published for the other three files.
MODELS: dict[str, Pretrained] = {
    entry.name: entry
    for entry in (
        _caffe(
            "voc-fcn32s",
            "fcn32s",
            "fcn32s-heavy-pascal.caffemodel",
            0.636,
            "the reference FCN-32s, PASCAL VOC (SBD train), stride 32",
            sha1="05eb922d7829c39448f57e5ab9d8cd75d6c0be6d",
        ),
        _caffe(
            "voc-fcn16s",
            "fcn16s",
            "fcn16s-heavy-pascal.caffemodel",
            0.650,
            "the reference FCN-16s, PASCAL VOC (SBD train), stride 16",
        ),
        _caffe(
            "voc-fcn8s",
            "fcn8s",
            "fcn8s-heavy-pascal.caffemodel",
            0.655,
            "the reference FCN-8s, PASCAL VOC (SBD train), stride 8; 67.2 mean IU on VOC2012 test",
            sha1="c449ea74dd7d83751d1357d6a8c323fcf4038962",
        ),
        _caffe(
            "voc-fcn8s-atonce",
            "fcn8s-atonce",
            "fcn8s-atonce-pascal.caffemodel",
            0.654,
            "the reference FCN-8s trained all at once, PASCAL VOC (SBD train), stride 8",
        ),
        _caffe(
            "voc-fcn-alexnet",
            "fcn32s",
            "fcn-alexnet-pascal.caffemodel",
            0.480,
            "the reference FCN-AlexNet (FCN-32s on Caffe's AlexNet), PASCAL VOC (SBD train), "
            "stride 32",
            size_mib=224,
            backbone="caffe-alexnet",
        ),
        _other(
            "context-fcn32s",
            "fcn32s",
            "pascalcontext-fcn32s-heavy.caffemodel",
            "the reference FCN-32s, PASCAL-Context (59 classes and background), stride 32",
            _table(63.8, 42.7, 31.8, 48.3),
            dataset="context",
            size_mib=570,
        ),
        _other(
            "context-fcn16s",
            "fcn16s",
            "pascalcontext-fcn16s-heavy.caffemodel",
            "the reference FCN-16s, PASCAL-Context (59 classes and background), stride 16",
            _table(65.7, 46.2, 34.8, 50.7),
            dataset="context",
            size_mib=528,
        ),
        _other(
            "context-fcn8s",
            "fcn8s",
            "pascalcontext-fcn8s-heavy.caffemodel",
            "the reference FCN-8s, PASCAL-Context (59 classes and background), stride 8",
            _table(65.9, 46.5, 35.1, 51.0),
            dataset="context",
            size_mib=517,
        ),
        _other(
            "nyud-fcn32s-color",
            "fcn32s",
            "nyud-fcn32s-color-heavy.caffemodel",
            "the reference FCN-32s on colour alone, NYUDv2 (40 classes), stride 32",
            _table(60.0, 42.2, 29.2, 43.9),
            dataset="nyud",
            size_mib=538,
        ),
        _other(
            "siftflow-fcn32s",
            "fcn32s",
            "siftflow-fcn32s-heavy.caffemodel",
            "the reference FCN-32s, SIFT Flow (33 classes, and a second head of 3 geometric "
            "classes), stride 32",
            {},
            dataset="siftflow",
            size_mib=530,
        ),
        _other(
            "siftflow-fcn16s",
            "fcn16s",
            "siftflow-fcn16s-heavy.caffemodel",
            "the reference FCN-16s, SIFT Flow (33 classes, and a second head of 3 geometric "
            "classes), stride 16",
            {**_table(85.2, 51.7, 39.5, 76.1), "geometric_accuracy": 0.943},
            dataset="siftflow",
            size_mib=518,
        ),
        _other(
            "siftflow-fcn8s",
            "fcn8s",
            "siftflow-fcn8s-heavy.caffemodel",
            "the reference FCN-8s, SIFT Flow (33 classes, and a second head of 3 geometric "
            "classes), stride 8",
            {},
            dataset="siftflow",
            size_mib=515,
        ),
        _torchvision(
            "torchvision-fcn-resnet50",
            "fcn_resnet50",
            "fcn_resnet50_coco-1167a1af.pth",
            135,
            mean_iu=0.605,
            pixel_accuracy=0.914,
        ),
        _torchvision(
            "torchvision-fcn-resnet101",
            "fcn_resnet101",
            "fcn_resnet101_coco-7ecb50ca.pth",
            208,
            mean_iu=0.637,
            pixel_accuracy=0.919,
        ),
    )
}


def lookup(name: str) -> Pretrained:
    """The registry's entry for ``name``; ``UnknownModelError`` suggests the nearest."""
    try:
        return MODELS[name]
    except KeyError:
        pass
    near = difflib.get_close_matches(name, MODELS, n=1, cutoff=0.5)
    hint = f"did you mean {near[0]}? " if near else ""
    raise UnknownModelError(
        f"no pretrained model {name!r}; {hint}known: {', '.join(MODELS)} (fcn pretrained --list)"
    )
