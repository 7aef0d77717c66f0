"""``python -m service.healthcheck``: exit 0 when this container's service answers /readyz with
200, else 1. For Docker's HEALTHCHECK: the standard library only, so it starts in
milliseconds, and the port from FCN_PORT, as the server reads it.
"""

from __future__ import annotations

import http.client
import os
import sys

DEFAULT_PORT = 8000  # Settings.port's default (a test keeps them equal)
PATH = "/readyz"
TIMEOUT_S = 2.0
# Where the server binds every address, ask it on loopback.
WILDCARDS = ("", "0.0.0.0", "::")


def target(environ: dict[str, str]) -> tuple[str, int]:
    """(host, port) of the service this process's FCN_HOST and FCN_PORT describe."""
    host = environ.get("FCN_HOST", "").strip()
    port = int(environ.get("FCN_PORT", "").strip() or DEFAULT_PORT)
    if host in WILDCARDS:
        host = "::1" if host == "::" else "127.0.0.1"
    return host, port


def check(host: str, port: int, timeout_s: float = TIMEOUT_S) -> tuple[bool, str]:
    """Whether GET /readyz answers 200, and what it said."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", PATH)
        response = connection.getresponse()
        body = response.read(500).decode("utf-8", "replace")
        return response.status == 200, f"{response.status} {body}"
    except OSError as exc:
        return False, f"no answer from {host}:{port}: {exc}"
    finally:
        connection.close()


def main() -> int:
    """Check the service and print what /readyz said."""
    try:
        host, port = target(dict(os.environ))
    except ValueError:
        print(f"healthcheck: FCN_PORT={os.environ.get('FCN_PORT')!r} is not a port")
        return 1
    healthy, detail = check(host, port)
    print(f"healthcheck: {PATH} {detail}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
