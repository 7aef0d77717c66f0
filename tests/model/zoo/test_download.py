"""``fetch`` against a real HTTP server on 127.0.0.1 that serves ranges and can misbehave."""

from __future__ import annotations

import fcntl
import hashlib
import io
import random
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.errors import FCNError
from model.zoo import download
from model.zoo.download import DownloadError, cache_dir, fetch
from tests.model.zoo.http_server import Served, Server, serving

NAME = "fcn8s-tiny.caffemodel"
SIZE = 3 << 20  # three chunks and a bit of the client's reads
CUT = SIZE // 2 + 12345


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    with serving(root) as server:
        yield server


@pytest.fixture
def payload(server: Server) -> bytes:
    """The file the server offers under ``NAME``."""
    data = random.Random(0).randbytes(SIZE)
    (server.root / NAME).write_bytes(data)
    return data


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"FCN_CACHE": "/x/fcn-cache", "XDG_CACHE_HOME": "/xdg"}, "/x/fcn-cache"),
        ({"XDG_CACHE_HOME": "/xdg"}, "/xdg/fcn"),
        ({"XDG_CACHE_HOME": "relative"}, "HOME/.cache/fcn"),
        ({}, "HOME/.cache/fcn"),
    ],
    ids=["FCN_CACHE", "XDG_CACHE_HOME", "relative-XDG-ignored", "home"],
)
def test_cache_dir_prefers_fcn_cache_then_xdg_then_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    monkeypatch.delenv("FCN_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cache_dir() == Path(expected.replace("HOME", str(tmp_path)))


def test_fetch_downloads_verifies_and_lands_under_the_final_name(
    server: Server, payload: bytes, cache: Path
) -> None:
    path = fetch(server.url(NAME), sha1=sha1(payload), cache=cache)
    assert path == cache / NAME
    assert path.read_bytes() == payload
    assert listing(cache) == [NAME]  # the .part was renamed, not copied
    assert server.served == [Served(f"/{NAME}", None, 200, SIZE)]


def test_fetch_checks_sha256_too(server: Server, payload: bytes, cache: Path) -> None:
    path = fetch(server.url(NAME), sha256=hashlib.sha256(payload).hexdigest(), cache=cache)
    assert path.read_bytes() == payload


def test_a_digest_prefix_is_checked_as_torch_hub_checks_it(
    server: Server, payload: bytes, cache: Path
) -> None:
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    assert fetch(server.url(NAME), sha256=prefix.upper(), cache=cache).read_bytes() == payload
    wrong = f"{int(prefix, 16) ^ 1:08x}"
    with pytest.raises(DownloadError, match=f"expected {wrong}\\.\\.\\.: a damaged"):
        fetch(server.url(NAME), sha256=wrong, cache=tmp_cache(cache))


def test_without_a_digest_a_complete_download_is_kept_and_reused(
    server: Server, payload: bytes, cache: Path
) -> None:
    path = fetch(server.url(NAME), cache=cache)
    assert path.read_bytes() == payload
    assert fetch(server.url(NAME), cache=cache) == path
    assert len(server.served) == 1


def test_without_a_digest_a_cut_download_is_not_taken_for_the_file(
    server: Server, payload: bytes, cache: Path
) -> None:
    server.cut_after = CUT
    with pytest.raises(DownloadError, match=f"stopped after {CUT:,} bytes"):
        fetch(server.url(NAME), cache=cache)
    assert listing(cache) == [f"{NAME}.part"]
    assert fetch(server.url(NAME), cache=cache).read_bytes() == payload


def tmp_cache(cache: Path) -> Path:
    """Another, empty cache beside ``cache``."""
    other = cache.with_name(cache.name + "-other")
    other.mkdir()
    return other


def test_a_cached_file_is_returned_without_a_request(
    server: Server, payload: bytes, cache: Path
) -> None:
    first = fetch(server.url(NAME), sha1=sha1(payload), cache=cache)
    requests = len(server.served)
    assert fetch(server.url(NAME), sha1=sha1(payload).upper(), cache=cache) == first
    assert len(server.served) == requests


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("progress", [True, False])
def test_a_progress_bar_shows_on_a_terminal_unless_turned_off(
    server: Server, payload: bytes, cache: Path, monkeypatch: pytest.MonkeyPatch, progress: bool
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    fetch(server.url(NAME), sha1=sha1(payload), cache=cache, progress=progress)
    assert (NAME in terminal.getvalue()) is progress


def test_a_stale_cached_file_is_replaced(server: Server, payload: bytes, cache: Path) -> None:
    cache.mkdir()
    (cache / NAME).write_bytes(b"an older release")
    assert fetch(server.url(NAME), sha1=sha1(payload), cache=cache).read_bytes() == payload
    assert listing(cache) == [NAME]


def test_a_cut_download_keeps_its_part_and_resumes_with_a_range(
    server: Server, payload: bytes, cache: Path
) -> None:
    server.cut_after = CUT
    with pytest.raises(DownloadError, match=rf"stopped after {CUT:,} bytes.*run again") as info:
        fetch(server.url(NAME), sha1=sha1(payload), cache=cache)
    assert "\n" not in str(info.value)
    assert listing(cache) == [f"{NAME}.part"]
    assert (cache / f"{NAME}.part").read_bytes() == payload[:CUT]

    path = fetch(server.url(NAME), sha1=sha1(payload), cache=cache)
    assert path.read_bytes() == payload
    assert listing(cache) == [NAME]
    assert server.served[-1] == Served(f"/{NAME}", f"bytes={CUT}-", 206, SIZE - CUT)


def test_a_server_that_ignores_range_is_downloaded_afresh(
    server: Server, payload: bytes, cache: Path
) -> None:
    server.cut_after = CUT
    with pytest.raises(DownloadError):
        fetch(server.url(NAME), sha1=sha1(payload), cache=cache)
    server.ignore_range = True
    assert fetch(server.url(NAME), sha1=sha1(payload), cache=cache).read_bytes() == payload
    assert server.served[-1] == Served(f"/{NAME}", f"bytes={CUT}-", 200, SIZE)
    assert listing(cache) == [NAME]


def test_a_206_of_another_range_is_downloaded_afresh(
    server: Server, payload: bytes, cache: Path
) -> None:
    server.cut_after = CUT
    with pytest.raises(DownloadError):
        fetch(server.url(NAME), sha1=sha1(payload), cache=cache)
    server.wrong_content_range = True
    assert fetch(server.url(NAME), sha1=sha1(payload), cache=cache).read_bytes() == payload
    assert [(s.range, s.status) for s in server.served[-2:]] == [
        (f"bytes={CUT}-", 206),
        (None, 200),
    ]
    assert listing(cache) == [NAME]


def test_a_complete_part_is_verified_and_renamed_after_a_416(
    server: Server, payload: bytes, cache: Path
) -> None:
    cache.mkdir()
    (cache / f"{NAME}.part").write_bytes(payload)  # cut just before the rename
    assert fetch(server.url(NAME), sha1=sha1(payload), cache=cache).read_bytes() == payload
    assert server.served == [Served(f"/{NAME}", f"bytes={SIZE}-", 416, 0)]
    assert listing(cache) == [NAME]


@pytest.mark.parametrize("fault", ["wrong-digest", "corrupt-bytes"])
def test_a_wrong_checksum_names_both_digests_and_leaves_nothing(
    server: Server, payload: bytes, cache: Path, fault: str
) -> None:
    expected = sha1(payload)
    if fault == "wrong-digest":
        expected, got = "0" * 40, sha1(payload)
    else:
        server.corrupt = True
        got = sha1(bytes([payload[0] ^ 0xFF]) + payload[1:])
    with pytest.raises(DownloadError, match=f"SHA1 is {got}, expected {expected}"):
        fetch(server.url(NAME), sha1=expected, cache=cache)
    assert listing(cache) == []


def test_an_unreachable_url_names_it_and_where_to_put_the_file_by_hand(
    payload: bytes, cache: Path
) -> None:
    with socket.socket() as nobody:  # bound, never listening: connections are refused
        nobody.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{nobody.getsockname()[1]}/{NAME}"
        with pytest.raises(DownloadError) as info:
            fetch(url, sha1=sha1(payload), cache=cache)
        message = str(info.value)
        assert f"cannot reach {url}" in message
        assert f"put the file at {cache / NAME} by hand" in message
        assert "\n" not in message
        assert isinstance(info.value, FCNError)
        assert listing(cache) == []  # no empty .part

        (cache / NAME).write_bytes(payload)
        assert fetch(url, sha1=sha1(payload), cache=cache) == cache / NAME


def test_an_http_error_names_the_status_and_leaves_nothing(server: Server, cache: Path) -> None:
    with pytest.raises(DownloadError, match=rf"HTTP 404 .*put the file at {cache / 'gone.bin'}"):
        fetch(server.url("gone.bin"), sha1="0" * 40, cache=cache)
    assert listing(cache) == []


def test_a_redirect_is_followed(server: Server, payload: bytes, cache: Path) -> None:
    assert fetch(server.url(f"moved/{NAME}"), sha1=sha1(payload), cache=cache) == cache / NAME
    assert [s.status for s in server.served] == [302, 200]


def test_a_stalled_server_times_out_and_keeps_the_part(
    server: Server, payload: bytes, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "TIMEOUT_S", 0.3)
    server.stall_after = CUT
    with pytest.raises(DownloadError, match=r"stopped after ([\d,]+) bytes \(timed out\)") as info:
        fetch(server.url(NAME), sha1=sha1(payload), cache=cache)
    server.release.set()
    # What was read of the chunk in progress is lost; what is on disk is reported.
    kept = (cache / f"{NAME}.part").read_bytes()
    assert kept == payload[: len(kept)]
    assert f"stopped after {len(kept):,} bytes" in str(info.value)
    assert fetch(server.url(NAME), sha1=sha1(payload), cache=cache).read_bytes() == payload
    assert server.served[-1].range == f"bytes={len(kept)}-"


def test_a_part_locked_by_another_download_is_left_alone(
    server: Server, payload: bytes, cache: Path
) -> None:
    cache.mkdir()
    with open(cache / f"{NAME}.part", "ab") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(DownloadError, match="another process is downloading"):
            fetch(server.url(NAME), sha1=sha1(payload), cache=cache)
    assert server.served == []
    assert listing(cache) == [f"{NAME}.part"]


@pytest.mark.parametrize(
    ("digests", "error"),
    [
        ({"sha1": "0" * 40, "sha256": "0" * 64}, TypeError),
        ({"sha1": "0" * 41}, ValueError),
        ({"sha256": "0" * 7}, ValueError),
        ({"sha256": "g" * 64}, ValueError),
    ],
    ids=["both", "long-sha1", "short-prefix", "not-hex"],
)
def test_fetch_refuses_a_bad_digest_spec(
    cache: Path, digests: dict[str, str], error: type[Exception]
) -> None:
    with pytest.raises(error):
        fetch(f"http://127.0.0.1:9/{NAME}", cache=cache, **digests)


@pytest.mark.parametrize("url", ["ftp://host/file.bin", "http://host/", "file.bin"])
def test_fetch_refuses_a_url_without_a_file_name(cache: Path, url: str) -> None:
    with pytest.raises(DownloadError, match="expected an http"):
        fetch(url, sha1="0" * 40, cache=cache)
