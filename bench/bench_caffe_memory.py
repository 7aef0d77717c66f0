"""Peak memory of reading full-size Caffe weights, against the file's size.

Writes a full-size FCN-8s .caffemodel (random weights, the official file's 513 MiB) and a
full-size Caffe VGG16, then runs, each in a fresh process, a bare ``import torch``,
``fcn convert-caffe`` and ``load_caffe_vgg16`` into a full-width FCN-32s, and prints each
process's peak resident set size (ru_maxrss, from wait4) beside the file size.

Linux carries a process's peak RSS across fork and exec, so this parent stays small (it
imports neither numpy nor torch) and a child writes the test files.

    python bench/bench_caffe_memory.py [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
FCN8S_FILE = "fcn8s-random.caffemodel"
VGG16_FILE = "VGG_ILSVRC_16_layers-random.caffemodel"


def write_files(folder: Path) -> None:
    """Child process: write the full-size FCN-8s (layer, BlobShape, as the official files)
    and VGG16 (legacy layers, 4-D dims, as released) files."""
    sys.path.insert(0, str(ROOT))
    from tests.model.caffe import caffe_writer as cw

    cw.write(folder / FCN8S_FILE, cw.net(cw.reference_layers("fcn8s")))
    legacy = cw.BlobEncoding(legacy_shape=True)
    cw.write(folder / VGG16_FILE, cw.net(cw.vgg16_layers(), v1=True, encoding=legacy))


# Appended to each measured snippet: the peak so far, before interpreter teardown (which
# alone grows a bare ``import torch`` process by about 130 MiB, see the whole-process column).
REPORT = "\nimport resource; print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"


@dataclass
class Peak:
    work: int  # bytes, peak RSS up to the end of the snippet
    process: int  # bytes, peak RSS of the whole process, teardown included
    seconds: float


def measure(snippet: str) -> Peak:
    """Run ``snippet`` in a fresh Python process and return its peak resident set size."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", snippet + REPORT], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"failed: {snippet}\n{output}")
    work = int(output.split("maxrss")[-1])
    return Peak(work * 1024, usage.ru_maxrss * 1024, seconds)  # ru_maxrss is in KiB


def machine() -> str:
    memory = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    python = platform.python_version()
    return f"{cpu}, {os.cpu_count()} CPUs, {memory / 2**30:.0f} GiB RAM, Python {python}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to write the ~1.1 GB of test files")
    parser.add_argument("--write-files", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_files:
        write_files(args.write_files)
        return
    python = sys.executable
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        subprocess.run([python, __file__, "--write-files", str(folder)], check=True)
        fcn8s, vgg16 = folder / FCN8S_FILE, folder / VGG16_FILE
        fcn8s_size, vgg16_size = fcn8s.stat().st_size, vgg16.stat().st_size

        baseline = measure("import torch\nimport model.caffe.convert")
        convert = measure(
            "from model.cli import main\n"
            f"assert main(['convert-caffe', {str(fcn8s)!r}, '--arch', 'fcn8s', "
            f"'--out', {str(folder / 'fcn8s.pt')!r}]) == 0"
        )
        init = measure(
            "from model.caffe.convert import load_caffe_vgg16\nfrom model.nets.fcn import FCN32s\n"
            f"load_caffe_vgg16(FCN32s(), {str(vgg16)!r})"
        )

    print(f"machine: {machine()}")
    print(f"FCN-8s file {fcn8s_size / MIB:.1f} MiB; VGG16 file {vgg16_size / MIB:.1f} MiB")
    print("peak RSS: of the work (before interpreter teardown) and of the whole process\n")
    print(
        f"{'process':40} {'peak RSS':>9} {'/ file':>7} {'above torch / file':>19}"
        f" {'whole process':>14} {'time':>6}"
    )
    rows = [
        ("import torch, model.caffe.convert (baseline)", baseline, fcn8s_size),
        ("fcn convert-caffe, FCN-8s", convert, fcn8s_size),
        ("load_caffe_vgg16, VGG16 -> FCN-32s", init, vgg16_size),
    ]
    for name, peak, size in rows:
        above = "" if peak is baseline else f"{(peak.work - baseline.work) / size:.2f}x"
        print(
            f"{name:40} {peak.work / MIB:5.0f} MiB {peak.work / size:6.2f}x {above:>19}"
            f" {peak.process / MIB:10.0f} MiB {peak.seconds:5.1f}s"
        )


if __name__ == "__main__":
    main()
