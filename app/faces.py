"""Decode and detect/align uploaded images with model/'s pipeline, off the event loop.

The blocking work (Pillow decoding, detection, alignment) runs in a thread pool of
`detect_workers` threads, so a slow image never stalls the event loop. Errors from model/
become the contract's codes, tagged with the field name of the image they concern.

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
import threading
import time
from dataclasses import dataclass

from app.errors import ServiceError
from model.imageio import (
    ImageTooLargeError,
    InvalidImageError,
    UnsupportedImageError,
    decode_reduced,
)
from model.pipeline import AlignedFace, FacePipeline, NoFaceError


@dataclass
class PreparedFaces:
    faces: list[AlignedFace]
    decode_s: float  # of the slowest image (images are prepared side by side)
    detect_s: float
    wait_s: float = 0.0  # until a detect thread took the request's first image


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
                 max_wait_s: float | None = None, retry_after_s: int = 1):
        self.pipeline = pipeline
        self.max_pixels = max_pixels
        self.decode_min_side = decode_min_side
        self.on_no_face = on_no_face or (lambda: None)
        self.max_wait_s = max_wait_s
        self.retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="detect")

    def _overloaded(self, why: str) -> ServiceError:
        return ServiceError("overloaded", f"face detection is saturated ({why}); retry later",
                            headers={"Retry-After": str(self.retry_after_s)})

    async def prepare(self, images: dict[str, bytes], detect: bool) -> PreparedFaces:
        """Each image is its own job, so a pair's two images are decoded and detected on two
        threads at once. When several images fail, an image's own fault (undecodable, too
        large) is reported before another's missing face, as if all were decoded first."""
        loop = asyncio.get_running_loop()
        request = _RequestJobs(time.perf_counter())
        done = await asyncio.gather(*(
            loop.run_in_executor(self.executor, self._prepare_one, name, data, detect, request)
            for name, data in images.items()), return_exceptions=True)
        failed = [r for r in done if isinstance(r, BaseException) and not isinstance(r, _Dropped)]
        if any(isinstance(e, asyncio.CancelledError) for e in failed):  # the pool shut down
            raise ServiceError("not_ready", "the service is shutting down; retry later",
                               headers={"Retry-After": str(self.retry_after_s)})
        if failed:
            raise next((e for e in failed if not (isinstance(e, ServiceError)
                                                  and e.code == "no_face_detected")), failed[0])
        # per stage, the slowest image's time (the two run side by side); the wait until
        # the request's first image was taken up
        return PreparedFaces([face for face, *_ in done],
                             decode_s=max(d for _, d, _, _ in done),
                             detect_s=max(d for _, _, d, _ in done),
                             wait_s=min(w for *_, w in done))

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
        try:
            return decode_reduced(data, max_pixels=self.max_pixels,
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
