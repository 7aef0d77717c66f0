"""What one app holds: the settings, metrics, health state, and the model once loaded."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Literal, TypeVar

import anyio.to_thread

from contract.decode import guard_bombs
from contract.tiling import TilingError, padded_pixels
from service.batching import Batcher
from service.budget import PixelBudget
from service.config import Settings
from service.cpus import available_cpus
from service.errors import NotReadyError, StartupError
from service.metrics import Metrics
from service.pipeline import Segmenter
from service.request import Upload
from service.runtime import Runtime, load_runtime

logger = logging.getLogger("fcn.service")

# On CPU a batch costs more per image than single runs (about 8% for FCN-8s at 500x375 on
# two cores: BENCHMARKS.md); a GPU gains from batches.
CPU_BATCH_SIZE = 1
GPU_BATCH_SIZE = 8
# Image decodes and encodes at once, per CPU: more only add memory, not speed.
IMAGE_WORK_PER_CPU = 2
# Runs up to this many times a full batch of the largest warm-up size (padded) keep ONNX
# Runtime's arena for the next run; larger ones give their memory back (Runtime).
ARENA_KEEP_FACTOR = 4
DEFAULT_SIZE = (375, 500)  # a PASCAL VOC image, when no warm-up size is given

T = TypeVar("T")

State = Literal["loading", "warming_up", "ready", "draining", "failed"]


@dataclass
class Health:
    """Where the service is in its life; /readyz is 200 only when ``ready``."""

    state: State = "loading"
    reason: str = "loading the model"

    def set(self, state: State, reason: str) -> None:
        """Move to ``state``, saying why."""
        self.state, self.reason = state, reason

    @property
    def ready(self) -> bool:
        """Whether load balancers should send traffic here."""
        return self.state == "ready"

    @property
    def alive(self) -> bool:
        """False only when the model failed after start-up: restart the process."""
        return self.state != "failed"

    def check_serving(self, retry_after_s: int) -> None:
        """Refuse segmentation (503) until warm; draining instances still finish their work."""
        if self.state in ("loading", "warming_up", "failed"):
            raise NotReadyError(
                f"the model is not ready ({self.reason})",
                headers={"Retry-After": str(retry_after_s)},
            )


def default_batch_size(on_gpu: bool) -> int:
    """The batch size used when FCN_MAX_BATCH_SIZE is 0."""
    return GPU_BATCH_SIZE if on_gpu else CPU_BATCH_SIZE


def arena_keep_pixels(warmup_sizes: tuple[tuple[int, int], ...], batch_size: int) -> int:
    """Padded pixels of the largest run that keeps ONNX Runtime's arena afterwards."""
    usual = max(padded_pixels(h, w) for h, w in warmup_sizes or (DEFAULT_SIZE,))
    return ARENA_KEEP_FACTOR * batch_size * usual


def _loaded(part: T | None, reason: str) -> T:
    """``part`` once start-up made it; before that, 503."""
    if part is None:
        raise NotReadyError(f"the model is not loaded ({reason})")
    return part


class Service:
    """Everything one app holds; the parts that need the model exist after start-up."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.health = Health()
        cut_off = self.metrics.uploads_cut_off
        self.upload = Upload(
            settings.max_upload_bytes,
            settings.upload_timeout_s,
            min_rate=settings.upload_min_rate,
            grace_s=settings.upload_grace_s,
            cut_off=lambda reason: cut_off.labels(reason).inc(),
        )
        self._runtime: Runtime | None = None
        self._batcher: Batcher | None = None
        self._segmenter: Segmenter | None = None
        self.startup_error: StartupError | None = None

    @property
    def runtime(self) -> Runtime:
        """The loaded model (503 before start-up finished)."""
        return _loaded(self._runtime, self.health.reason)

    @property
    def batcher(self) -> Batcher:
        """The batcher (503 before start-up finished)."""
        return _loaded(self._batcher, self.health.reason)

    @property
    def segmenter(self) -> Segmenter:
        """The pipeline (503 before start-up finished)."""
        return _loaded(self._segmenter, self.health.reason)

    def liveness(self) -> tuple[bool, str, str]:
        """(alive, state, reason) for /livez: dead after a failed warm-up or while a batch
        has run longer than FCN_STUCK_AFTER_S (an ONNX Runtime call that never returns)."""
        running = self._batcher.running_for() if self._batcher is not None else 0.0
        if running > self.settings.stuck_s:
            limit = self.settings.stuck_s
            return False, "stuck", f"a batch has run {running:.0f} s (limit {limit:g} s)"
        return self.health.alive, self.health.state, self.health.reason

    async def start(self) -> None:
        """Load the model (fatal errors raise StartupError) and start the batcher."""
        s = self.settings
        guard_bombs(s.max_pixels)
        # One server process per container (FCN_WORKERS is 1): it takes the CPUs it is allowed.
        cpus = available_cpus()
        runtime = await anyio.to_thread.run_sync(
            partial(
                load_runtime,
                s.model_path,
                name=s.name,
                providers=s.providers,
                require_gpu=s.require_gpu,
                device_id=s.device_id,
                gpu_mem_limit_mb=s.gpu_mem_limit_mb,
                cudnn_conv_algo_search=s.cudnn_conv_algo_search,
                trt_fp16=s.trt_fp16,
                trt_cache_dir=s.trt_cache_dir,
                intra_op_threads=s.intra_op_threads or cpus,
                runtime=s.runtime,
                precision=s.precision,
            )
        )
        batch_size = s.max_batch_size or default_batch_size(runtime.on_gpu)
        runtime.keep_pixels = arena_keep_pixels(s.warmup_sizes, batch_size)
        batcher = Batcher(
            runtime.run,
            max_batch_size=batch_size,
            max_batch_pixels=s.batch_pixels,
            max_delay_s=s.max_delay_ms / 1000,
            max_queue=s.max_queue,
            retry_after_s=s.retry_after_s,
            metrics=self.metrics,
            abort=runtime.terminate,
        )
        batcher.start()
        self.metrics.batch_running_seconds.set_function(batcher.running_for)
        self._segmenter = Segmenter(
            runtime.info,
            batcher,
            self.metrics,
            PixelBudget(s.max_pixels, IMAGE_WORK_PER_CPU * cpus),
            tiled_budget=PixelBudget(s.tiled_pixels, s.max_queue),
            max_pixels=s.max_pixels,
            max_model_pixels=s.max_model_pixels,
            request_timeout_s=s.request_timeout_s,
            jpeg_quality=s.jpeg_quality,
            png_compress_level=s.png_compress_level,
        )
        try:
            self._segmenter.check_tiling(s.tile_size, s.tile_overlap)
        except TilingError as exc:
            await batcher.stop(0)
            name = f"FCN_{exc.parameter.upper()}"
            raise StartupError(f"{name}={getattr(s, exc.parameter)}: {exc}") from None
        self._runtime, self._batcher = runtime, batcher
        info = runtime.info
        self.metrics.provider.labels(
            runtime.provider, ",".join(runtime.requested), info.name, info.version
        ).set(1)
        self.metrics.runtime.labels(runtime.runtime, runtime.device, runtime.precision).set(1)

    async def warm_up(self) -> None:
        """Run the warm-up sizes on the inference thread, then declare the service ready."""
        sizes = self.settings.warmup_sizes
        self.health.set("warming_up", f"warming up on {len(sizes)} size(s)")
        try:
            seconds = await self.batcher.call(partial(self.runtime.warm_up, sizes))
        except Exception as exc:
            logger.exception("warm-up failed")
            self.health.set("failed", f"warm-up failed: {type(exc).__name__}: {exc}")
            return
        shown = ", ".join(f"{h}x{w}" for h, w in sizes) or "no sizes"
        logger.info("warm-up (%s) took %.2f s; ready", shown, seconds)
        if self.health.state == "warming_up":  # not if a SIGTERM came meanwhile
            self.health.set("ready", "serving")
            self.metrics.ready.set(1)

    def drain(self) -> None:
        """Turn readiness off: load balancers stop sending, requests in flight go on."""
        if self.health.state != "draining":
            logger.info("draining: /readyz now answers 503")
        self.health.set("draining", "shutting down")
        self.metrics.ready.set(0)

    async def stop(self) -> None:
        """Finish queued and running requests within the drain timeout, then stop."""
        self.drain()
        if self._batcher is not None:
            await self._batcher.stop(self.settings.drain_timeout_s)
