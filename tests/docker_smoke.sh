#!/usr/bin/env bash
# Build the CPU service image, bring compose up, wait for health and segment an image.
# Skips (exit 0 with a message) when no Docker engine answers.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
    echo "docker_smoke: SKIPPED: no Docker engine answers (docker info failed)"
    exit 0
fi
if ! docker compose version >/dev/null 2>&1; then
    echo "docker_smoke: SKIPPED: the docker compose plugin is not installed"
    exit 0
fi

port="${FCN_HOST_PORT:-18000}"
export FCN_HOST_PORT="$port"
project="fcn-smoke-$$"
cleanup() { docker compose -p "$project" --profile cpu down --volumes >/dev/null 2>&1 || true; }
trap cleanup EXIT

docker compose -p "$project" --profile cpu build fcn-cpu
docker compose -p "$project" --profile cpu up -d fcn-cpu

echo "waiting for http://127.0.0.1:$port/readyz"
for _ in $(seq 1 90); do
    if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
        break
    fi
    sleep 2
done
curl -fsS "http://127.0.0.1:$port/readyz"
echo

status="$(docker inspect --format '{{.State.Health.Status}}' "$(docker compose -p "$project" ps -q fcn-cpu)")"
echo "container health: $status"

sample="$(ls models/demo/samples/*.jpg | head -n 1)"
out="$(mktemp --suffix .png)"
code="$(curl -sS -o "$out" -w '%{http_code}' -F "image=@$sample" "http://127.0.0.1:$port/segment")"
if [ "$code" != 200 ]; then
    echo "docker_smoke: FAILED: POST /segment answered $code"
    exit 1
fi
python3 - "$sample" "$out" <<'PY'
import sys
from PIL import Image
image, labels = Image.open(sys.argv[1]), Image.open(sys.argv[2])
assert labels.mode == "P", labels.mode
assert labels.size == image.size, (labels.size, image.size)
print(f"docker_smoke: OK: {labels.size[0]}x{labels.size[1]} label map")
PY
