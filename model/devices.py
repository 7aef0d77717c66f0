"""Where torch runs: ``--device`` resolved to a torch device, ``--amp`` to an autocast type."""

from __future__ import annotations

import torch

from model.errors import FCNError


class DeviceError(FCNError, ValueError):
    """A device or precision this machine cannot run; the message names the flag."""


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name!r}: CUDA is not available here")
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise DeviceError(
                f"--device {name!r}: this machine has {count} CUDA device(s) "
                f"(cuda:0 to cuda:{count - 1})"
            )
    return device


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``; AMP is refused off CUDA."""
    if amp == "none":
        return None
    if device.type != "cuda":
        raise DeviceError(
            f"--amp {amp}: needs a CUDA device; this run is on {device} (use --amp none)"
        )
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise DeviceError("--amp bf16: not supported by this GPU; use --amp fp16")
    return torch.bfloat16 if amp == "bf16" else torch.float16
