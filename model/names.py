"""The names the ``fcn`` command offers as choices, in a module that imports nothing, so
that parsing and ``--help`` never load torch. The modules that act on them re-export them."""

from __future__ import annotations

# model.nets.fcn: the reference networks.
ARCHS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce")
# model.nets: the ImageNet classifiers a net is built on (Table 1 of the paper). caffe-alexnet
# is the reference's Caffe AlexNet (grouped convolutions, LRN); alexnet is torchvision's.
BACKBONES = ("vgg16", "alexnet", "caffe-alexnet", "googlenet")
# model.devices: --amp.
AMP_MODES = ("none", "bf16", "fp16")
# model.data.layouts: --format of a data folder.
DATA_FORMATS = ("auto", "voc", "sbd", "folder", "context", "siftflow", "nyud")
# model.training.config.
LOSSES = ("sum", "mean")
OPTIMIZERS = ("sgd", "adamw")
LR_POLICIES = ("fixed", "poly")
CLASS_WEIGHTS = ("none", "balanced")
# model.export.graph: below this opset the exporter's translations are not maintained.
MIN_OPSET = 18
# model.export.verify: the (N, H, W) batches a verification compares by default.
VERIFY_CASES: tuple[tuple[int, int, int], ...] = ((1, 1, 1), (1, 45, 71), (2, 64, 96))
