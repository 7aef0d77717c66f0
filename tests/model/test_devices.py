"""``--device`` and ``--amp``: resolved on this machine, refused by flag when it cannot run them."""

from __future__ import annotations

import pytest
import torch

from model.devices import DeviceError, amp_dtype, resolve_device


def test_auto_is_the_cpu_without_cuda_and_unknown_devices_are_refused_by_flag() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(DeviceError, match="--device 'gpu': use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    with pytest.raises(DeviceError, match="--device 'mps': use auto, cpu, cuda or cuda:N"):
        resolve_device("mps")


def test_amp_is_cuda_only() -> None:
    assert amp_dtype("none", torch.device("cpu")) is None
    with pytest.raises(DeviceError, match="--amp bf16: needs a CUDA device"):
        amp_dtype("bf16", torch.device("cpu"))
