#!/usr/bin/env bash
# Rebuild the bundled demo model from nothing: synthetic data, FCN-32s -> 16s -> 8s staged
# training on the CPU, evaluation of every stage, ONNX export of the FCN-8s, sample overlays.
# Usage: models/demo/build.sh [WORK_DIR]   (about 20 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK="${1:-runs/demo}"
FCN="${FCN:-fcn}"
DATA="$WORK/synth"
OUT=models/demo

# One recipe for every stage: width 1/8, per-pixel mean loss, AdamW (the paper's SGD at
# lr 1e-10 assumes ImageNet weights; a small net from a random start needs an adaptive
# step), batches of 8 images of 160x160 with random flips, one seed.
COMMON=(--data "$DATA" --width 0.125 --loss mean --optimizer adamw --lr 1e-3
        --batch-size 8 --flip --seed 0 --workers 0 --val-every 250 --log-every 50 --no-progress)

$FCN data synth --out "$DATA" --train 400 --val 100 --size 160x160 --seed 0

stage() {  # name, then fcn train flags
    local name="$1"; shift
    local start=$SECONDS
    $FCN train "${COMMON[@]}" --out "$WORK/$name" "$@"
    echo "$name: $((SECONDS - start)) s" | tee -a "$WORK/times.txt"
}
: > "$WORK/times.txt"
stage fcn32s --arch fcn32s --init none --max-iter 1000
stage fcn16s --arch fcn16s --init "checkpoint:$WORK/fcn32s/last.pt" --max-iter 500
stage fcn8s --arch fcn8s --init "checkpoint:$WORK/fcn16s/last.pt" --max-iter 500
# The control: FCN-32s given the same 2000 steps as the staged FCN-8s.
stage fcn32s-2000 --arch fcn32s --init "checkpoint:$WORK/fcn32s/last.pt" --max-iter 1000

for name in fcn32s fcn16s fcn8s fcn32s-2000; do
    $FCN eval --checkpoint "$WORK/$name/last.pt" --data "$DATA" --split val \
        --out "$WORK/eval-$name" | tee "$WORK/eval-$name.txt"
done

# The card's caveat travels in the file (fcn.note): /v1/model, the page and `fcn info` show it.
$FCN export --checkpoint "$WORK/fcn8s/last.pt" --out "$OUT/fcn8s.onnx" \
    --note "synthetic shapes only; for photos serve voc-fcn8s (make serve MODEL=voc-fcn8s)"

# What the card reports and the score test checks: the data recipe, every stage's metrics.
python3 - "$WORK" "$OUT/recipe.json" <<'PY'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
stages = ["fcn32s", "fcn16s", "fcn8s", "fcn32s-2000"]
metrics = {s: json.loads((work / f"eval-{s}" / "metrics.json").read_text()) for s in stages}
times = dict(line.split(": ") for line in (work / "times.txt").read_text().splitlines())
keys = ["pixel_accuracy", "mean_accuracy", "mean_iu", "frequency_weighted_iu"]
recipe = {
    "data": {"generator": "fcn data synth", "train": 400, "val": 100, "size": "160x160", "seed": 0},
    "steps": {"fcn32s": 1000, "fcn16s": 500, "fcn8s": 500, "fcn32s-2000": 1000},
    "seconds": {s: int(times[s].split()[0]) for s in stages},
    **{k: {s: metrics[s][k] for s in stages} for k in keys},
    "class_iu": {s: dict(zip(metrics[s]["classes"], metrics[s]["class_iu"])) for s in stages},
}
out.write_text(json.dumps(recipe, indent=2) + "\n")
PY

mkdir -p "$OUT/samples"
for id in val_000000 val_000001 val_000002 val_000003; do
    cp "$DATA/JPEGImages/$id.jpg" "$OUT/samples/$id.jpg"
done
$FCN predict --checkpoint "$WORK/fcn8s/last.pt" "$OUT/samples" --out "$WORK/samples"
cp "$WORK"/samples/*_overlay.jpg "$OUT/samples/"
