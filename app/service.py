"""The running service: the loaded model, the face stage, the batcher, readiness, admission,
and the two operations, `verify` and `embed`, that the routes, the in-process benchmark
(bench/load.py) and the tests all call: images → decode → detect/align → encode →
distance → verdict. The encoding happens in the face worker processes on the CPU (each
encodes the face it aligned), else in the dynamic batcher (a GPU, `detect=false` crops).

Start-up order (driven by the app's lifespan, app/main.py):
1. `load()` (blocking, in a thread): resolve the device, check the weights against their
   model card (sha256) and read their preprocessing spec (model/encoder/weights.py), start the
   encoder (the int8 graph in ONNX Runtime on the CPU, app/inference.py, with no torch; else
   the torch module, app/torch_runner.py), build the face pipeline. Any failure raises `StartupError` and the process exits non-zero.
2. `start()`: start the batcher. The server now answers /health/live; /health/ready and the
   inference routes answer 503 not_ready.
3. `warm_up()` (in the background): one detection pass and encoder passes at batch sizes 1,
   2 and max; then ready.
Shutdown: not ready at once (load balancers stop sending), then the batcher drains its queue.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.admission import GateFull, LifoGate
from app.batcher import BatcherClosed, DynamicBatcher, Overloaded
from app.config import Settings
from app.errors import ServiceError
from app.faces import FaceStage
from app.gallery.threshold import IdentifyThresholds
from app.inference import EncoderError, open_encoder, serving_device
from app.intake import BodyBytes, BodyLimits
from app.metrics import BatchObserverAdapter, Metrics

log = logging.getLogger("faceverify.service")


class StartupError(RuntimeError):
    """The service cannot start (weights missing/corrupt, no threshold, device absent)."""


def ms(seconds: float) -> float:
    """Seconds as the milliseconds of a reply's `timings_ms`."""
    return round(seconds * 1000, 3)


@dataclass
class Embedded:
    """Unit embeddings of the images' faces, in the order the images were given."""

    embeddings: np.ndarray  # (n, d) float32
    faces: list  # model.face.pipeline.AlignedFace, one per image
    timings_ms: dict[str, float]  # decode, detect, queue, encode, batch_size


@dataclass
class Verdict:
    """Are two faces the same person: `distance < threshold`."""

    verified: bool
    distance: float  # Euclidean, between unit embeddings: [0, 2]
    similarity: float  # cosine, 1 - distance² / 2
    threshold: float
    faces: list
    timings_ms: dict[str, float]


class Service:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.card: dict[str, Any] | None = None
        self.runner = None  # app.inference.OnnxRunner or app.torch_runner.TorchRunner
        self.faces: FaceStage | None = None
        self.batcher: DynamicBatcher | None = None
        self.device: str | None = None  # cpu | cuda | cuda:N
        self.threshold: float | None = None
        self.max_client_threshold: float | None = None
        self.identify_thresholds: IdentifyThresholds | None = None
        self.gallery = None  # app.gallery.service.GalleryService, when galleries are on
        self.model_ref: dict[str, str] = {}
        self.ready = False
        self.warmup_error: str | None = None
        self.in_flight = 0
        self.gate: LifoGate | None = None  # admission, sized in load() (the face stage's)
        self.in_face_stage = 0  # requests in the face stage: the cores are wanted there
        self.preparing = 0  # of those, the ones whose faces will join a batch
        self.body_bytes = BodyBytes(settings.max_body_bytes_in_flight, settings.retry_after_s)
        self.body_limits = BodyLimits(settings.max_upload_bytes, settings.body_timeout_s,
                                      settings.min_body_rate, settings.body_rate_grace_s)

    # -- start-up ------------------------------------------------------------------------
    def load(self) -> None:
        from model.face.pipeline import FacePipeline, detector_for

        s = self.settings
        t0 = time.perf_counter()
        try:
            device = serving_device(s.device)
            encoder = open_encoder(s.weights, device, int8=s.int8, runtime=s.runtime,
                                   precision=s.precision, fp16_tolerance=s.fp16_tolerance,
                                   threads=s.torch_threads)
        except EncoderError as exc:
            raise StartupError(str(exc)) from None
        card, spec = encoder.card, encoder.spec
        threshold = s.threshold
        if threshold is None:
            threshold = (card.get("threshold") or {}).get("value")
            if threshold is None:
                raise StartupError("the model card has no calibrated threshold; calibrate it "
                                   "(python -m model.evaluate --write-card) or set "
                                   "FACEVERIFY_THRESHOLD")
        self.device = device
        self.card = card
        self.threshold = float(threshold)
        # rounded down to 4 decimals, so the limit an error message quotes is itself allowed
        cap = float(s.max_client_threshold or (card.get("threshold") or {}).get("at_far_1e-2")
                    or self.threshold)
        self.max_client_threshold = max(self.threshold, math.floor(cap * 1e4) / 1e4)
        self.identify_thresholds = IdentifyThresholds.from_card(
            card, s, self.threshold, self.max_client_threshold)
        self.model_ref = encoder.model_ref
        self.runner = encoder.runner
        # while requests are in the face stage, the encoder leaves them the other core
        self.runner.share_cores_with(lambda: self.in_face_stage > 0)
        detect_device = s.detect_device or str(device)
        try:
            pipeline = FacePipeline(device=detect_device, spec=spec,
                                    face_choice=s.face_choice, detector=s.detector,
                                    orient=s.orient)
        except (OSError, ValueError) as exc:  # the detector's or landmark model's file
            raise StartupError(f"cannot build the face pipeline for preprocessing "
                               f"{spec.version!r}: {exc}") from None
        processes = None
        on_cpu = pipeline.detector.name == "yunet" or detect_device == "cpu"
        if s.detect_pool == "process" or (s.detect_pool == "auto" and on_cpu):
            from app.faces import PipelineConfig
            # the workers also encode when the encoder is an ONNX graph (on the CPU)
            processes = PipelineConfig(spec, s.face_choice, detector_for(spec, s.detector),
                                       encoder_graph=self.runner.onnx_graph
                                       if s.encode_in_detect_workers else None,
                                       orient=s.orient)
        self.faces = FaceStage(pipeline, s.detect_workers, s.max_pixels,
                               on_no_face=self.metrics.faces_not_found.inc,
                               decode_min_side=s.decode_min_side or None,
                               max_wait_s=(s.max_detect_wait_ms / 1000
                                           if s.max_detect_wait_ms else None),
                               retry_after_s=s.retry_after_s, processes=processes)
        # By default one request per face worker when the workers encode (a request's work
        # is all there; docs/benchmarks.md, 0.6: 64 clients, p50 of the 200s 55 ms with 3
        # slots, 35 ms with 2; 16 clients the same within noise), else one more for the
        # encoder.
        slots = s.active_requests or s.detect_workers + (0 if self.faces.encodes else 1)
        self.gate = LifoGate(slots, s.max_detect_wait_ms / 1000 if s.max_detect_wait_ms
                             else None)
        if s.gallery_enabled:
            self.gallery = self._open_gallery(self.runner.embedding_dim)
        log.info("model loaded", extra={
            "weights": str(s.weights), "model_name": self.model_ref["name"],
            "model_version": self.model_ref["version"],
            "weights_sha256": self.model_ref["sha256"], "device": str(device),
            "detect_device": detect_device, "detector": s.detector,
            "threshold": self.threshold,
            "max_client_threshold": self.max_client_threshold,
            "embedding_dim": self.runner.embedding_dim, "preprocessing": spec.version,
            "landmarks_code": pipeline.landmarks_code,
            "encode_in_detect_workers": self.faces.encodes,
            "runtime": self.runner.runtime,
            "load_ms": round((time.perf_counter() - t0) * 1000, 1)})

    def _open_gallery(self, dim: int):
        from app.gallery.service import GalleryService
        from app.gallery.store import StoreError, open_store
        s = self.settings
        try:
            gallery = GalleryService(self, open_store(s.gallery_url),
                                     store_crops=s.gallery_store_crops,
                                     sync_interval_s=s.gallery_sync_interval_s,
                                     max_staleness_s=s.gallery_max_staleness_s)
            gallery.load(dim, self.model_ref["sha256"])
        except StoreError as exc:
            raise StartupError(f"cannot open the gallery store: {exc}") from None
        return gallery

    def start(self) -> None:
        s = self.settings
        if self.gallery is not None:
            self.gallery.start()
        self.batcher = DynamicBatcher(
            self.runner, max_batch_size=s.max_batch_size,
            max_delay_s=s.max_batch_delay_ms / 1000, max_queue=s.max_queue,
            retry_after=s.retry_after_s, observer=BatchObserverAdapter(self.metrics),
            # a group can still come only from a request in the face stage (queued groups
            # are taken into the batch at once)
            more_coming=lambda groups: self.preparing > 0)
        self.batcher.start()

    def warm_up(self) -> None:
        t0 = time.perf_counter()
        self.faces.warm_up()
        sizes = sorted({1, 2, self.settings.max_batch_size})
        self.runner.warm_up(sizes)
        log.info("warmed up", extra={"warmup_ms": round((time.perf_counter() - t0) * 1000, 1),
                                     "precision": self.runner.precision})

    async def warm_up_then_ready(self) -> None:
        try:
            if self.settings.warmup:
                await asyncio.to_thread(self.warm_up)
        except Exception as exc:
            self.warmup_error = f"{type(exc).__name__}: {exc}"
            log.exception("warm-up failed; the service stays not ready")
            return
        self.metrics.set_model(self.model_ref["name"], self.model_ref["version"],
                               str(self.device), self.runner.precision,
                               self.model_ref["sha256"], runtime=self.runner.runtime,
                               preprocessing=self.runner.spec.version)
        self.ready = True
        self.metrics.ready.set(1)
        log.info("ready")

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        if self.batcher is not None:
            await self.batcher.stop(drain=True)
        if self.faces is not None:
            await asyncio.to_thread(self.faces.shutdown)
        if self.gallery is not None:
            await asyncio.to_thread(self.gallery.stop)

    # -- per request ---------------------------------------------------------------------
    def require_ready(self) -> None:
        if not self.ready:
            message = ("warm-up failed; see the server log" if self.warmup_error
                       else "the service is starting up or shutting down; retry later")
            raise ServiceError("not_ready", message,
                               headers={"Retry-After": str(self.settings.retry_after_s)})

    def check_threshold(self, threshold: float | None, default: float | None = None) -> float:
        """The threshold a request gets: its own, up to `max_client_threshold`, or the
        service's (`default`, else the verdict threshold). A caller may tighten the verdict
        freely but loosen it only so far."""
        if threshold is None:
            return self.threshold if default is None else default
        if threshold > self.max_client_threshold:
            raise ServiceError("validation_error", f"threshold: {threshold:g} is looser than "
                               f"this server allows (at most {self.max_client_threshold:g})",
                               "threshold")
        return threshold

    async def embed_images(self, images: dict[str, bytes], detect: bool = True,
                           keep_crops: bool = True) -> Embedded:
        """Decode, detect and align each image's face, and encode them in one batch with
        other requests' faces, inside one of the `active_requests` slots; or, when the
        face workers encode (`FaceStage.encodes`, detect=true), take their embeddings.
        keep_crops=False: the faces may come without their crops (the reply does not show
        them, the gallery does not store them)."""
        in_workers = detect and self.faces.encodes
        async with self.admit():
            joins_batch = not in_workers
            self.in_face_stage += 1
            self.preparing += joins_batch
            try:
                prepared = await self.faces.prepare(images, detect, keep_crops)
            finally:
                self.in_face_stage -= 1
                self.preparing -= joins_batch
            if prepared.embeddings is not None:
                embeddings, queue_s, encode_s, batch_size = (
                    prepared.embeddings, 0.0, prepared.encode_s, 1)
                self.metrics.stage_duration.labels(stage="encode").observe(encode_s)
            else:
                result = await self._batched(prepared.faces)
                embeddings, queue_s, encode_s, batch_size = (
                    result.output, result.queue_s, result.inference_s, result.batch_size)
        self.metrics.stage_duration.labels(stage="decode").observe(prepared.decode_s)
        self.metrics.stage_duration.labels(stage="detect").observe(prepared.detect_s)
        return Embedded(embeddings, prepared.faces, {
            "detect_wait": ms(prepared.wait_s),
            "decode": ms(prepared.decode_s), "detect": ms(prepared.detect_s),
            "queue": ms(queue_s), "encode": ms(encode_s), "batch_size": batch_size})

    async def _batched(self, faces: list):
        """The faces' crops through the dynamic batcher (its result: output, timings)."""
        crops = np.stack([f.crop for f in faces])
        try:
            return await self.batcher.submit(crops)
        except Overloaded as exc:
            raise ServiceError("overloaded", str(exc),
                               headers={"Retry-After": str(exc.retry_after)}) from None
        except BatcherClosed:
            raise ServiceError("not_ready", "the service is shutting down; retry later",
                               headers={"Retry-After": str(self.settings.retry_after_s)}
                               ) from None

    async def verify(self, image1: bytes, image2: bytes, detect: bool = True,
                     threshold: float | None = None, keep_crops: bool = True) -> Verdict:
        """The verdict on two images' faces, at the request's threshold (up to the cap) or
        the service's. A threshold beyond the cap fails before any work is done."""
        threshold = self.check_threshold(threshold)
        out = await self.embed_images({"image1": image1, "image2": image2}, detect,
                                      keep_crops)
        e = out.embeddings.astype(np.float64)
        distance = float(np.linalg.norm(e[0] - e[1]))
        similarity = max(-1.0, min(1.0, float(e[0] @ e[1])))
        return Verdict(distance < threshold, distance, similarity, threshold, out.faces,
                       out.timings_ms)

    async def embed(self, image: bytes, detect: bool = True, keep_crops: bool = True
                    ) -> Embedded:
        """One image's face as a unit embedding."""
        out = await self.embed_images({"image": image}, detect, keep_crops)
        if not np.isfinite(out.embeddings).all():
            raise RuntimeError("encoder produced a non-finite embedding")
        return out

    @contextlib.asynccontextmanager
    async def admit(self):
        """One of the `active_requests` slots for the request's work (its images, crops,
        embeddings), taken once its body is in: the newest waiter gets the next free slot,
        and one that waited `max_detect_wait_ms` in vain gets 503 (app/admission.py).
        Beyond `max_concurrent_requests` waiting or worked on, 503 at once."""
        if self.in_flight >= self.settings.max_concurrent_requests:
            raise ServiceError("overloaded",
                               f"too many requests in progress ({self.in_flight}); retry later",
                               headers={"Retry-After": str(self.settings.retry_after_s)})
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        try:
            try:
                async with self.gate.slot():
                    yield
            except GateFull:
                raise ServiceError(
                    "overloaded", f"no free slot within {self.settings.max_detect_wait_ms:g} ms "
                    f"({self.gate.slots} requests being worked on); retry later",
                    headers={"Retry-After": str(self.settings.retry_after_s)}) from None
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)
