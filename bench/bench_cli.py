"""How long ``fcn --help`` and each command's ``--help`` take in a fresh process, beside the
baselines measured in the same run: the interpreter alone, and ``import torch``.

    python bench/bench_cli.py [--runs 5]

The median of ``--runs`` fresh processes each; a command's help never imports torch or ONNX,
so it should sit near the interpreter's start, far below torch's import.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.cli import COMMANDS  # noqa: E402


def seconds(code: str, argv: list[str], runs: int) -> float:
    """The median wall time of ``python -c CODE ARGV`` over ``runs`` fresh processes."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", code, *argv], cwd=ROOT, check=False, capture_output=True
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    help_code = "import sys; from model.cli import main; main(sys.argv[1:])"
    rows = [
        ("python -c pass", seconds("pass", [], args.runs)),
        ("python -c 'import torch'", seconds("import torch", [], args.runs)),
        ("fcn --help", seconds(help_code, ["--help"], args.runs)),
        ("fcn --version", seconds(help_code, ["--version"], args.runs)),
    ]
    rows += [
        (f"fcn {name} --help", seconds(help_code, [name, "--help"], args.runs)) for name in COMMANDS
    ]
    torch_s = rows[1][1]
    print(f"{'command':<28} {'seconds':>8} {'/ import torch':>15}")
    for name, value in rows:
        print(f"{name:<28} {value:8.3f} {value / torch_s:15.2f}")


if __name__ == "__main__":
    main()
