"""The installed distribution of this project: its name and version, which ``fcn --version``
and the Open Inference Protocol's server metadata both report (stdlib only)."""

from __future__ import annotations

import importlib.metadata

DISTRIBUTION = "fcn-segmentation"


def version() -> str:
    """The installed distribution's version (``unknown`` when run from a bare checkout)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
