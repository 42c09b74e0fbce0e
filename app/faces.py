"""Decode and detect/align uploaded images with model/'s pipeline, off the event loop.

The blocking work (Pillow decoding, MTCNN) runs in a thread pool of `detect_workers`
threads, so a slow image never stalls the event loop. Errors from model/ become the
contract's codes, tagged with the field name of the image they concern.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass

from app.errors import ServiceError
from model.imageio import ImageTooLargeError, InvalidImageError, UnsupportedImageError, decode_image
from model.pipeline import AlignedFace, FacePipeline, NoFaceError


@dataclass
class PreparedFaces:
    faces: list[AlignedFace]
    decode_s: float
    detect_s: float


class FaceStage:
    def __init__(self, pipeline: FacePipeline, workers: int, max_pixels: int,
                 on_no_face=None):
        self.pipeline = pipeline
        self.max_pixels = max_pixels
        self.on_no_face = on_no_face or (lambda: None)
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="detect")

    async def prepare(self, images: dict[str, bytes], detect: bool) -> PreparedFaces:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._prepare, images, detect)

    def _prepare(self, images: dict[str, bytes], detect: bool) -> PreparedFaces:
        t0 = time.perf_counter()
        names = list(images)
        decoded = [self._decode(name, images[name]) for name in names]
        t1 = time.perf_counter()
        try:
            faces = self.pipeline.align(decoded, detect=detect, fallback="raise")
        except NoFaceError as exc:
            self.on_no_face()
            name = names[exc.index] if exc.index is not None else None
            raise ServiceError("no_face_detected",
                               f"{name}: no face detected in the image" if name else None,
                               name) from None
        return PreparedFaces(faces, t1 - t0, time.perf_counter() - t1)

    def _decode(self, name: str, data: bytes):
        try:
            return decode_image(data, max_pixels=self.max_pixels)
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
