"""Prometheus metrics, in a registry of their own per app instance (tests build many apps)."""
from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# No `*_created` series: they double the output and nothing here reads them.
disable_created_metrics()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
                   30.0)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    b, out = 1, []
    while b < max_batch_size:
        out.append(float(b))
        b *= 2
    out.append(float(max_batch_size))
    return tuple(out)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch_size: int = 32):
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("faceverify_requests", "HTTP requests by route and status.",
                                ["route", "status"], registry=r)
        self.request_duration = Histogram(
            "faceverify_request_duration_seconds", "HTTP request latency by route.", ["route"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.stage_duration = Histogram(
            "faceverify_stage_duration_seconds",
            "Time per request in each stage (read, decode, detect; encode when the face "
            "workers encode).", ["stage"],
            buckets=FAST_BUCKETS + (10.0,), registry=r)
        self.batch_size = Histogram("faceverify_batch_size", "Faces per encoder forward pass.",
                                    buckets=batch_buckets(max_batch_size), registry=r)
        self.queue_wait = Histogram("faceverify_queue_wait_seconds",
                                    "Time a face waited in the batcher queue.",
                                    buckets=FAST_BUCKETS, registry=r)
        self.inference = Histogram("faceverify_inference_seconds",
                                   "Encoder forward pass time per batch.",
                                   buckets=FAST_BUCKETS, registry=r)
        self.batch_errors = Counter("faceverify_batch_errors",
                                    "Encoder forward passes that raised.", registry=r)
        self.queue_depth = Gauge("faceverify_queue_depth", "Faces waiting for the encoder.",
                                 registry=r)
        self.in_flight = Gauge("faceverify_requests_in_flight",
                               "/verify and /embed requests being processed.", registry=r)
        self.faces_not_found = Counter("faceverify_faces_not_found",
                                       "Images in which no face was detected.", registry=r)
        self.model_info = Gauge("faceverify_model_info", "The loaded model (value is 1).",
                                ["name", "version", "device", "precision", "runtime",
                                 "preprocessing", "sha256"],
                                registry=r)
        self.ready = Gauge("faceverify_ready", "1 when warmed up and serving.", registry=r)
        self.gallery_vectors = Gauge("faceverify_gallery_vectors",
                                     "Enrolled faces held in memory for search (this model's).",
                                     registry=r)
        self.gallery_search = Histogram("faceverify_gallery_search_seconds",
                                        "Exact search of one identify (matrix product, top-k).",
                                        buckets=FAST_BUCKETS, registry=r)
        self.gallery_writes = Counter("faceverify_gallery_writes",
                                      "Gallery writes committed by this replica.", ["op"],
                                      registry=r)
        self.gallery_sync_age = Gauge(
            "faceverify_gallery_sync_age_seconds", "Seconds since this replica last read its "
            "gallery store's change log (identify answers 503 store_stale beyond "
            "FACEVERIFY_GALLERY_MAX_STALENESS_S).", registry=r)

    # BatchObserver protocol (app/batcher.py)
    def batch_done(self, size: int, inference_s: float, ok: bool) -> None:
        self.batch_size.observe(size)
        self.inference.observe(inference_s)
        if not ok:
            self.batch_errors.inc()

    def set_model(self, name: str, version: str, device: str, precision: str, sha256: str,
                  runtime: str = "torch", preprocessing: str = ""):
        self.model_info.clear()
        self.model_info.labels(name=name, version=version, device=device, precision=precision,
                               runtime=runtime, preprocessing=preprocessing,
                               sha256=sha256[:12]).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class BatchObserverAdapter:
    """Connects the batcher's hooks to the metrics."""

    def __init__(self, metrics: Metrics):
        self.m = metrics

    def batch_done(self, size: int, inference_s: float, ok: bool) -> None:
        self.m.batch_done(size, inference_s, ok)

    def queue_wait(self, seconds: float) -> None:
        self.m.queue_wait.observe(seconds)

    def queue_depth(self, items: int) -> None:
        self.m.queue_depth.set(items)
