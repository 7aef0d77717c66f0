"""Fetching one published file into the local cache: resumable, checked by digest, atomic.

A download streams into ``NAME.part`` beside its final name, resumes it with an HTTP
``Range`` request, and is renamed to ``NAME`` only once its SHA1 or SHA256 matches, so a
cut or damaged download never leaves a file under the final name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from io import BufferedRandom
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from tqdm import tqdm

from model.errors import FCNError

# Seconds any one socket operation (connect, a read) may wait: a stalled server fails.
TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 20
DIGEST_HEX_DIGITS = {"sha1": 40, "sha256": 64}
# The shortest digest prefix accepted: torchvision's file names carry 8 digits of SHA256.
MIN_PREFIX_DIGITS = 8
USER_AGENT = "fcn-segmentation"
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(FCNError, OSError):
    """A file could not be fetched or verified; the message says what the user can do."""


def cache_dir() -> Path:
    """``$FCN_CACHE``, else ``$XDG_CACHE_HOME/fcn``, else ``~/.cache/fcn``."""
    if os.environ.get("FCN_CACHE"):
        return Path(os.environ["FCN_CACHE"]).expanduser()
    # The XDG spec says to ignore a relative XDG_CACHE_HOME.
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg) / "fcn"
    return Path.home() / ".cache" / "fcn"


def fetch(
    url: str,
    *,
    sha1: str | None = None,
    sha256: str | None = None,
    cache: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """The path of ``url``'s file in the cache, downloaded and verified first if need be.

    At most one of ``sha1`` and ``sha256`` gives the expected digest in hex digits: all of
    them, or a prefix of at least ``MIN_PREFIX_DIGITS`` (as torch.hub checks the digest
    prefix in torchvision's file names). A file already at the final name with that digest,
    downloaded or put there by hand, is returned without any network access. Without a
    digest, a download counts as complete when the server sent every byte it announced, and
    a file already at the final name is returned as it is: the caller must check its content.
    ``cache`` defaults to ``cache_dir()``.
    """
    algorithm, expected = digest_spec(sha1, sha256)
    target = Path(cache if cache is not None else cache_dir()) / file_name(url)
    if target.is_file() and (not expected or matches(file_digest(target, algorithm), expected)):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cache_error(target.parent, exc) from exc
    part = target.with_name(target.name + ".part")
    with locked(part, url) as f:
        try:
            digest = download(url, f, target, algorithm, progress)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            # Keep a partial download for resuming, but no empty file.
            with contextlib.suppress(OSError):
                f.flush()
            if os.fstat(f.fileno()).st_size == 0:
                part.unlink(missing_ok=True)
            raise
        if not matches(digest, expected):
            part.unlink()
            if len(expected) < DIGEST_HEX_DIGITS[algorithm]:
                expected += "..."
            raise DownloadError(
                f"{url}: {algorithm.upper()} is {digest}, expected {expected}: a damaged "
                "download or another file; run again to download it afresh, or check the digest"
            )
        try:
            os.replace(part, target)
        except OSError as exc:
            raise cache_error(target.parent, exc) from exc
    return target


@contextlib.contextmanager
def locked(part: Path, url: str) -> Iterator[BufferedRandom]:
    """``part`` open for appending under an exclusive lock: one download per file at a time."""
    try:
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    except OSError as exc:
        raise cache_error(part.parent, exc) from exc
    with open(fd, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(
                f"{part} is locked: another process is downloading {url}; "
                "wait for it to finish, then run again"
            ) from None
        yield f


def digest_spec(sha1: str | None, sha256: str | None) -> tuple[str, str]:
    """``(algorithm, lowercase hex)`` from at most one of the two digests; with neither,
    ``("sha1", "")``: the file's SHA1 is computed but nothing is expected of it."""
    given = [(name, value) for name, value in (("sha1", sha1), ("sha256", sha256)) if value]
    if len(given) > 1:
        raise TypeError("fetch() takes at most one of sha1= and sha256=")
    if not given:
        return "sha1", ""
    [(algorithm, value)] = given
    digits = DIGEST_HEX_DIGITS[algorithm]
    if not re.fullmatch(f"[0-9a-fA-F]{{{MIN_PREFIX_DIGITS},{digits}}}", value):
        raise ValueError(
            f"{algorithm}={value!r}: expected {digits} hex digits "
            f"(or a prefix of at least {MIN_PREFIX_DIGITS})"
        )
    return algorithm, value.lower()


def matches(digest: str, expected: str) -> bool:
    """Whether ``digest`` is ``expected``, or begins with it when that is a prefix."""
    return digest.startswith(expected)


def file_name(url: str) -> str:
    """The last part of ``url``'s path: the name the file has in the cache."""
    parts = urlsplit(url)
    name = PurePosixPath(unquote(parts.path)).name
    if parts.scheme not in ("http", "https") or name in ("", ".", ".."):
        raise DownloadError(f"{url}: expected an http:// or https:// URL that ends in a file name")
    return name


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def download(url: str, f: BufferedRandom, target: Path, algorithm: str, progress: bool) -> str:
    """Complete the partial download in ``f`` (opened for appending) and return its digest."""
    f.seek(0)
    hasher = hashlib.file_digest(f, algorithm)  # what an earlier run left
    offset = f.tell()
    response = request(url, offset, target)
    if response is None:  # 416: the part already holds the whole file
        return hasher.hexdigest()
    if offset and (
        response.status != http.client.PARTIAL_CONTENT or range_start(response) != offset
    ):
        # The server ignored Range (200) or sends another range: start over.
        f.seek(0)
        f.truncate()
        offset, hasher = 0, hashlib.new(algorithm)
        if response.status != http.client.OK:
            response.close()
            response = request(url, 0, target)
            assert response is not None  # 416 only answers a Range
    with response:
        stream(response, f, hasher, offset=offset, url=url, target=target, progress=progress)
    return hasher.hexdigest()


def request(url: str, offset: int, target: Path) -> http.client.HTTPResponse | None:
    """The open response for ``url`` from byte ``offset`` on; ``None`` when the server
    answers 416, i.e. there is nothing left to fetch."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        # urllib follows redirects and keeps the Range header across them.
        response: http.client.HTTPResponse = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S
        )
    except urllib.error.HTTPError as exc:
        exc.close()
        if offset and exc.code == http.client.REQUESTED_RANGE_NOT_SATISFIABLE:
            return None
        raise DownloadError(
            f"{url}: the server answered HTTP {exc.code} {exc.reason}: check the URL, "
            f"or put the file at {target} by hand"
        ) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise DownloadError(
            f"cannot reach {url} ({one_line(reason)}): check the network, "
            f"or put the file at {target} by hand"
        ) from exc
    return response


def range_start(response: http.client.HTTPResponse) -> int | None:
    """The first byte a 206 response carries, from its Content-Range; ``None`` if unknown."""
    match = CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    return int(match[1]) if match else None


def stream(
    response: http.client.HTTPResponse,
    f: BufferedRandom,
    hasher: Any,
    *,
    offset: int,
    url: str,
    target: Path,
    progress: bool,
) -> None:
    """Append the body of ``response`` to ``f``, hashing as it goes; raise if it is cut."""
    length_header = response.headers.get("Content-Length")
    length = int(length_header) if length_header and length_header.isdigit() else None
    received = 0
    bar = tqdm(
        total=None if length is None else offset + length,
        initial=offset,
        desc=target.name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not progress or not sys.stderr.isatty(),
    )
    with bar:
        while True:
            try:
                chunk = response.read(CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as exc:
                raise cut_error(url, target, offset + received, exc) from exc
            if not chunk:
                break
            try:
                f.write(chunk)
            except OSError as exc:
                raise cache_error(target.parent, exc) from exc
            hasher.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    # http.client ends a cut body quietly: compare with what the server announced.
    if length is not None and received < length:
        raise cut_error(url, target, offset + received, f"{offset + length:,} announced")


def cut_error(url: str, target: Path, done: int, why: object) -> DownloadError:
    """The error for a body that ended early: the part is kept for the next run."""
    return DownloadError(
        f"{url}: the download stopped after {done:,} bytes ({one_line(why)}); run again to "
        f"resume it from {target.name}.part, or put the file at {target} by hand"
    )


def cache_error(folder: Path, exc: OSError) -> DownloadError:
    """The error for a cache folder that cannot be written."""
    return DownloadError(
        f"cannot write in the cache {folder} ({exc.strerror or exc}): free some space, "
        "or set FCN_CACHE to a writable folder"
    )


def one_line(reason: object) -> str:
    """``reason`` as text on one line, for messages that must stay on one."""
    return " ".join(str(reason).split()) or type(reason).__name__
