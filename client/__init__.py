"""A Python client of the segmentation service, and a folder of images sent through it.

It needs only httpx and tqdm (the ``client`` extra) beside numpy, Pillow and ``contract``:
never torch, ONNX Runtime or ``service``. 503s are retried as ``Retry-After`` asks.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx
from tqdm import tqdm

from contract.inputs import collect_images
from contract.schema import GEOMETRY, no_geometry

Format = Literal["png", "overlay", "json"]
FORMATS: tuple[Format, ...] = ("png", "overlay", "json")
DEFAULT_RETRIES = 5  # retries after the first attempt, for 503s and connection failures
DEFAULT_MAX_WAIT_S = 10.0  # the longest one wait before a retry, whatever Retry-After says
DEFAULT_BACKOFF_S = 0.25  # first wait after a connection failure (doubles each time)
DEFAULT_TIMEOUT_S = 60.0  # above the service's own FCN_REQUEST_TIMEOUT_S (30 s)
# Failures that mean "no answer came": the request may be sent again (segmenting is idempotent).
# Read and write timeouts are not among them: the service is slow, not gone.
RETRIED_TRANSPORT_ERRORS = (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


class ClientError(Exception):
    """The service refused a request (``status`` and its JSON error ``code``), or gave no
    answer (``status`` None)."""

    def __init__(self, status: int | None, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        where = self.code if self.status is None else f"{self.status} {self.code}"
        return f"{self.message} ({where})"


def _error_of(response: httpx.Response) -> ClientError:
    """The service's ``{"error": {"code", "message"}}``, or what a proxy in between said."""
    try:
        error = response.json()["error"]
        return ClientError(response.status_code, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        text = " ".join(response.text.split())[:200] or response.reason_phrase
        return ClientError(response.status_code, f"http_{response.status_code}", text)


def _json_of(status: int, content: bytes, url: str) -> dict[str, Any]:
    """A JSON object answer, or ``ClientError`` when what answered is not the service."""
    try:
        answer = json.loads(content)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ClientError(status, "bad_answer", f"{url} did not answer with a JSON object")
    return answer


def retry_after_s(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delay-seconds or an HTTP date); None
    when absent or unreadable."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" or no zone: RFC 9110 dates are in UTC
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Client:
    """A synchronous client of one service at ``url``; safe to share between threads.

    503 answers are retried after their ``Retry-After`` (at most ``max_wait_s`` a wait),
    connection failures after an exponential backoff, ``retries`` times at most; any other
    4xx or 5xx raises ``ClientError`` at once.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_connections: int = 10,
    ):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = url.rstrip("/")
        self.retries = retries
        self.max_wait_s = max_wait_s
        self.backoff_s = backoff_s
        self.refused = 0  # 503 answers retried so far
        self.reconnects = 0  # connection failures retried so far
        self._lock = threading.Lock()
        limits = httpx.Limits(max_connections=max_connections)
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, limits=limits)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def segment(
        self, image: bytes | str | os.PathLike[str], *, format: Format = "png", **query: Any
    ) -> bytes:
        """The service's answer for one image (its bytes, or a file's path): a label-map PNG,
        an overlay or JSON by ``format``; ``query`` adds ``alpha``, ``max_side``, ``tile``..."""
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        body = image if isinstance(image, bytes) else Path(image).read_bytes()
        params = {"format": format, **{k: v for k, v in query.items() if v is not None}}
        headers = {"content-type": "application/octet-stream"}
        response = self._send("POST", "/segment", content=body, params=params, headers=headers)
        return response.content

    def segment_json(self, image: bytes | str | os.PathLike[str], **query: Any) -> dict[str, Any]:
        """The JSON answer for one image: size, model, and the classes present."""
        return _json_of(200, self.segment(image, format="json", **query), self.url)

    def model(self) -> dict[str, Any]:
        """``GET /v1/model``: the model's metadata, provider, input contract and batching."""
        response = self._send("GET", "/v1/model")
        return _json_of(response.status_code, response.content, str(response.url))

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200 now (no retries; False when nobody answers)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def _send(self, method: str, path: str, **request: Any) -> httpx.Response:
        """One request, retried on 503 and on connection failures; other errors raise."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(method, path, **request)
            except RETRIED_TRANSPORT_ERRORS as exc:
                if last:
                    raise ClientError(
                        None,
                        "unreachable",
                        f"no answer from {self.url} after {attempt + 1} attempt(s): {exc}",
                    ) from exc
                with self._lock:
                    self.reconnects += 1
                time.sleep(self._wait(attempt, None))
                continue
            except httpx.TimeoutException as exc:
                raise ClientError(None, "timeout", f"{self.url}{path}: {exc}") from exc
            if response.status_code == 503 and not last:
                with self._lock:
                    self.refused += 1
                time.sleep(self._wait(attempt, retry_after_s(response.headers.get("retry-after"))))
                continue
            if not response.is_success:  # a redirect too: its body is no answer
                error = _error_of(response)
                if response.status_code == 503:
                    error.message += f" (still refused after {attempt + 1} attempts)"
                raise error
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry ``attempt + 1``: at least what Retry-After asks (else an
        exponential backoff), up to half again more so that clients refused together do not
        all come back together, and never over ``max_wait_s``."""
        wait = self.backoff_s * 2**attempt if retry_after is None else retry_after
        wait = max(wait, self.backoff_s)  # Retry-After: 0 (draining) must not spin
        return min(self.max_wait_s, wait * random.uniform(1.0, 1.5))


@dataclass(frozen=True)
class Failure:
    """One image that has no answer written, and why."""

    path: Path
    error: ClientError

    def __str__(self) -> str:
        return f"{self.path}: {self.error}"


@dataclass
class SegmentResult:
    """What ``segment_folder`` did: the files written (input -> output), the failures in
    input order, and how many times the service said 503 and was asked again."""

    model: dict[str, Any]
    written: dict[Path, Path] = field(default_factory=dict)
    failed: list[Failure] = field(default_factory=list)
    refused: int = 0
    reconnects: int = 0


def output_suffix(format: Format, query: Mapping[str, Any] | None = None) -> str:
    """The ending of an answer's file: ``.png`` (labels), ``_overlay.png`` or
    ``_overlay.jpg`` (as ``fcn predict`` names overlays), ``.json``; each after
    ``_geometry`` when the query asks for ``output=geometry``, so both maps can share a folder."""
    kind = "_geometry" if (query or {}).get("output") == GEOMETRY else ""
    if format == "json":
        return f"{kind}.json"
    if format == "overlay":
        jpeg = str((query or {}).get("image_format", "png")).lower() in ("jpeg", "jpg")
        return f"{kind}_overlay.jpg" if jpeg else f"{kind}_overlay.png"
    return f"{kind}.png"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: Path, content: bytes, mode: int = 0o644) -> None:
    """Write ``content`` to a temporary file beside ``path``, then rename it onto ``path``:
    a reader never sees half a file, and a failure leaves none behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as sink:
            sink.write(content)
        os.chmod(name, mode)  # mkstemp makes 0600; give what a plain open() would
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def segment_folder(
    url: str,
    paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    concurrency: int = 4,
    format: Format = "png",
    query: Mapping[str, Any] | None = None,
    progress: bool = True,
    retries: int = DEFAULT_RETRIES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_wait_s: float = DEFAULT_MAX_WAIT_S,
    on_failure: Callable[[Failure], None] | None = None,
) -> SegmentResult:
    """Send every image of ``paths`` (files and folders) to the service at ``url``,
    ``concurrency`` at a time, and write each answer under ``out_dir``, at its stem
    (``contract.inputs``) plus ``output_suffix``. One image's failure stops nothing: it is
    passed to ``on_failure`` and listed in the result. Raises ``contract.inputs.InputError``
    before sending anything for bad inputs, and ``ClientError`` when the service does not
    answer ``GET /v1/model``, or its model lacks the ``output`` the query asks for (nothing
    sent, nothing written).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    out = Path(out_dir)
    suffix = output_suffix(format, query)
    outputs = {
        image: out / stem.parent / f"{stem.name}{suffix}"
        for image, stem in collect_images(paths, out).items()
    }
    mode = 0o666 & ~_current_umask()  # read once here: os.umask is not thread-safe
    options = dict(query or {})

    def one(client: Client, source: Path) -> None:
        try:
            content = source.read_bytes()
        except OSError as exc:
            raise ClientError(None, "unreadable", exc.strerror or str(exc)) from exc
        answer = client.segment(content, format=format, **options)
        try:
            write_atomically(outputs[source], answer, mode)
        except OSError as exc:
            message = f"cannot write {outputs[source]}: {exc.strerror or exc}"
            raise ClientError(None, "write_failed", message) from exc

    with Client(
        url, timeout_s=timeout_s, retries=retries, max_wait_s=max_wait_s,
        max_connections=concurrency,
    ) as client:  # fmt: skip
        result = SegmentResult(model=client.model())  # the service is there, or nothing runs
        if options.get("output") == GEOMETRY and GEOMETRY not in result.model.get("outputs", []):
            # Every image would get the same 422: say it once, before sending any.
            message = f"?output=geometry: {no_geometry(repr(result.model.get('name')))}"
            raise ClientError(422, "invalid_parameter", message)
        failures: dict[Path, Failure] = {}
        bar = tqdm(total=len(outputs), unit="image", disable=not progress, desc="segment")
        with bar, ThreadPoolExecutor(concurrency) as pool:
            futures = {pool.submit(one, client, source): source for source in outputs}
            try:
                for future in as_completed(futures):
                    source = futures[future]
                    try:
                        future.result()
                    except ClientError as exc:
                        failures[source] = Failure(source, exc)
                        if on_failure is not None:
                            on_failure(failures[source])
                    else:
                        result.written[source] = outputs[source]
                    bar.update()
            except BaseException:  # Ctrl-C or a bug: send nothing more; what runs finishes
                for future in futures:
                    future.cancel()
                raise
        result.refused, result.reconnects = client.refused, client.reconnects
    result.failed = [failures[p] for p in outputs if p in failures]
    result.written = {p: outputs[p] for p in outputs if p in result.written}
    return result
