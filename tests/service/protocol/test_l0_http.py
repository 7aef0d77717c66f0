"""A port of Triton's HTTP robustness cases (triton-inference-server/server qa/L0_http:
http_test.py, http_input_size_limit_test.py, http_request_many_chunks.py,
nested_json_crash.py, and the malformed binary header cases) to /v2 of this service, each
named after the case it ports, against uvicorn on a loopback port.

Triton's models are identity models of FP32 or INT32 tensors; here the one input is
``image`` (UINT8 [N, H, W, 3]), so each case keeps its shape of fault on that tensor. Where
Triton answers 500 (negative dimensions), this service answers 400: a client's mistake.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.main import create_app
from tests.service.support import exchange, loopback_server, metric, read_reply, settings

MODEL = "fcn8s-tiny"
INFER = f"/v2/models/{MODEL}/infer"
LIMIT = 2 * 2**20  # FCN_MAX_UPLOAD_BYTES of this server: a million chunks fit


@pytest.fixture(scope="module")
def port(model_path: Path) -> Iterator[int]:
    """The tiny model behind uvicorn: one place (and one in line), bodies of 2 MiB at most."""
    app = create_app(
        settings(
            model_path, max_queue=1, max_upload_bytes=LIMIT, upload_timeout_s=10, access_log=False
        )
    )
    with loopback_server(app) as port:
        yield port


def post(port: int, body: bytes, **headers: str) -> httpx.Response:
    """POST /v2/models/M/infer with ``headers`` (``_`` for ``-`` in their names)."""
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return httpx.post(f"http://127.0.0.1:{port}{INFER}", content=body, headers=named, timeout=30)


def tensor(shape: list[int], **fields: object) -> dict[str, object]:
    return {"name": "image", "shape": shape, "datatype": "UINT8", **fields}


def binary_request(image: np.ndarray) -> tuple[bytes, str]:
    """An inference request with the binary tensor data extension: body and header length."""
    head = json.dumps(
        {"inputs": [tensor(list(image.shape), parameters={"binary_data_size": image.size})]}
    ).encode()
    return head + image.tobytes(), str(len(head))


def assert_400(response: httpx.Response, port: int, *words: str) -> None:
    """400 in the protocol's format, naming ``words``; the server still live and ready."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    for word in words:
        assert word in error
    assert httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=10).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=10).status_code == 200


def test_json_recursion_depth_limit(port: int) -> None:
    """http_test.py: data nested 120 deep is refused; at its natural depth it is served."""
    image = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    served = post(
        port, json.dumps({"inputs": [tensor([1, 2, 2, 3], data=image.tolist())]}).encode()
    )
    assert served.status_code == 200, served.text
    assert served.json()["outputs"][0]["shape"] == [1, 2, 2]
    deep = json.loads("[" * 120 + "7" + "]" * 120)
    refused = post(port, json.dumps({"inputs": [tensor([1, 1, 1, 3], data=deep)]}).encode())
    assert_400(refused, port, "data is not a regular array")


def test_nested_json_crash(port: int) -> None:
    """nested_json_crash.py: data nested 150000 deep, the parser's recursion (Triton's PoC
    crashed the server; here it was a 500)."""
    data = "[" * 150_000 + "1" + "]" * 150_000
    body = '{"inputs": [{"name": "image", "shape": [1], "datatype": "UINT8", "data": %s}]}'
    assert_400(post(port, (body % data).encode()), port, "nested too deeply")


def test_buffer_size_overflow(port: int) -> None:
    """http_test.py: shapes whose element count overflows 64 bits are refused, not run."""
    for shape in ([2**4, 2**60 + 2, 1, 3], [2**2, 2**60 + 2, 1, 3], [2**60 + 2, 1, 1, 3]):
        response = post(port, json.dumps({"inputs": [tensor(shape, data=[1.0])]}).encode())
        assert response.status_code in (400, 413), response.text
        assert isinstance(response.json()["error"], str)


def test_negative_dimensions(port: int) -> None:
    """http_test.py: a negative dimension (Triton: 500; here 400, the client's mistake)."""
    response = post(port, json.dumps({"inputs": [tensor([2, -5, 1, 3], data=[1])]}).encode())
    assert_400(response, port, "the model takes [N, H, W, 3], N, H, W >= 1")


def test_duplicate_output_names(port: int) -> None:
    """http_test.py: an output asked for twice is refused; the server stays healthy."""
    body = {
        "inputs": [tensor([1, 1, 1, 3], data=[1, 2, 3])],
        "outputs": [{"name": "labels"}, {"name": "labels"}],
    }
    assert_400(post(port, json.dumps(body).encode()), port, "output 'labels' is asked for twice")


def test_multi_variable_dimensions(port: int) -> None:
    """http_test.py: a raw binary body (Inference-Header-Content-Length: 0) cannot be read
    for an input of several variable dimensions."""
    raw = np.ones((2, 2, 3), dtype=np.uint8).tobytes()
    response = post(port, raw, inference_header_content_length="0")
    assert_400(response, port, "not valid JSON")


def test_content_encoding_chunked_manually(port: int) -> None:
    """http_test.py: a properly chunk-encoded request is served."""
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(1, 2, 3, 3)
    body, head = binary_request(image)
    request = (
        f"POST {INFER} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
        f"Inference-Header-Content-Length: {head}\r\nConnection: close\r\n\r\n"
    ).encode()
    chunk = f"{len(body):X}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    reply = exchange(port, request, chunk)
    assert reply.status == 200, reply.body
    assert reply.json()["outputs"][0]["shape"] == [1, 2, 3]


def test_content_encoding_unsupported(port: int) -> None:
    """http_test.py (test_content_encoding_unsupported_client, server side): a compressed
    body is refused, not guessed at."""
    for encoding in ("compress", "deflate", "gzip"):
        response = post(port, b"{}", content_encoding=encoding)
        assert_400(response, port, f"Content-Encoding {encoding!r}")


def test_descriptive_status_code(port: int) -> None:
    """http_test.py: with the queue full, the next request is 503 (Retry-After), not a
    generic error. Here the one place is reserved by an upload that stalls, one complete
    request waits in line for it, and the next finds the line full."""
    image = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    body, head = binary_request(image)
    stalled = socket.create_connection(("127.0.0.1", port), timeout=30)
    stalled.sendall(
        f"POST {INFER} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n"
        f"Inference-Header-Content-Length: {head}\r\n\r\n".encode()
        + body[:10]
    )
    scrape = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 10
    while metric(httpx.get(scrape).text, "fcn_requests_uploading") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    answers: list[httpx.Response] = []
    waiting = threading.Thread(
        target=lambda: answers.append(post(port, body, inference_header_content_length=head))
    )
    waiting.start()
    while metric(httpx.get(scrape).text, "fcn_requests_awaiting_place") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    refused = post(port, body, inference_header_content_length=head)
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"] == "1 requests are in the service (the limit); retry later"
    stalled.sendall(body[10:])  # the stalled upload finishes; then the one in line is served
    assert read_reply(stalled).status == 200
    stalled.close()
    waiting.join(30)
    assert [a.status_code for a in answers] == [200]


@pytest.mark.parametrize(
    "value",
    ["additional-string123", "-123", "12345", "\xb2", "9" * 5000],
    ids=["not_number", "negative_number", "large_number", "superscript", "5000_digits"],
)
def test_malformed_binary_header(port: int, value: str) -> None:
    """The malformed binary header cases (test_malformed_binary_header, _not_number,
    _negative_number, _large_number) on this protocol's header, plus two that were 500s
    here: a non-ASCII digit and a length of 5000 digits."""
    body, _ = binary_request(np.zeros((1, 1, 1, 3), dtype=np.uint8))
    request = (
        f"POST {INFER} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n"
        f"Inference-Header-Content-Length: {value}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    reply = exchange(port, request + body)
    assert reply.status == 400, reply.body
    assert "Inference-Header-Content-Length" in reply.json()["error"]


def test_default_limit_rejection_raw_binary(port: int) -> None:
    """http_input_size_limit_test.py: binary tensor data just over FCN_MAX_UPLOAD_BYTES is
    refused (413 here, Triton 400), just under it is served."""
    side = int(((LIMIT - 200) / 3) ** 0.5)  # a square image whose request just fits
    over, head = binary_request(np.zeros((1, side + 10, side + 10, 3), dtype=np.uint8))
    assert len(over) > LIMIT
    response = post(port, over, inference_header_content_length=head)
    assert response.status_code == 413, response.text
    assert f"the limit is {LIMIT}" in response.json()["error"]
    under, head = binary_request(np.zeros((1, side, side, 3), dtype=np.uint8))
    assert len(under) < LIMIT
    response = post(port, under, inference_header_content_length=head)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [1, side, side]


def test_default_limit_rejection_json(port: int) -> None:
    """http_input_size_limit_test.py: the same with the tensor as JSON."""
    side = int(((LIMIT - 200) / 6) ** 0.5)  # "7," per value, three values a pixel

    def body(side: int) -> bytes:
        data = [7] * (3 * side * side)
        document = {"inputs": [tensor([1, side, side, 3], data=data)]}
        return json.dumps(document, separators=(",", ":")).encode()

    assert len(body(side + 10)) > LIMIT
    response = post(port, body(side + 10))
    assert response.status_code == 413, response.text
    assert len(body(side)) < LIMIT
    response = post(port, body(side))
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [1, side, side]


def test_request_many_chunks_infer(port: int) -> None:
    """http_request_many_chunks.py (HTTPRequestManyChunksTest.test_infer): a million chunks
    of one byte with Inference-Header-Content-Length: 0 (enough to overflow a stack that
    alloca()s per chunk) are read and refused with 400."""
    request = (
        f"POST {INFER} HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\n"
        "Inference-Header-Content-Length: 0\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    chunks = [b"1\r\nA\r\n" * 100_000] * 10  # the same bytes on the wire, in ten sends
    reply = exchange(port, request, *chunks, b"0\r\n\r\n", timeout_s=60)
    assert reply.status == 400, reply.body
    assert "not valid JSON" in reply.json()["error"]
    assert httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=10).status_code == 200
