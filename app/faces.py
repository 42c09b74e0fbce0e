"""Decode, detect/align (and on the CPU encode) uploaded images with model/'s pipeline, off
the event loop.

The blocking work (Pillow decoding, detection, alignment) runs in a pool of `detect_workers`
worker processes (or threads), so a slow image never stalls the event loop. Errors from
model/ become the contract's codes, tagged with the field name of the image they concern.

Processes by default, because the face path is many small numpy and ONNX Runtime calls that
each take the GIL: two detect threads, the event loop and the encoder's thread queue for it.
On the reference machine's two cores the same 400 LFW photos go through two worker
processes at 290 images/s against 188 through two threads (docs/benchmarks.md). Each worker
builds its own pipeline from the same spec at start (`PipelineConfig`) and warms it up; a
request's image bytes go in and its aligned face comes back. Given the encoder's ONNX graph
(`encode_in_detect_workers`), a worker also encodes the face (one thread) and sends back
its embedding, with the 150x150 crop (~70 KB) only when the caller asked for it. Threads
remain for detection on a GPU (MTCNN on CUDA) and for a pipeline object that cannot be
rebuilt elsewhere (tests).

Overload is shed on a queue-time budget: a request whose first image waited longer than
`max_wait_s` for a thread gets 503 when a thread takes it up (its other images are then
dropped unworked), so an accepted request's latency stays bounded instead of climbing with the
queue. The check is made when the work would start, not by a forecast at the door: a forecast
from recent job times rejected almost everything once rejections themselves (cheap, and
instantly retried by a closed-loop client) took the CPU and stretched the job times
(bench.wrk_load at 16 clients: 17 answers of 200 to 26,819 of 503).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace

import numpy as np

from app.errors import ServiceError
from model.face.imageio import (
    ImageTooLargeError,
    InvalidImageError,
    UnsupportedImageError,
    decode_reduced,
)
from model.face.pipeline import AlignedFace, FacePipeline, NoFaceError
from model.face.preprocess import PreprocessSpec

log = logging.getLogger("faceverify.faces")


@dataclass(frozen=True)
class PipelineConfig:
    """What a worker process needs to build the service's face pipeline (CPU detection) and,
    with `encoder_graph`, the encoder's ONNX graph to embed each face it aligns (one thread)."""

    spec: PreprocessSpec
    face_choice: str
    detector: str
    encoder_graph: bytes | None = None
    orient: bool = True

    def build(self) -> FacePipeline:
        return FacePipeline(device="cpu", spec=self.spec, face_choice=self.face_choice,
                            detector=self.detector, orient=self.orient)

    def __repr__(self) -> str:  # not the graph's bytes
        graph = f"{len(self.encoder_graph)} bytes" if self.encoder_graph else None
        return (f"PipelineConfig(spec={self.spec.version!r}, face_choice={self.face_choice!r}, "
                f"detector={self.detector!r}, encoder_graph={graph}, orient={self.orient})")


def decode_upload(name: str, data: bytes, max_pixels: int, min_side: int | None):
    """An upload decoded (reduced when large; the factor back to its pixels), or the
    contract's error for it."""
    try:
        return decode_reduced(data, max_pixels=max_pixels, min_side=min_side)
    except ImageTooLargeError as exc:
        raise ServiceError("payload_too_large", f"{name}: {exc}", name) from None
    except UnsupportedImageError as exc:
        raise ServiceError("unsupported_media_type", f"{name}: {exc}", name) from None
    except InvalidImageError as exc:
        raise ServiceError("invalid_image", f"{name}: {exc}", name) from None


# ------------------------------------------------------------------ in a worker process
_worker_pipeline: FacePipeline | None = None
_worker_encoder = None  # model.encoder.onnx_session.CropEncoder, when the config has a graph


def _init_worker(config: PipelineConfig) -> None:
    """A worker's start: its own pipeline (YuNet's needs no torch: ~150 MB less a worker),
    one thread for torch when the detector is MTCNN, the encoder's graph on one thread when
    given, one warm-up detection and encoding."""
    global _worker_pipeline, _worker_encoder
    import sys

    from PIL import Image
    _worker_pipeline = config.build()
    if "torch" in sys.modules:  # MTCNN: torch, on this worker's share of the cores
        sys.modules["torch"].set_num_threads(1)
    _worker_pipeline.detector.detect([Image.new("RGB", (160, 160), (128, 128, 128))])
    if config.encoder_graph is not None:
        from model.encoder.onnx_session import CropEncoder
        _worker_encoder = CropEncoder(config.encoder_graph, config.spec, threads=1)
        size = config.spec.crop_size
        _worker_encoder(np.zeros((1, size, size, 3), dtype=np.uint8))


def _job_in_worker(name: str, data: bytes, detect: bool, submitted: float,
                   max_wait_s: float | None, max_pixels: int, min_side: int | None,
                   keep_crop: bool = True) -> tuple:
    """One image, in a worker process. Returns ("ok", face, decode_s, detect_s, waited,
    embedding, encode_s) (embedding None unless the worker has the encoder and `detect`:
    already-aligned crops go to the batcher; with an embedding, the face's crop only with
    `keep_crop`: ~70 KB less through the pipe), ("overloaded", waited) when
    it waited past the budget, or ("error", code, message, field) (exceptions are answered
    as values: ServiceError does not pickle)."""
    t0 = time.monotonic()
    waited = t0 - submitted
    if max_wait_s is not None and waited > max_wait_s:
        return ("overloaded", waited)
    try:
        image, scale = decode_upload(name, data, max_pixels, min_side)
        t1 = time.monotonic()
        face = _worker_pipeline.align([image], detect=detect, fallback="raise")[0]
    except ServiceError as exc:
        return ("error", exc.code, exc.message, exc.field)
    except NoFaceError:
        return ("error", "no_face_detected", f"{name}: no face detected in the image", name)
    t2 = time.monotonic()
    embedding = None
    if _worker_encoder is not None and detect:
        embedding = _worker_encoder(face.crop[None])[0]
        if not keep_crop:
            face = replace(face, crop=None)
    return ("ok", face.scaled(scale), t1 - t0, t2 - t1, waited, embedding,
            time.monotonic() - t2)


@dataclass
class PreparedFaces:
    faces: list[AlignedFace]
    decode_s: float  # of the slowest image (images are prepared side by side)
    detect_s: float
    wait_s: float = 0.0  # until a detect thread took the request's first image
    # (n, d) float32 unit embeddings when the workers encoded the faces, else None (the
    # crops go to the batcher); encode_s is then the slowest image's forward pass
    embeddings: np.ndarray | None = None
    encode_s: float = 0.0


@dataclass
class _RequestJobs:
    """What a request's image jobs share (each flag is set once, under the GIL)."""

    submitted: float
    accepted: bool | None = None  # by the first job to start: within the queue-time budget?
    undecodable: bool = False  # an image failed to decode: the others stop
    faceless: bool = False  # an image has no face: the others are decoded, not detected


class _Dropped(Exception):
    """A job given up because a sibling image already decided the request's answer."""


class FaceStage:
    def __init__(self, pipeline: FacePipeline, workers: int, max_pixels: int,
                 on_no_face=None, decode_min_side: int | None = None,
                 max_wait_s: float | None = None, retry_after_s: int = 1,
                 processes: PipelineConfig | None = None):
        """processes: run the jobs in `workers` processes that build their pipeline from
        this config; None: in `workers` threads on `pipeline`."""
        self.pipeline = pipeline
        self.workers = workers
        self.max_pixels = max_pixels
        self.decode_min_side = decode_min_side
        self.on_no_face = on_no_face or (lambda: None)
        self.max_wait_s = max_wait_s
        self.retry_after_s = retry_after_s
        self.processes = processes
        self._lock = threading.Lock()
        self.executor = self._new_pool()

    def _new_pool(self) -> concurrent.futures.Executor:
        if self.processes is None:
            return concurrent.futures.ThreadPoolExecutor(max_workers=self.workers,
                                                         thread_name_prefix="detect")
        # spawn, not fork: the server process has threads (event loop, ONNX Runtime, torch)
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker, initargs=(self.processes,))

    def _overloaded(self, why: str) -> ServiceError:
        return ServiceError("overloaded", f"face detection is saturated ({why}); retry later",
                            headers={"Retry-After": str(self.retry_after_s)})

    @property
    def encodes(self) -> bool:
        """Do the workers also encode the faces they detect (processes given the encoder's
        graph)? Faces of detect=false requests are always left to the batcher."""
        return self.processes is not None and self.processes.encoder_graph is not None

    async def prepare(self, images: dict[str, bytes], detect: bool, keep_crops: bool = True
                      ) -> PreparedFaces:
        """Each image is its own job, so a pair's two images are decoded and detected on two
        workers at once. When several images fail, an image's own fault (undecodable, too
        large) is reported before another's missing face, as if all were decoded first.
        When the workers encode (`encodes`), the faces come with their embeddings, and
        with their crops only if `keep_crops`."""
        loop = asyncio.get_running_loop()
        if self.processes is None:
            request = _RequestJobs(time.perf_counter())
            done = await asyncio.gather(*(
                loop.run_in_executor(self.executor, self._prepare_one, name, data, detect,
                                     request)
                for name, data in images.items()), return_exceptions=True)
        else:
            done = await self._in_processes(loop, images, detect, keep_crops)
        failed = [r for r in done if isinstance(r, BaseException) and not isinstance(r, _Dropped)]
        if any(isinstance(e, asyncio.CancelledError) for e in failed):  # the pool shut down
            raise ServiceError("not_ready", "the service is shutting down; retry later",
                               headers={"Retry-After": str(self.retry_after_s)})
        if failed:
            raise next((e for e in failed if not (isinstance(e, ServiceError)
                                                  and e.code == "no_face_detected")), failed[0])
        # per stage, the slowest image's time (the two run side by side); the wait until
        # the request's first image was taken up
        prepared = PreparedFaces([face for face, *_ in done],
                                 decode_s=max(r[1] for r in done),
                                 detect_s=max(r[2] for r in done),
                                 wait_s=min(r[3] for r in done))
        if self.encodes and detect:
            prepared.embeddings = np.stack([r[4] for r in done])
            prepared.encode_s = max(r[5] for r in done)
        return prepared

    async def _in_processes(self, loop, images: dict[str, bytes], detect: bool,
                            keep_crops: bool) -> list:
        """The images' jobs in the worker processes, answered as `_prepare_one` answers:
        a (face, decode_s, detect_s, waited[, embedding, encode_s]) tuple or an exception,
        per image. The first image's job checks the queue-time budget when it starts."""
        submitted = time.monotonic()
        pool = self.executor
        # the budget is the first image's, as with threads: it starts first (the pool's
        # queue is in order), and once it is taken up its siblings are not refused
        results = await asyncio.gather(*(
            loop.run_in_executor(pool, _job_in_worker, name, data, detect, submitted,
                                 self.max_wait_s if i == 0 else None, self.max_pixels,
                                 self.decode_min_side, keep_crops)
            for i, (name, data) in enumerate(images.items())), return_exceptions=True)
        done: list = []
        for r in results:
            if isinstance(r, BrokenProcessPool):
                self._replace_broken(pool)
                done.append(ServiceError("overloaded", "a face worker process died; retry",
                                         headers={"Retry-After": str(self.retry_after_s)}))
            elif isinstance(r, BaseException):
                done.append(r)
            elif r[0] == "ok":
                done.append(r[1:])
            elif r[0] == "overloaded":
                done.append(self._overloaded(f"waited {r[1] * 1000:.0f} ms for a detect "
                                             "worker"))
            else:
                _, code, message, field = r
                if code == "no_face_detected":
                    self.on_no_face()
                done.append(ServiceError(code, message, field))
        return done

    def _replace_broken(self, pool) -> None:
        """A worker died (killed, out of memory): a new pool for the requests to come."""
        with self._lock:
            if self.executor is pool:
                log.error("a face worker process died; starting a new pool")
                self.executor = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)

    def _prepare_one(self, name: str, data: bytes, detect: bool, request: _RequestJobs
                     ) -> tuple[AlignedFace, float, float, float]:
        """One image's face (in the upload's pixel coordinates), its decode and detect
        seconds, and its wait for a thread.

        The queue-time budget is checked by the request's first job to start: once one image
        is being worked on its siblings are not thrown away, and once it was refused they are
        not worked on. A sibling that failed to decode stops the others' work (the request's
        answer is that error); after a sibling found no face the others are still decoded,
        for the error order, but not detected."""
        t0 = time.perf_counter()
        waited = t0 - request.submitted
        with self._lock:
            if request.accepted is None:
                request.accepted = self.max_wait_s is None or waited <= self.max_wait_s
        if not request.accepted:
            raise self._overloaded(f"waited {waited * 1000:.0f} ms for a detect thread")
        if request.undecodable:
            raise _Dropped()
        try:
            image, scale = self._decode(name, data)
        except ServiceError:
            request.undecodable = True
            raise
        t1 = time.perf_counter()
        if request.undecodable or request.faceless:
            raise _Dropped()
        try:
            face = self.pipeline.align([image], detect=detect, fallback="raise")[0]
        except NoFaceError:
            request.faceless = True
            self.on_no_face()
            raise ServiceError("no_face_detected", f"{name}: no face detected in the image",
                               name) from None
        return face.scaled(scale), t1 - t0, time.perf_counter() - t1, waited

    def _decode(self, name: str, data: bytes):
        return decode_upload(name, data, self.max_pixels, self.decode_min_side)

    def warm_up(self) -> None:
        """One detection pass on a synthetic image, so the first request is not slow; with
        processes, every worker started (each warms its own pipeline up as it starts)."""
        from PIL import Image
        img = Image.new("RGB", (160, 160), (128, 128, 128))
        self.pipeline.detector.detect([img])
        if self.processes is not None:
            import io
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            # as many jobs at once as workers: the pool starts one process per waiting job
            futures = [self.executor.submit(_job_in_worker, "warm-up", buf.getvalue(), False,
                                            time.monotonic(), None, self.max_pixels, None)
                       for _ in range(self.workers)]
            for f in futures:
                f.result(timeout=300)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
