"""Slow uploads: the upload deadline and floor rate of the one body reader (408, the connection
closed, the place given back at once) and the line for places that uploads hold, as units and
through the app in process (clients that stall or trickle, played through ASGI)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from service.admission import Places
from service.errors import NotReadyError, OverloadedError
from service.main import create_app
from service.metrics import Metrics
from service.request import Upload
from tests.service.support import PNG, metric, metrics, post_scope, running, settings

pytestmark = pytest.mark.anyio

Receive = Callable[[], Awaitable[dict[str, Any]]]
INFER = "/v2/models/fcn8s-tiny/infer"
# An inference request of one 2x2 image, JSON only.
INFER_BODY = json.dumps(
    {"inputs": [{"name": "image", "shape": [1, 2, 2, 3], "datatype": "UINT8", "data": [7] * 12}]}
).encode()
BODIES = {
    "/segment": (b"image/png", PNG),
    INFER: (b"application/json", INFER_BODY),
}


async def asgi_call(app: Any, path: str, body: bytes, receive: Receive) -> dict[str, Any]:
    """POST ``path`` straight through ASGI with a body of ``len(body)`` bytes that ``receive``
    delivers; the status, headers (lower-case) and body of the answer."""
    content_type, _ = BODIES[path]
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await app(post_scope(path, headers), receive, send)
    answered = {k.decode().lower(): v.decode() for k, v in sent[0]["headers"]}
    content = b"".join(m.get("body", b"") for m in sent[1:])
    return {"status": sent[0]["status"], "headers": answered, "body": json.loads(content)}


def stalling(body: bytes) -> Receive:
    """A client that sends the first half of ``body``, then nothing more, ever."""
    halves = [body[: len(body) // 2]]

    async def receive() -> dict[str, Any]:
        if halves:
            return {"type": "http.request", "body": halves.pop(), "more_body": True}
        await asyncio.Event().wait()  # never set: the reader's deadline must end this
        raise AssertionError("unreachable")

    return receive


def trickling(body: bytes, interval_s: float) -> Receive:
    """A client that sends ``body`` one byte every ``interval_s``."""
    position = 0

    async def receive() -> dict[str, Any]:
        nonlocal position
        await asyncio.sleep(interval_s)
        position += 1
        more = position < len(body)
        return {"type": "http.request", "body": body[position - 1 : position], "more_body": more}

    return receive


def test_the_deadline_is_the_timeout_or_the_floor_whichever_comes_first() -> None:
    upload = Upload(1000, timeout_s=60, min_rate=100, grace_s=5)
    assert upload.deadline(10.0, 0) == (15.0, "too_slow")  # nothing came: the grace ends it
    assert upload.deadline(10.0, 1000) == (25.0, "too_slow")  # each byte buys 1/100 s
    assert upload.deadline(10.0, 10_000) == (70.0, "timeout")  # never past the timeout
    assert Upload(1000, timeout_s=60).deadline(10.0, 0) == (70.0, "timeout")  # no floor


async def test_places_go_to_the_line_in_order_while_uploads_hold_them() -> None:
    places = Places(2, retry_after_s=1, metrics=Metrics())
    places.take()
    places.take()  # both reserved: their bodies are coming in
    first = asyncio.ensure_future(places.wait(10))
    second = asyncio.ensure_future(places.wait(10))
    await asyncio.sleep(0)
    # The line is as long as the queue: one more is refused at once.
    with pytest.raises(OverloadedError, match="2 requests are in the service"):
        await places.wait(10)
    places.release(uploading=True)  # an upload cut off: its place goes to the first in line
    await asyncio.wait_for(first, 1)
    assert not second.done()
    assert (places.taken, places.uploading) == (2, 2)
    places.received()
    places.received()  # both bodies in: every place is held
    places.release(uploading=False)
    await asyncio.wait_for(second, 1)
    places.received()
    # Every place held by a complete request: the service is full, nobody waits.
    with pytest.raises(OverloadedError) as refused:
        await places.wait(10)
    assert refused.value.headers == {"Retry-After": "1"}


async def test_a_wait_in_line_ends_after_its_time_and_at_shutdown() -> None:
    places = Places(1, retry_after_s=1, metrics=Metrics())
    places.take()
    with pytest.raises(OverloadedError, match=r"no place came free within 0\.05 s"):
        await places.wait(0.05)
    waiting = asyncio.ensure_future(places.wait(10))
    await asyncio.sleep(0)
    places.close()
    with pytest.raises(NotReadyError, match="shutting down"):
        await waiting
    places.release(uploading=True)
    assert (places.taken, places.uploading) == (0, 0)


async def test_a_place_handed_to_a_request_gone_from_the_line_goes_to_the_next() -> None:
    places = Places(2, retry_after_s=1, metrics=Metrics())
    places.take()
    places.take()
    gone = asyncio.ensure_future(places.wait(10))
    next_one = asyncio.ensure_future(places.wait(10))
    await asyncio.sleep(0)
    places.release(uploading=True)  # handed to `gone`, which is cancelled before it runs
    gone.cancel()
    await asyncio.wait_for(next_one, 1)
    assert (places.taken, places.uploading) == (2, 2)


@pytest.mark.parametrize("path", list(BODIES), ids=["segment", "v2"])
async def test_a_body_that_stalls_is_408_closed_and_gives_its_place_back(
    model_path: Path, path: str
) -> None:
    app = create_app(settings(model_path, upload_timeout_s=0.3, upload_min_rate=0, max_queue=1))
    async with running(app) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        _, body = BODIES[path]
        answer = await asgi_call(app, path, body, stalling(body))
        elapsed = loop.time() - started
        text = await metrics(client)
    assert answer["status"] == 408
    assert answer["headers"]["connection"] == "close"
    message = answer["body"]["error"]["message"] if path == "/segment" else answer["body"]["error"]
    if path == "/segment":
        assert answer["body"]["error"]["code"] == "upload_timeout"
    assert message == (
        "the body did not arrive within 0.3 s (FCN_UPLOAD_TIMEOUT_S): "
        f"{len(body) // 2} of {len(body)} bytes came"
    )
    assert 0.3 <= elapsed < 3
    assert metric(text, "fcn_uploads_cut_off_total", reason="timeout") == 1
    assert metric(text, "fcn_requests_admitted") == 0
    assert metric(text, "fcn_requests_uploading") == 0


async def test_a_body_below_the_floor_rate_is_408_once_the_grace_is_over(
    model_path: Path,
) -> None:
    app = create_app(
        settings(model_path, upload_timeout_s=30, upload_min_rate=1000, upload_grace_s=0.2)
    )
    async with running(app) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await asgi_call(app, "/segment", PNG, trickling(PNG, 0.02))
        elapsed = loop.time() - started
        text = await metrics(client)
    assert answer["status"] == 408
    assert answer["headers"]["connection"] == "close"
    message = answer["body"]["error"]["message"]
    assert "after 0.2 s a body must come at 1000 bytes/s (FCN_UPLOAD_MIN_RATE)" in message
    assert 0.2 <= elapsed < 3
    assert metric(text, "fcn_uploads_cut_off_total", reason="too_slow") == 1
    assert metric(text, "fcn_uploads_cut_off_total", reason="timeout") == 0


async def test_a_complete_request_waits_for_the_place_a_stalled_upload_holds(
    model_path: Path,
) -> None:
    """FCN_MAX_QUEUE=1, its place reserved by a stalled upload: a complete request is not
    refused but waits in line, and is answered 200 once the upload is cut off."""
    app = create_app(settings(model_path, upload_timeout_s=0.5, upload_min_rate=0, max_queue=1))
    async with running(app) as client:
        stalled = asyncio.ensure_future(asgi_call(app, "/segment", PNG, stalling(PNG)))
        while metric(await metrics(client), "fcn_requests_uploading") < 1:
            await asyncio.sleep(0.005)
        loop = asyncio.get_running_loop()
        started = loop.time()
        complete = asyncio.ensure_future(
            client.post("/segment", content=PNG, headers={"content-type": "image/png"})
        )
        while metric(await metrics(client), "fcn_requests_awaiting_place") < 1:
            await asyncio.sleep(0.005)
        assert not complete.done()
        response = await complete
        waited = loop.time() - started
        assert (await stalled)["status"] == 408
        text = await metrics(client)
    assert response.status_code == 200, response.text
    assert waited < 0.5 + 2  # the upload timeout, then one small inference
    assert metric(text, "fcn_requests_awaiting_place") == 0
    assert metric(text, "fcn_requests_admitted") == 0
