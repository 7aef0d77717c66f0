"""Prometheus metrics of one app, in a registry of its own (so one process can hold many apps),
with the process's own series (memory, CPU, file descriptors, GC, Python version)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

# Seconds: from sub-millisecond encodes of tiny images to multi-second CPU inference.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
STAGES = ("decode", "queue", "inference", "encode")
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    """The service's metrics; ``render()`` gives the Prometheus text exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        # process_* (resident memory, CPU seconds, open fds, start time; Linux /proc),
        # python_gc_* and python_info: the process's, so with one server process per
        # container (FCN_WORKERS is 1) the whole instance's.
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        PlatformCollector(registry=registry)
        self.requests = Counter(
            "fcn_requests",
            "Segmentation requests answered, by HTTP status and response format.",
            ["status", "format"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "fcn_request_duration_seconds",
            "Time from request start to response, segmentation requests only.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "fcn_stage_duration_seconds",
            "Time a request spent in each stage: decode, queue, inference (its batch), encode.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        self.batch_size = Histogram(
            "fcn_batch_size",
            "Images per ONNX Runtime call.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "fcn_queue_depth",
            "Requests waiting for the model (not yet in a running batch).",
            registry=registry,
        )
        self.admitted = Gauge(
            "fcn_requests_admitted",
            "Requests holding a place in the service (FCN_MAX_QUEUE at most): from before "
            "their upload is read until they are answered.",
            registry=registry,
        )
        self.uploading = Gauge(
            "fcn_requests_uploading",
            "Admitted requests whose body is still coming in: their places are reserved, not "
            "yet held.",
            registry=registry,
        )
        self.awaiting_place = Gauge(
            "fcn_requests_awaiting_place",
            "Requests waiting for a place that uploads hold (FCN_MAX_QUEUE at most), their "
            "bodies unread.",
            registry=registry,
        )
        self.uploads_cut_off = Counter(
            "fcn_uploads_cut_off",
            "Requests answered 408 and closed because their body did not arrive in time: "
            "timeout (FCN_UPLOAD_TIMEOUT_S) or too_slow (below FCN_UPLOAD_MIN_RATE).",
            ["reason"],
            registry=registry,
        )
        for reason in ("timeout", "too_slow"):
            self.uploads_cut_off.labels(reason)
        self.body_bytes = Counter(
            "fcn_request_body_bytes",
            "Request body bytes the app has read; a request refused before its body adds none.",
            registry=registry,
        )
        self.tiled_requests = Counter(
            "fcn_tiled_requests",
            "Requests whose image was too large for one pass (or ?tile=always) and was cut "
            "into tiles.",
            registry=registry,
        )
        self.tiles = Counter(
            "fcn_tiles", "Tiles of tiled requests run at the model.", registry=registry
        )
        self.batches_running = Gauge(
            "fcn_batches_running", "ONNX Runtime calls in progress.", registry=registry
        )
        self.dropped = Counter(
            "fcn_requests_dropped",
            "Requests dropped before reaching the model, by reason.",
            ["reason"],
            registry=registry,
        )
        self.busy_seconds = Counter(
            "fcn_inference_busy_seconds",
            "Seconds ONNX Runtime spent running batches (its rate is the model's utilisation).",
            registry=registry,
        )
        self.batch_failures = Counter(
            "fcn_batch_failures", "ONNX Runtime calls that raised.", registry=registry
        )
        self.batches_aborted = Counter(
            "fcn_batches_aborted",
            "ONNX Runtime calls stopped early because every request of the batch gave up.",
            registry=registry,
        )
        self.batch_running_seconds = Gauge(
            "fcn_batch_running_seconds",
            "How long the running ONNX Runtime call has been running (0: none runs).",
            registry=registry,
        )
        self.provider = Gauge(
            "fcn_provider_info",
            "The execution provider in use (1) and the model it serves.",
            ["provider", "requested", "model", "version"],
            registry=registry,
        )
        self.runtime = Gauge(
            "fcn_runtime_info",
            "The runtime, device and precision in use (1), as the runtime reports them.",
            ["runtime", "device", "precision"],
            registry=registry,
        )
        self.ready = Gauge("fcn_ready", "1 when /readyz answers 200.", registry=registry)

    def render(self) -> bytes:
        """The Prometheus text exposition of this app's registry."""
        return generate_latest(self.registry)
