#!/usr/bin/env bash
# The bundled demo model's validation mean IU on each runtime and precision, with `fcn eval`
# (the paper's four metrics): ONNX Runtime fp32, OpenVINO fp32, OpenVINO bf16 (where the CPU
# has it). The synthetic validation set is regenerated as models/demo/build.sh makes it.
# Usage: bench/demo_runtimes.sh [WORK_DIR]   (about a minute on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-runs/demo-runtimes}"
FCN="${FCN:-fcn}"
MODEL=models/demo/fcn8s.onnx

[ -d "$WORK/synth" ] || $FCN data synth --out "$WORK/synth" --train 400 --val 100 --size 160x160 --seed 0
for choice in "onnxruntime fp32" "openvino fp32" "openvino bf16"; do
    set -- $choice
    echo "== $1 $2"
    $FCN eval --checkpoint "$MODEL" --data "$WORK/synth" --runtime "$1" --precision "$2" \
        --workers 0 --out "$WORK/$1-$2" | sed -n 2p
done
# Mean IU to four places, and the labels' agreement with ONNX Runtime fp32 (confusion matrices).
python3 - "$WORK" <<'PY'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
runs = {p.name: json.loads((p / "metrics.json").read_text()) for p in sorted(work.glob("*-*"))
        if (p / "metrics.json").is_file()}
base = runs["onnxruntime-fp32"]["mean_iu"]
for name, record in runs.items():
    print(f"{name:18} mean IU {100 * record['mean_iu']:.4f}  "
          f"({100 * (record['mean_iu'] - base):+.4f} points vs onnxruntime-fp32)")
PY
