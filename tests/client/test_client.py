"""``client`` and ``fcn segment`` against a real ``fcn-serve`` on a loopback port.

The service's queue holds one request (FCN_MAX_QUEUE=1) while the client sends eight at once,
so it really answers 503 with Retry-After; every image must still come back byte for byte
what a direct POST /segment gives. Retry timing is checked on a stub http.server.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from client import Client, ClientError, retry_after_s, segment_folder
from model.cli import main as fcn
from tests.factory import exported_two_head
from tests.images import encode, pattern
from tests.isolation import run_without
from tests.service.support import ROOT, Server, free_port, launch, metric

pytestmark = pytest.mark.slow

# Good images of several formats and sizes, one in a sub-folder, and one corrupt file.
GOOD = {
    "beach.png": ("PNG", 240, 320),
    "city.jpg": ("JPEG", 200, 300),
    "field.bmp": ("BMP", 180, 260),
    "forest.webp": ("WEBP", 220, 220),
    "harbour.png": ("PNG", 160, 330),
    "road.jpeg": ("JPEG", 250, 190),
    "sub/street.png": ("PNG", 210, 280),
    "sub/park.tif": ("TIFF", 190, 240),
}
BROKEN = "broken.jpg"


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``fcn-serve`` taking one request at a time: the rest are refused with 503."""
    log = tmp_path_factory.mktemp("client-server") / "server.log"
    server = launch(
        model_path,
        log,
        max_queue="1",
        max_batch_size="1",
        retry_after_s="1",
        warmup_sizes="16x16",
        intra_op_threads="1",
        access_log="false",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of the GOOD images and the BROKEN one (a JPEG cut after 100 bytes)."""
    folder = tmp_path_factory.mktemp("photos")
    for seed, (name, (fmt, height, width)) in enumerate(GOOD.items()):
        (folder / name).parent.mkdir(exist_ok=True)
        options = {"lossless": True} if fmt == "WEBP" else {}
        (folder / name).write_bytes(encode(pattern(height, width, seed), fmt, **options))
    (folder / BROKEN).write_bytes(encode(pattern(64, 64), "JPEG")[:100])
    return folder


def direct(url: str, image: bytes, **params: str) -> httpx.Response:
    """POST /segment as the README's curl does: one multipart field, no client library."""
    return httpx.post(f"{url}/segment", files={"image": ("x", image)}, params=params, timeout=30)


def fcn_segment(*argv: str) -> subprocess.CompletedProcess[str]:
    """``fcn segment ARGV`` in a fresh process, as a user runs it."""
    command = [sys.executable, "-m", "model.cli", "segment", *argv]
    return subprocess.run(
        command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def refusals(url: str) -> float:
    return metric(httpx.get(f"{url}/metrics").text, "fcn_requests_total", status="503")


def test_a_folder_through_an_overloaded_service(
    server: Server, photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "labels"
    refused_before = refusals(server.url)
    started = time.monotonic()
    result = fcn_segment(
        "--url", server.url, str(photos), "--out", str(out),
        "--concurrency", "8", "--retries", "20", "--no-progress",
    )  # fmt: skip
    elapsed = time.monotonic() - started
    refused = refusals(server.url) - refused_before

    # The corrupt file failed, named with the service's own message; nothing else did.
    broken = direct(server.url, (photos / BROKEN).read_bytes())
    assert broken.status_code == 400
    message = broken.json()["error"]["message"]
    assert result.returncode == 1, result.stderr
    failures = [line for line in result.stderr.splitlines() if "failed" in line]
    assert failures == [f"fcn segment: failed {photos / BROKEN}: {message} (400 bad_image)"]
    # Every good image written, sub-folders kept, byte for byte what a direct POST returns.
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted(str(Path(name).with_suffix(".png")) for name in GOOD)
    for name in GOOD:
        expected = direct(server.url, (photos / name).read_bytes())
        assert expected.status_code == 200
        assert (out / name).with_suffix(".png").read_bytes() == expected.content, name
    # The service refused some requests (503) and each refusal was retried, after its
    # Retry-After of 1 s; the summary counts them as the service did.
    assert refused >= 1
    assert elapsed >= 1.0
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("segmented 9 image(s) with fcn8s-tiny ("), summary
    assert summary.endswith(
        f"wrote 8 to {out}, 1 failed (above); {int(refused)} refusal(s) (503) retried"
    ), summary


def test_overlays_are_named_like_fcn_predicts_and_match_the_service(
    server: Server, photos: Path, tmp_path: Path
) -> None:
    image = photos / "city.jpg"
    result = fcn_segment(
        "--url", server.url, str(image), "--out", str(tmp_path),
        "--format", "overlay", "--image-format", "jpeg", "--alpha", "0.7", "--legend",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["city_overlay.jpg"]
    expected = direct(
        server.url,
        image.read_bytes(),
        format="overlay",
        image_format="jpeg",
        alpha="0.7",
        legend="true",
    )
    assert expected.headers["content-type"] == "image/jpeg"
    assert (tmp_path / "city_overlay.jpg").read_bytes() == expected.content


def test_the_client_api(server: Server, photos: Path) -> None:
    image = photos / "beach.png"
    with Client(server.url, retries=20) as client:
        assert client.ready()
        model = client.model()
        labels = client.segment(image)
        answer = client.segment_json(image.read_bytes(), label_encoding="png")
        with pytest.raises(ClientError) as refused:
            client.segment(photos / BROKEN)
    assert model["name"] == "fcn8s-tiny"
    assert model["batching"]["max_queue"] == 1
    assert labels == direct(server.url, image.read_bytes()).content
    assert (answer["width"], answer["height"]) == (320, 240)
    assert (
        answer == direct(server.url, image.read_bytes(), format="json", label_encoding="png").json()
    )
    error = refused.value
    assert (error.status, error.code) == (400, "bad_image")
    assert (
        error.message
        == direct(server.url, (photos / BROKEN).read_bytes()).json()["error"]["message"]
    )


def test_an_unreachable_service_is_one_message_and_nothing_written(
    photos: Path, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "labels"
    result = fcn_segment("--url", url, str(photos), "--out", str(out), "--retries", "1")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"fcn segment: error: no answer from {url} after 2 attempt(s): ")
    assert lines[0].endswith("(unreachable)")
    assert not out.exists()
    assert not Client(url).ready()


def test_geometry_of_a_model_without_it_is_one_message_and_nothing_written(
    server: Server, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "geometry"
    argv = ["segment", "--url", server.url, str(photos), "--out", str(out), "--output", "geometry"]
    assert fcn(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "?output=geometry: 'fcn8s-tiny' has no 'geometry' output" in lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_a_folder_of_geometry_from_a_two_head_model(photos: Path, tmp_path: Path) -> None:
    _, two_head = exported_two_head()
    server = launch(two_head, tmp_path / "server.log", warmup_sizes="16x16", access_log="false")
    try:
        out = tmp_path / "out"
        query = {"output": "geometry"}
        result = segment_folder(
            server.url, [photos / "beach.png"], out, query=query, progress=False
        )
        labels = segment_folder(server.url, [photos / "beach.png"], out, progress=False)
        expected = direct(server.url, (photos / "beach.png").read_bytes(), output="geometry")
    finally:
        server.stop()
    assert not result.failed
    assert not labels.failed
    assert sorted(p.name for p in out.iterdir()) == ["beach.png", "beach_geometry.png"]
    assert (out / "beach_geometry.png").read_bytes() == expected.content
    assert expected.content != (out / "beach.png").read_bytes()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        pytest.param(["--concurrency", "0"], "--concurrency", id="concurrency"),
        pytest.param(["--retries", "-1"], "--retries", id="retries"),
        pytest.param(["--timeout", "0"], "--timeout", id="timeout"),
        pytest.param(["--format", "overlay", "--alpha", "2"], "--alpha", id="alpha-range"),
        pytest.param(["--alpha", "0.5"], "--alpha applies to --format overlay", id="alpha-png"),
        pytest.param(["--legend"], "--legend applies to --format overlay", id="legend-png"),
        pytest.param(["--max-side", "0"], "--max-side", id="max-side"),
        pytest.param(["--format", "tiff"], "--format", id="format"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    flags: list[str], named: str, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["segment", "--url", "http://127.0.0.1:1", str(photos), "--out", str(tmp_path), *flags]
    try:
        status = fcn(argv)
    except SystemExit as exc:  # argparse's own refusals
        status = int(exc.code or 0)
    assert status == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "named"),
    [
        pytest.param("localhost:8000", "--url 'localhost:8000'", id="no-scheme"),
    ],
)
def test_a_url_without_its_scheme_is_refused(
    url: str, named: str, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fcn(["segment", "--url", url, str(photos), "--out", str(tmp_path)]) == 2
    assert named in capsys.readouterr().err


def test_inputs_that_would_overwrite_each_other_are_refused_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.png").write_bytes(encode(pattern(8, 8), "PNG"))
    (tmp_path / "a.jpg").write_bytes(encode(pattern(8, 8), "JPEG"))
    out = tmp_path / "out"
    argv = ["segment", "--url", "http://127.0.0.1:1", str(tmp_path), "--out", str(out)]
    assert fcn(argv) == 2
    err = capsys.readouterr().err
    # contract.inputs' one rule: the two images have one stem, so one set of outputs.
    both = f"{tmp_path / 'a.png'} and {tmp_path / 'a.jpg'} would both write the outputs of a"
    assert f"fcn segment: error: {both}\n" in err
    assert fcn([*argv[:3], str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing: no such image or folder" in capsys.readouterr().err
    assert not out.exists()


BLOCKED = {"torch", "torchvision", "onnx", "onnxruntime", "fastapi", "starlette", "service"}


def test_the_command_and_client_import_where_torch_and_the_server_cannot() -> None:
    result = run_without(
        BLOCKED,
        "import client, model.cli, model.commands.segment\n"
        "from client import Client, segment_folder\n"
        "print(sorted(m for m in sys.modules if m.partition('.')[0] in BLOCKED))\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


class Stub(http.server.ThreadingHTTPServer):
    """A real HTTP server that answers 503 with ``retry_after`` to the first ``refuse``
    requests, then 200 "labels"; it records when each request came."""

    def __init__(self, refuse: int, retry_after: str):
        self.refuse, self.retry_after = refuse, retry_after
        self.times: list[float] = []
        super().__init__(("127.0.0.1", 0), StubHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class StubHandler(http.server.BaseHTTPRequestHandler):
    server: Stub

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.server.times.append(time.monotonic())
        if len(self.server.times) <= self.server.refuse:
            body = b'{"error":{"code":"overloaded","message":"1 requests are in the service"}}'
            self.send_response(503)
            self.send_header("Retry-After", self.server.retry_after)
            self.send_header("Content-Type", "application/json")
        else:
            body = b"labels"
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stub(request: pytest.FixtureRequest) -> Iterator[Stub]:
    server = Stub(*request.param)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("stub", [(2, "1")], indirect=True)
def test_503_is_retried_after_its_retry_after(stub: Stub) -> None:
    with Client(stub.url, retries=2) as client:
        assert client.segment(b"image") == b"labels"
        assert client.refused == 2
    gaps = [b - a for a, b in zip(stub.times, stub.times[1:], strict=False)]
    assert len(gaps) == 2
    assert all(1.0 <= gap < 1.6 for gap in gaps), gaps  # 1 s, plus at most half again


@pytest.mark.parametrize("stub", [(10, "3600")], indirect=True)
def test_the_wait_is_capped_and_the_attempts_bounded(stub: Stub) -> None:
    started = time.monotonic()
    with Client(stub.url, retries=3, max_wait_s=0.2) as client, pytest.raises(ClientError) as exc:
        client.segment(b"image")
    assert time.monotonic() - started < 2
    assert len(stub.times) == 4
    assert (exc.value.status, exc.value.code) == (503, "overloaded")
    assert "still refused after 4 attempts" in str(exc.value)


def test_connection_failures_are_retried_then_named() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, retries=2, backoff_s=0.01) as client, pytest.raises(ClientError) as exc:
        client.model()
    assert (exc.value.status, exc.value.code) == (None, "unreachable")
    assert client.reconnects == 2
    assert f"no answer from {url} after 3 attempt(s)" in str(exc.value)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        pytest.param("2", 2.0, id="seconds"),
        pytest.param("0.5", 0.5, id="fraction"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param(None, None, id="absent"),
        pytest.param("soon", None, id="unreadable"),
        pytest.param("http-date in 30 s", 30.0, id="http-date"),
        pytest.param("http-date 30 s ago", 0.0, id="http-date-past"),
        pytest.param("http-date in 30 s, -0000", 30.0, id="http-date-no-zone"),
    ],
)
def test_retry_after_is_read_as_seconds_or_a_date(
    header: str | None, seconds: float | None
) -> None:
    if header is not None and header.startswith("http-date"):
        offset = timedelta(seconds=-30 if "ago" in header else 30)
        when = datetime.now(UTC) + offset
        # "-0000" says the zone is unknown: the date parses without one (RFC 9110: UTC).
        zoneless = header.endswith("-0000")
        header = format_datetime(
            when.replace(tzinfo=None) if zoneless else when, usegmt=not zoneless
        )
    value = retry_after_s(header)
    if seconds is None:
        assert value is None
    else:
        assert value == pytest.approx(seconds, abs=1.5)
