"""Decode and detect/align uploaded images with model/'s pipeline, off the event loop.

The blocking work (Pillow decoding, detection, alignment) runs in a thread pool of
`detect_workers` threads, so a slow image never stalls the event loop. Errors from model/
become the contract's codes, tagged with the field name of the image they concern.

Overload is shed at the door: a request whose expected wait for a thread (the jobs ahead of
it times the recent mean job time, over the threads) exceeds `max_wait_s` gets 503 at once,
and one that still waited longer than that when a thread takes it gets 503 then, so an
accepted request's latency stays bounded instead of climbing with the queue.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from dataclasses import dataclass

from app.errors import ServiceError
from model.imageio import ImageTooLargeError, InvalidImageError, UnsupportedImageError, decode_image
from model.pipeline import AlignedFace, FacePipeline, NoFaceError


@dataclass
class PreparedFaces:
    faces: list[AlignedFace]
    decode_s: float  # of the slowest image (images are prepared side by side)
    detect_s: float
    wait_s: float = 0.0  # until a detect thread took the request's first image


class FaceStage:
    def __init__(self, pipeline: FacePipeline, workers: int, max_pixels: int,
                 on_no_face=None, decode_min_side: int | None = None,
                 max_wait_s: float | None = None, retry_after_s: int = 1):
        self.pipeline = pipeline
        self.max_pixels = max_pixels
        self.decode_min_side = decode_min_side
        self.on_no_face = on_no_face or (lambda: None)
        self.workers = workers
        self.max_wait_s = max_wait_s
        self.retry_after_s = retry_after_s
        self.waiting = 0  # jobs submitted and not yet started (event loop and threads)
        self._lock = threading.Lock()
        self.mean_job_s = 0.0  # exponentially weighted, over the last ~20 jobs
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="detect")

    def expected_wait_s(self) -> float:
        """How long a job submitted now would wait for a thread, from the recent job time."""
        return self.waiting * self.mean_job_s / self.workers

    def _overloaded(self, why: str) -> ServiceError:
        return ServiceError("overloaded", f"face detection is saturated ({why}); retry later",
                            headers={"Retry-After": str(self.retry_after_s)})

    async def prepare(self, images: dict[str, bytes], detect: bool) -> PreparedFaces:
        """Each image is its own job, so a pair's two images are decoded and detected on two
        threads at once. When several images fail, an image's own fault (undecodable, too
        large) is reported before another's missing face, as if all were decoded first."""
        if self.max_wait_s is not None and self.expected_wait_s() > self.max_wait_s:
            raise self._overloaded(f"expected wait {self.expected_wait_s() * 1000:.0f} ms")
        loop = asyncio.get_running_loop()
        with self._lock:
            self.waiting += len(images)
        submitted = time.perf_counter()
        started: list[bool] = []  # set by the request's first job to start
        done = await asyncio.gather(*(
            loop.run_in_executor(self.executor, self._prepare_one, name, data, detect,
                                 submitted, started) for name, data in images.items()),
            return_exceptions=True)
        failed = [r for r in done if isinstance(r, BaseException)]
        if failed:
            raise next((e for e in failed if not (isinstance(e, ServiceError)
                                                  and e.code == "no_face_detected")), failed[0])
        # per stage, the slowest image's time (the two run side by side); the wait until
        # the request's first image was taken up
        return PreparedFaces([face for face, *_ in done],
                             decode_s=max(d for _, d, _, _ in done),
                             detect_s=max(d for _, _, d, _ in done),
                             wait_s=min(w for *_, w in done))

    def _prepare_one(self, name: str, data: bytes, detect: bool, submitted: float,
                     started: list[bool]) -> tuple[AlignedFace, float, float, float]:
        """One image's face, its decode and detect seconds, and its wait for a thread. The
        queue-time budget is checked by the request's first job to start only: once one
        image is being worked on, its siblings are not thrown away."""
        t0 = time.perf_counter()
        with self._lock:
            self.waiting -= 1
            first = not started
            started.append(True)
        if first and self.max_wait_s is not None and t0 - submitted > self.max_wait_s:
            raise self._overloaded(f"waited {(t0 - submitted) * 1000:.0f} ms")
        try:
            image = self._decode(name, data)
            t1 = time.perf_counter()
            try:
                face = self.pipeline.align([image], detect=detect, fallback="raise")[0]
            except NoFaceError:
                self.on_no_face()
                raise ServiceError("no_face_detected", f"{name}: no face detected in the image",
                                   name) from None
            return face, t1 - t0, time.perf_counter() - t1, t0 - submitted
        finally:
            job = time.perf_counter() - t0
            with self._lock:
                self.mean_job_s = job if not self.mean_job_s else (
                    0.95 * self.mean_job_s + 0.05 * job)

    def _decode(self, name: str, data: bytes):
        try:
            return decode_image(data, max_pixels=self.max_pixels,
                                min_side=self.decode_min_side)
        except ImageTooLargeError as exc:
            raise ServiceError("payload_too_large", f"{name}: {exc}", name) from None
        except UnsupportedImageError as exc:
            raise ServiceError("unsupported_media_type", f"{name}: {exc}", name) from None
        except InvalidImageError as exc:
            raise ServiceError("invalid_image", f"{name}: {exc}", name) from None

    def warm_up(self) -> None:
        """One detection pass on a synthetic image, so the first request is not slow."""
        from PIL import Image
        img = Image.new("RGB", (160, 160), (128, 128, 128))
        self.pipeline.detector.detect([img])

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
