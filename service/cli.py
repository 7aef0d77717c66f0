"""``fcn-serve``: the settings from FCN_* (four also by flag), checked, then uvicorn serving
``service.main:create_app`` with them."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from service.config import Settings, UnknownSettingError, check_environment
from service.logs import logging_config


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for ``settings``."""
    return {
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        # One process (FCN_WORKERS is 1): uvicorn serves in this one, no supervisor.
        "workers": settings.workers,
        "log_config": logging_config(settings.log_format, settings.log_level),
        "log_level": settings.log_level,
        # The app writes the access log (service.middleware.RequestContext): with the time
        # to the response's end, the request id, and probes left out.
        "access_log": False,
        # Load balancers keep idle connections open (AWS ALB: 60 s); if the server closed
        # them first, a request sent just then would get a 502.
        "timeout_keep_alive": settings.keep_alive_s,
        "timeout_graceful_shutdown": math.ceil(settings.drain_timeout_s),
    }


# Flags of ``fcn-serve``: each sets its FCN_* variable, so uvicorn's workers see it too.
FLAGS = {"model": "model_path", "host": "host", "port": "port", "workers": "workers"}


def _as_environment(value: object) -> str:
    """A default as one would write it in the environment: ``375x500``, ``a,b``, ``true``."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        if all(isinstance(v, tuple) for v in value):
            return ",".join("x".join(str(n) for n in v) for v in value) or "empty"
        return ",".join(str(v) for v in value) or "empty"
    return str(value) if value != "" else "empty"


def _argument_parser() -> argparse.ArgumentParser:
    lines = []
    for name, field in Settings.model_fields.items():
        default = "" if field.is_required() else f" [{_as_environment(field.default)}]"
        lines.append(f"  FCN_{name.upper():<26} {field.description}{default}")
    parser = argparse.ArgumentParser(
        prog="fcn-serve",
        description="Serve an FCN ONNX model over HTTP (POST /segment) with uvicorn. Every "
        "setting is an FCN_* environment variable; the flags below override theirs.",
        epilog="settings (environment):\n" + "\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", metavar="PATH", help="the ONNX file (FCN_MODEL_PATH)")
    parser.add_argument("--host", help="address to bind (FCN_HOST)")
    parser.add_argument("--port", help="port to listen on (FCN_PORT)")
    parser.add_argument("--workers", help="server processes, 1 only (FCN_WORKERS)")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="check the settings, print each one in force as FCN_NAME=value, and exit",
    )
    return parser


def run(argv: Sequence[str] | None = None) -> None:
    """``fcn-serve``: serve the model with uvicorn; every setting from FCN_*, four by flag."""
    args = _argument_parser().parse_args(argv)
    for flag, name in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            os.environ[f"FCN_{name.upper()}"] = str(value)
    try:
        check_environment()
        settings = Settings()  # type: ignore[call-arg]
    except UnknownSettingError as exc:
        print(f"fcn-serve: bad settings: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValidationError as exc:
        problems = "; ".join(
            f"FCN_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            + (" (set it, or pass --model PATH)" if e["loc"] == ("model_path",) else "")
            for e in exc.errors()
        )
        print(f"fcn-serve: bad settings: {problems}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.check_config:
        # As the environment would say it (`set -a; . FILE` reads it back); unset ones as
        # comments, since an empty value is not always the same as none.
        for name in Settings.model_fields:
            value = getattr(settings, name)
            if value is None:
                print(f"# FCN_{name.upper()} is unset")
                continue
            print(f"FCN_{name.upper()}={'' if value in ('', ()) else _as_environment(value)}")
        return
    import uvicorn

    uvicorn.run("service.main:create_app", **server_options(settings))


if __name__ == "__main__":
    run()
