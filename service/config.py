"""The service's settings: one pydantic-settings class, read from ``FCN_*`` environment variables.

Tests and embedders pass a ``Settings`` to ``create_app``; the server reads the environment.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contract.decode import DEFAULT_MAX_PIXELS
from contract.encode import DEFAULT_ALPHA, JPEG_QUALITY, PNG_COMPRESS_LEVEL
from contract.tiling import DEFAULT_MAX_MODEL_PIXELS, DEFAULT_OVERLAP
from service.logs import LogFormat

# Short names users may write in FCN_PROVIDERS, and the ONNX Runtime names they stand for.
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
KNOWN_PROVIDERS = frozenset(PROVIDER_ALIASES.values())
Format = Literal["png", "overlay", "json"]
TileMode = Literal["auto", "always", "never"]
SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


# FCN_* variables that are not the service's settings and are left alone: the model zoo's
# (model.zoo, `fcn pretrained`) and those docker-compose reads to fill in its file.
OTHER_VARIABLES = frozenset(
    {"FCN_CACHE", "FCN_MIRROR", "FCN_PRETRAINED", "FCN_HOST_PORT", "FCN_MODELS_DIR"}
)
PREFIX = "FCN_"


class UnknownSettingError(ValueError):
    """An FCN_* variable that is no setting: a typo would otherwise be silently ignored."""


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse FCN_* variables that are not settings, naming each and the closest setting."""
    environ = os.environ if environ is None else environ
    known = {PREFIX + name.upper() for name in Settings.model_fields}
    problems = []
    for variable in sorted(environ):
        if not variable.upper().startswith(PREFIX) or variable in known | OTHER_VARIABLES:
            continue
        # Compared without the prefix, which every name shares.
        names = [name.upper() for name in Settings.model_fields]
        near = difflib.get_close_matches(variable.upper()[len(PREFIX) :], names, n=1, cutoff=0.6)
        hint = f"did you mean {PREFIX}{near[0]}?" if near else "fcn-serve --help lists the settings"
        problems.append(f"{variable} is not a setting ({hint})")
    if problems:
        raise UnknownSettingError("; ".join(problems))


def _split(value: object) -> object:
    """Accept ``a,b`` as well as a JSON-style list from the environment."""
    if isinstance(value, str):
        text = value.strip().strip("[]")
        return [part.strip().strip("\"'") for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the service; the environment variable is ``FCN_`` + the upper-case name."""

    model_config = SettingsConfigDict(env_prefix="FCN_", extra="ignore", frozen=True)

    # The model and where it runs.
    model_path: Path = Field(description="The schema-1 ONNX file to serve (required).")
    model_name: str = Field("", description="Name reported to clients; default: file stem.")
    providers: Annotated[tuple[str, ...], NoDecode] = Field(
        ("CUDAExecutionProvider", "CPUExecutionProvider"),
        description="Execution providers in order of preference: tensorrt, cuda, cpu.",
    )
    runtime: Literal["auto", "onnxruntime", "openvino"] = Field(
        "auto",
        description="auto: ONNX Runtime where a GPU provider runs, else OpenVINO on the CPU "
        "where installed, else ONNX Runtime; onnxruntime; openvino (CPU).",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 on OpenVINO where the CPU has native bf16, else fp32; fp32; "
        "bf16 (OpenVINO only; refused on a CPU without it).",
    )
    require_gpu: bool = Field(False, description="Refuse to start when no GPU provider runs.")
    device_id: int = Field(0, ge=0, description="CUDA / TensorRT device ordinal.")
    gpu_mem_limit_mb: int = Field(
        4096, ge=0, description="Upper bound of the CUDA memory arena in MiB (0: no bound)."
    )
    cudnn_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = Field(
        "HEURISTIC", description="cuDNN algorithm search; EXHAUSTIVE re-tunes every new shape."
    )
    trt_fp16: bool = Field(False, description="Let TensorRT build fp16 engines.")
    trt_cache_dir: Path | None = Field(None, description="Where TensorRT caches its engines.")
    intra_op_threads: int = Field(
        0, ge=0, description="CPU threads per inference (0: the CPUs this process may use)."
    )
    warmup_sizes: Annotated[tuple[tuple[int, int], ...], NoDecode] = Field(
        ((375, 500),),
        description="HxW sizes run once at start-up, comma separated; empty: no warm-up.",
    )

    # Batching and limits.
    max_batch_size: int = Field(
        0, ge=0, description="Most requests per batch (0: 1 on CPU, 8 on a GPU provider)."
    )
    max_delay_ms: float = Field(
        5.0,
        ge=0,
        description="Longest a batch waits for admitted requests still on their way to the "
        "queue (uploading or decoding).",
    )
    max_queue: int = Field(
        64,
        ge=1,
        description="Requests in the service at once, from before their upload is read until "
        "they are answered; beyond it: 503, the upload unread (as many more wait for a place "
        "while uploads hold some).",
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Budget from body received to labels ready; beyond it: 504."
    )
    max_upload_bytes: int = Field(64 * 2**20, ge=1, description="Largest request body.")
    upload_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Longest a body may take to arrive once its place is taken (a request "
        "waits in line for a place that uploads hold up to this and 1 s more); beyond it: 408, "
        "the connection closed.",
    )
    upload_min_rate: float = Field(
        1024.0,
        ge=0,
        description="After FCN_UPLOAD_GRACE_S, a body must keep arriving at this many bytes a "
        "second on average; below it: 408, the connection closed (0: no floor).",
    )
    upload_grace_s: float = Field(
        5.0, ge=0, description="Seconds of an upload before FCN_UPLOAD_MIN_RATE applies."
    )
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=1,
        description="Largest image decoded, width x height; images decoding or encoding at "
        "once hold at most this many pixels together.",
    )
    max_model_pixels: int = Field(
        DEFAULT_MAX_MODEL_PIXELS,
        ge=1,
        description="Largest (H + 200) x (W + 200) of one pass at the model, after max_side: "
        "conv1 pads every side by 100, and memory follows the padded area. Larger images "
        "are cut into tiles of at most this size.",
    )
    max_tiled_pixels: int = Field(
        0,
        ge=0,
        description="Most pixels of tiled images in the service at once, from decoding to "
        "encoding (one image alone may reach FCN_MAX_PIXELS; 0: FCN_MAX_PIXELS).",
    )
    max_batch_pixels: int = Field(
        0, ge=0, description="Most padded pixels in one batch (0: FCN_MAX_MODEL_PIXELS)."
    )
    max_side: int = Field(
        0, ge=0, description="Segment larger images at this longest side (0: full size)."
    )
    tiling: TileMode = Field(
        "auto",
        description="auto: tile images too large for one pass; always; never (413 instead).",
    )
    tile_size: int = Field(
        0,
        ge=0,
        description="Longest tile side (0: the largest that FCN_MAX_MODEL_PIXELS allows).",
    )
    tile_overlap: int = Field(
        DEFAULT_OVERLAP,
        ge=0,
        description="Pixels shared by neighbouring tiles; /v1/model reports the overlap at "
        "which tiled labels equal whole-image ones.",
    )

    # Responses.
    default_format: Format = Field("png", description="Format when neither ?format= nor Accept.")
    overlay_alpha: float = Field(
        DEFAULT_ALPHA, ge=0, le=1, description="Default weight of class colours."
    )
    jpeg_quality: int = Field(JPEG_QUALITY, ge=1, le=95, description="Quality of JPEG overlays.")
    png_compress_level: int = Field(
        PNG_COMPRESS_LEVEL, ge=0, le=9, description="zlib level of PNG responses."
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After header of 503 responses.")

    # The process.
    host: str = Field("0.0.0.0", description="Address fcn-serve binds.")
    port: int = Field(8000, ge=0, le=65535, description="Port fcn-serve binds.")
    workers: int = Field(
        1,
        ge=1,
        description="Server processes: 1, the only value (probes and /metrics speak for the "
        "process that answers them); scale with containers or replicas.",
    )
    keep_alive_s: int = Field(
        75,
        ge=1,
        description="Idle keep-alive connections close after this; keep it longer than the "
        "load balancer's idle timeout (AWS ALB: 60 s).",
    )
    stuck_after_s: float = Field(
        0.0,
        ge=0,
        description="A batch running longer than this fails /livez, so the process is "
        "restarted (0: 4 x FCN_REQUEST_TIMEOUT_S).",
    )
    drain_delay_s: float = Field(
        0.0, ge=0, description="After SIGTERM, keep serving this long while /readyz says 503."
    )
    drain_timeout_s: float = Field(
        30.0, gt=0, description="Then, longest wait for queued and running requests."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Level of the service's log: debug, info, warning or error."
    )
    log_format: LogFormat = Field(
        "text", description="text (uvicorn's lines) or json (one JSON object per line)."
    )
    access_log: bool = Field(True, description="Log one line per request.")
    log_probes: bool = Field(
        False,
        description="Also log probes and /metrics that succeed (failed ones are always logged).",
    )

    @field_validator("providers", mode="before")
    @classmethod
    def _parse_providers(cls, value: object) -> object:
        return _split(value)

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names: list[str] = []
        for item in value:
            name = PROVIDER_ALIASES.get(item.lower(), item)
            if name not in KNOWN_PROVIDERS:
                choices = ", ".join(sorted(PROVIDER_ALIASES))
                raise ValueError(f"unknown execution provider {item!r}; use {choices}")
            if name not in names:
                names.append(name)
        if not names:
            raise ValueError("name at least one execution provider")
        return tuple(names)

    @field_validator("workers")
    @classmethod
    def _one_worker(cls, value: int) -> int:
        if value != 1:
            raise ValueError(
                f"{value} server processes in one container would each answer /readyz, "
                "/livez and /metrics for itself alone, chosen by chance per connection (a "
                "stuck one is rarely seen); run one per container and scale with containers "
                "or replicas"
            )
        return value

    @field_validator("warmup_sizes", mode="before")
    @classmethod
    def _parse_sizes(cls, value: object) -> object:
        items = _split(value)
        if not isinstance(items, (list, tuple)):
            return items
        sizes: list[object] = []
        for item in items:
            if not isinstance(item, str):
                sizes.append(item)
                continue
            match = SIZE.match(item)
            if match is None:
                raise ValueError(f"warm-up size {item!r} is not HxW, e.g. 375x500")
            sizes.append((int(match[1]), int(match[2])))
        return sizes

    @field_validator("warmup_sizes")
    @classmethod
    def _positive_sizes(cls, value: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        for height, width in value:
            if height < 1 or width < 1:
                raise ValueError(f"warm-up size {height}x{width} must be at least 1x1")
        return value

    @property
    def name(self) -> str:
        """The model's public name."""
        return self.model_name or self.model_path.stem

    @property
    def batch_pixels(self) -> int:
        """The padded pixels one batch may hold."""
        return self.max_batch_pixels or self.max_model_pixels

    @property
    def tiled_pixels(self) -> int:
        """The image pixels tiled requests may hold together."""
        return self.max_tiled_pixels or self.max_pixels

    @property
    def line_wait_s(self) -> float:
        """Longest a request waits in line for a place that uploads hold: one upload timeout,
        and a second more, so that the uploads it waits for are cut off before it gives up."""
        return self.upload_timeout_s + 1.0

    @property
    def stuck_s(self) -> float:
        """Seconds after which a running batch counts as stuck."""
        return self.stuck_after_s or 4 * self.request_timeout_s
