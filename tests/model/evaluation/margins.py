"""How close a network's labels are to a tie: the premise of the tests that compare a tiled
run's labels with the whole image's."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from model.checkpoint import Checkpoint
from model.nets.preprocessing import Normalize

# oneDNN picks its convolution kernels by tensor shape, so a pixel's logits in a tile and in
# the whole image are sums taken in different orders: up to 2e-6 apart on these tiny nets
# (ONNX Runtime's are equal to the bit). A label whose two best logits are further apart than
# this cannot change.
TIE = 1e-5


def smallest_margin(checkpoint: Checkpoint, image: NDArray[np.uint8]) -> float:
    """The smallest gap between the two best logits of any pixel of ``image`` [H, W, 3]."""
    net = checkpoint.build_model().eval()
    batch = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    with torch.no_grad():
        best = net(Normalize(checkpoint.preprocessing)(batch)).topk(2, dim=1).values
    return float((best[:, 0] - best[:, 1]).min())
