#!/usr/bin/env bash
# Build the CPU service image, bring compose up, wait until Docker reports it healthy, and
# segment an image. Skips (exit 0 with a message) when no Docker engine answers. Needs only
# docker, curl and python3 (standard library) on the host.
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
compose() { docker compose -p "$project" --profile cpu "$@"; }
fail() {
    echo "docker_smoke: FAILED: $*"
    compose logs --no-color fcn-cpu || true
    exit 1
}
cleanup() { compose down --volumes >/dev/null 2>&1 || true; }
trap cleanup EXIT

compose build fcn-cpu
compose up -d fcn-cpu
container="$(compose ps -q fcn-cpu)"

# Docker's own HEALTHCHECK (python -m service.healthcheck) must pass, not just our curl.
echo "waiting for the container to be healthy"
status=starting
for _ in $(seq 1 90); do
    status="$(docker inspect --format '{{.State.Health.Status}}' "$container")"
    case "$status" in
        healthy) break ;;
        unhealthy) fail "the container is unhealthy" ;;
    esac
    if [ "$(docker inspect --format '{{.State.Running}}' "$container")" != true ]; then
        fail "the container exited"
    fi
    sleep 2
done
[ "$status" = healthy ] || fail "the container is still '$status' after 180 s"
echo "container health: $status"
curl -fsS "http://127.0.0.1:$port/readyz" || fail "/readyz does not answer 200 on port $port"
echo

sample="$(ls models/demo/samples/*.jpg | grep -v overlay | head -n 1)"
out="$(mktemp --suffix .png)"
code="$(curl -sS -o "$out" -w '%{http_code}' -F "image=@$sample" "http://127.0.0.1:$port/segment")" \
    || fail "POST /segment did not answer"
[ "$code" = 200 ] || fail "POST /segment answered $code: $(head -c 300 "$out")"
python3 - "$sample" "$out" <<'PY' || fail "the answer is not a label map of the image's size"
import struct
import sys

def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's start-of-frame marker."""
    at = 2
    while at < len(data):
        marker, length = data[at + 1], struct.unpack(">H", data[at + 2 : at + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        at += 2 + length
    raise SystemExit("no start-of-frame marker in the sample")

image = open(sys.argv[1], "rb").read()
labels = open(sys.argv[2], "rb").read()
assert labels[:8] == b"\x89PNG\r\n\x1a\n", labels[:8]
width, height, depth, color_type = struct.unpack(">IIBB", labels[16:26])
assert color_type == 3, f"PNG colour type {color_type}, not a palette"  # class ids + palette
assert (width, height) == jpeg_size(image), ((width, height), jpeg_size(image))
print(f"docker_smoke: OK: {width}x{height} palette label map")
PY
