"""A real HTTP server on 127.0.0.1 for download tests: files under a folder, ``Range:
bytes=N-`` support, and switches to misbehave (cut, stall, ignore ranges, corrupt)."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Served:
    """One request as the server saw it."""

    path: str
    range: str | None
    status: int
    sent: int  # body bytes written


class Server(ThreadingHTTPServer):
    """Files under ``root`` with ``Range: bytes=N-`` support and switches to misbehave."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.root = root
        self.served: list[Served] = []
        self.cut_after: int | None = None  # the next body stops after this many bytes
        self.stall_after: int | None = None  # the next body stalls after this many bytes
        self.ignore_range = False  # answer 200 and the whole file
        self.wrong_content_range = False  # answer 206 claiming to start at byte 0
        self.corrupt = False  # flip the first byte of every body
        self.release = threading.Event()  # ends a stall

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_port}/{path}"


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        server, range_header = self.server, self.headers.get("Range")
        if self.path.startswith("/moved/"):
            server.served.append(Served(self.path, range_header, 302, 0))
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/moved"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        file = server.root / self.path.lstrip("/")
        if not file.is_file():
            server.served.append(Served(self.path, range_header, 404, 0))
            self.send_error(404)
            return
        data = file.read_bytes()
        if server.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        status, start = 200, 0
        if match and not server.ignore_range:
            status, start = 206, int(match[1])
            if start >= len(data):
                server.served.append(Served(self.path, range_header, 416, 0))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        cut, server.cut_after = server.cut_after, None
        stall, server.stall_after = server.stall_after, None
        sent = body[: min(n for n in (cut, stall, len(body)) if n is not None)]
        # Recorded before the body goes out: the client may look as soon as it has it.
        server.served.append(Served(self.path, range_header, status, len(sent)))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            claimed = 0 if server.wrong_content_range else start
            self.send_header("Content-Range", f"bytes {claimed}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(sent)
        if stall is not None:
            server.release.wait(timeout=10)
        # HTTP/1.0: returning closes the connection, so a short body is a cut one.

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(root: Path) -> Iterator[Server]:
    """A server for the files under ``root``, running until the block ends."""
    server = Server(root)
    # A short poll: shutdown() waits for one.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join()
