"""FCN training package: networks, weights, data, training, evaluation and ONNX export."""

from model.nets.fcn import ARCHS, FCN, FCN8s, FCN8sAtOnce, FCN16s, FCN32s, ModelSpec, build_fcn

__all__ = ["ARCHS", "FCN", "FCN8s", "FCN8sAtOnce", "FCN16s", "FCN32s", "ModelSpec", "build_fcn"]
