"""Code run in a fresh interpreter where some packages cannot be imported: how the suite proves
that a module needs nothing of the other half (a client without the server, a codec without
the web framework)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{{name}} is blocked", name=name)
        return None
sys.meta_path.insert(0, Blocker())
"""


def run_without(blocked: Iterable[str], code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter at the checkout's root, where importing any of the
    top-level packages ``blocked`` raises ModuleNotFoundError; its exit status and output."""
    script = BLOCKER.format(blocked=sorted(blocked)) + code
    return subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
