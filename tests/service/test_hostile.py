"""Hostile clients played for real against uvicorn on a loopback port: pathological bodies and
headers get a 4xx in their API's error format, never a 5xx, and the service stays ready;
connections that trickle their body get 408 and are closed while complete requests are
served. Every client here is bounded in time and in count."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.main import create_app
from tests.service.support import PNG, Reply, exchange, loopback_server, read_reply, settings

MODEL = "fcn8s-tiny"
INFER = f"/v2/models/{MODEL}/infer"
UPLOAD_TIMEOUT_S = 1.0
QUEUE = 2


@pytest.fixture(scope="module")
def port(model_path: Path) -> Iterator[int]:
    """The tiny model behind uvicorn, with a 1 s upload timeout, no floor rate, 2 places and
    bodies of 2 MiB at most."""
    app = create_app(
        settings(
            model_path,
            upload_timeout_s=UPLOAD_TIMEOUT_S,
            upload_min_rate=0,
            max_queue=QUEUE,
            max_upload_bytes=2 * 2**20,
            access_log=False,
        )
    )
    with loopback_server(app) as port:
        yield port


def request(
    path: str, body: bytes, content_type: str = "application/json", **headers: str
) -> bytes:
    """The bytes of a POST with a Content-Length, closed after its answer."""
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: test",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
    ]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


def tensor(**fields: object) -> dict[str, object]:
    """A valid input tensor of one 1x1 image, with ``fields`` replaced."""
    return {"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT8", "data": [1, 2, 3]} | (
        fields
    )


def infer(document: object) -> bytes:
    return request(INFER, json.dumps(document).encode())


def nested(depth: int, inner: str = "1") -> bytes:
    """An inference request whose data is ``inner`` inside ``depth`` arrays."""
    data = "[" * depth + inner + "]" * depth
    head = '{"inputs":[{"name":"image","shape":[1,1,1,3],"datatype":"UINT8","data":'
    return request(INFER, (head + data + "}]}").encode())


def multipart(parts: list[bytes], *, closed: bool = True) -> bytes:
    body = b"".join(b"--b0undary\r\n" + part + b"\r\n" for part in parts)
    body += b"--b0undary--\r\n" if closed else b""
    return request("/segment", body, "multipart/form-data; boundary=b0undary")


def field(name: str, data: bytes = b"x", extra: bytes = b"") -> bytes:
    return (
        b'Content-Disposition: form-data; name="'
        + name.encode()
        + b'"\r\n'
        + extra
        + b"\r\n"
        + data
    )


def chunked(path: str, content_type: str, chunks: int, **headers: str) -> tuple[bytes, bytes]:
    """A request head and a body of ``chunks`` one-byte chunks (Triton's many-chunks case)."""
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: test",
        f"Content-Type: {content_type}",
        "Transfer-Encoding: chunked",
        "Connection: close",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
    ]
    head = "\r\n".join(lines).encode() + b"\r\n\r\n"
    return head, b"1\r\nA\r\n" * chunks + b"0\r\n\r\n"


# Each case: the raw request (as parts to send) and the API whose error format it must get.
V2, SEGMENT, SERVER = "v2", "segment", "server"
CASES: dict[str, tuple[tuple[bytes, ...], str]] = {
    # JSON nested arbitrarily deep, in the data and around everything.
    "nested-data-150000": ((nested(150_000),), V2),
    "nested-data-120": ((nested(120),), V2),
    "nested-objects-100000": ((request(INFER, b'{"a":' * 100_000 + b"1" + b"}" * 100_000),), V2),
    # Huge numbers: integers beyond int()'s 4300 digits, floats beyond float64.
    "huge-integer-in-shape": (
        (request(INFER, b'{"inputs":[{"name":"image","shape":[1,1,1,' + b"9" * 5000 + b"]}]}"),),
        V2,
    ),
    "huge-integer-in-data": ((infer({"inputs": [tensor(data=[1, 2, 10**400])]}),), V2),
    "huge-float-in-data": (
        (request(INFER, json.dumps({"inputs": [tensor()]}).encode().replace(b"3]", b"1e999]")),),
        V2,
    ),
    "huge-shape": ((infer({"inputs": [tensor(shape=[2**62, 1, 1, 3])]}),), V2),
    "duplicate-keys": (
        (request(INFER, b'{"inputs":[' + json.dumps(tensor()).encode() + b'],"inputs":5}'),),
        V2,
    ),
    # Wrong types at every level.
    "request-a-list": ((infer([]),), V2),
    "request-null": ((infer(None),), V2),
    "inputs-an-object": ((infer({"inputs": {}}),), V2),
    "input-a-string": ((infer({"inputs": ["image"]}),), V2),
    "name-a-list": ((infer({"inputs": [tensor(name=["image"])]}),), V2),
    "shape-a-string": ((infer({"inputs": [tensor(shape="1,1,1,3")]}),), V2),
    "shape-of-strings": ((infer({"inputs": [tensor(shape=["1", 1, 1, 3])]}),), V2),
    "shape-of-bools": ((infer({"inputs": [tensor(shape=[True, True, True, 3])]}),), V2),
    "datatype-a-number": ((infer({"inputs": [tensor(datatype=8)]}),), V2),
    "data-an-object": ((infer({"inputs": [tensor(data={"0": 1})]}),), V2),
    "data-of-strings": ((infer({"inputs": [tensor(data=["1", "2", "3"])]}),), V2),
    "data-of-nulls": ((infer({"inputs": [tensor(data=[None, None, None])]}),), V2),
    "data-ragged": ((infer({"inputs": [tensor(data=[1, [2], 3])]}),), V2),
    "parameters-a-list": ((infer({"inputs": [tensor(parameters=[])]}),), V2),
    "binary-size-a-string": (
        (infer({"inputs": [tensor(data=None, parameters={"binary_data_size": "3"})]}),),
        V2,
    ),
    "outputs-an-object": ((infer({"inputs": [tensor()], "outputs": {}}),), V2),
    "output-a-number": ((infer({"inputs": [tensor()], "outputs": [5]}),), V2),
    "output-name-an-object": ((infer({"inputs": [tensor()], "outputs": [{"name": {}}]}),), V2),
    "binary-output-a-string": (
        (infer({"inputs": [tensor()], "parameters": {"binary_data_output": "yes"}}),),
        V2,
    ),
    "id-a-number": ((infer({"id": 5, "inputs": [tensor()]}),), V2),
    "not-utf8": ((request(INFER, b'{"inputs":[{"name":"\xff\xfe"}]}'),), V2),
    "truncated-json": ((request(INFER, b'{"inputs":[{"name":"image","shape":[1,'),), V2),
    # The binary extension's header, malformed.
    "header-length-superscript": (
        (request(INFER, b"{}", inference_header_content_length="\xb2"),),
        V2,
    ),
    "header-length-5000-digits": (
        (request(INFER, b"{}", inference_header_content_length="9" * 5000),),
        V2,
    ),
    # Many tiny chunks (Triton's http_request_many_chunks, at a tenth of its count here).
    "many-chunks-v2": (
        chunked(INFER, "application/octet-stream", 100_000, inference_header_content_length="0"),
        V2,
    ),
    "many-chunks-segment": (chunked("/segment", "image/png", 100_000), SEGMENT),
    # Multipart with thousands of parts, enormous part headers, or many of them.
    "multipart-20000-parts": ((multipart([field(f"f{i}") for i in range(20_000)]),), SEGMENT),
    "multipart-2MB-part-header": (
        (multipart([field("image", extra=b"X-Big: " + b"a" * 2_000_000 + b"\r\n")]),),
        SEGMENT,
    ),
    "multipart-100000-part-headers": (
        (multipart([field("image", extra=b"X-A: a\r\n" * 100_000)]),),
        SEGMENT,
    ),
    "multipart-unclosed": ((multipart([field("image")], closed=False),), SEGMENT),
    "multipart-bad-charset": (
        (multipart([b"Content-Disposition: form-data; name*=nosuch''image\r\n\r\nx"]),),
        SEGMENT,
    ),
    "content-type-latin1": ((request("/segment", b"x", "image/\xe9"),), SEGMENT),
    # Headers at and over the server's limits (uvicorn's httptools parser: none on header
    # sizes, so the app answers; the request line has one).
    "header-1MiB": ((request("/segment", b"x", "text/plain", x_big="a" * 2**20),), SEGMENT),
    "headers-10000": (
        (request("/segment", b"x", "text/plain", **{f"x_{i}": "a" for i in range(10_000)}),),
        SEGMENT,
    ),
    "url-1MiB": ((request("/segment?" + "a" * 2**20, b"x"),), SERVER),
    "body-over-the-limit": ((request(INFER, b"{" + b" " * (2 * 2**20)),), V2),
    "content-length-twice": (
        (b"POST /segment HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",),
        SERVER,
    ),
    "chunk-size-not-hex": (
        (b"POST /segment HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",),
        SERVER,
    ),
}


def assert_refused(reply: Reply, api: str) -> None:
    """A 4xx in ``api``'s error format."""
    assert 400 <= reply.status < 500, (reply.status, reply.body[:300])
    if api == SERVER:  # refused by the HTTP parser, before any route is known
        assert reply.body == b"Invalid HTTP request received."
        return
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()["error"]
    if api == V2:
        assert isinstance(error, str)
        assert error
    else:
        assert set(error) == {"code", "message"}


@pytest.mark.parametrize("case", list(CASES))
def test_an_unparseable_request_is_a_4xx_in_its_apis_format(port: int, case: str) -> None:
    parts, api = CASES[case]
    assert_refused(exchange(port, *parts), api)
    assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200


class Trickler:
    """A connection that sends a request head, then its body a byte every ``interval_s``, on a
    thread, until the server answers or ``limit_s`` passes."""

    def __init__(self, port: int, body: bytes, interval_s: float, limit_s: float):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=limit_s)
        head = request("/segment", b"", "image/png").replace(
            b"Content-Length: 0", f"Content-Length: {len(body)}".encode()
        )
        self.sock.sendall(head.replace(b"Connection: close\r\n", b""))
        self.sent = 0
        self.reply: Reply | None = None
        self.answered = 0.0
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(interval_s) and self.sent < len(body):
                try:
                    self.sock.sendall(body[self.sent : self.sent + 1])
                except OSError:
                    return
                self.sent += 1

        def read() -> None:
            try:
                self.reply = read_reply(self.sock, await_close=True)
                self.answered = time.monotonic()
            finally:
                stop.set()

        self.threads = [threading.Thread(target=f) for f in (trickle, read)]
        for thread in self.threads:
            thread.start()

    def join(self) -> Reply:
        for thread in self.threads:
            thread.join(30)
        self.sock.close()
        assert self.reply is not None
        return self.reply


@pytest.mark.slow
def test_tricklers_get_408_and_are_closed_while_complete_requests_are_served(port: int) -> None:
    """More tricklers than places (2) at 10 bytes a second: a complete request that comes
    after them is answered 200 within the upload timeout and one inference, not 503; each
    trickler is answered 408 and its connection closed."""
    started = time.monotonic()
    tricklers = [Trickler(port, PNG, 0.1, limit_s=20) for _ in range(QUEUE + 1)]
    time.sleep(0.2)  # the tricklers hold both places; the third waits in line
    sent = time.monotonic()
    response = httpx.post(
        f"http://127.0.0.1:{port}/segment",
        content=PNG,
        headers={"content-type": "image/png"},
        timeout=20,
    )
    answered = time.monotonic() - sent
    replies = [t.join() for t in tricklers]
    assert response.status_code == 200, response.text
    assert answered < UPLOAD_TIMEOUT_S + 2  # the upload timeout, then one small inference
    for reply, trickler in zip(replies, tricklers, strict=True):
        assert reply.status == 408, reply.body
        assert reply.json()["error"]["code"] == "upload_timeout"
        assert reply.headers["connection"] == "close"
        assert reply.closed
        assert trickler.answered - started < 2 * UPLOAD_TIMEOUT_S + 2
    assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200


@pytest.mark.slow
def test_a_body_that_ends_early_on_an_open_connection_is_408(port: int) -> None:
    """Content-Length 1000, ten bytes, then silence with the connection open: 408 after the
    upload timeout, not a request held forever."""
    head = request(INFER, b"0123456789").replace(b"Content-Length: 10", b"Content-Length: 1000")
    reply = exchange(port, head, await_close=True)
    assert reply.status == 408
    assert reply.json()["error"].startswith("the body did not arrive within 1 s")
    assert reply.closed
