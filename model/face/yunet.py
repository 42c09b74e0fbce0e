"""YuNet (OpenCV Zoo, 2023mar; MIT) run by ONNX Runtime: boxes, 5 landmarks and scores.

The graph is `weights/detector-yunet.onnx`, converted by `python -m model.convert.yunet`. What
this module adds is what OpenCV's `FaceDetectorYN` does around the network, in numpy: BGR
pixels as float32 (no scaling), padded at the right and bottom to a multiple of 32; an
anchor-free decode of the three heads (strides 8, 16 and 32); score = sqrt(cls * obj); then
non-maximum suppression.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model.shipped import WEIGHTS_DIR

DEFAULT_YUNET = WEIGHTS_DIR / "detector-yunet.onnx"
STRIDES = (8, 16, 32)
DIVISOR = 32


def pad_batch(pixels: Sequence[np.ndarray]) -> np.ndarray:
    """RGB uint8 images (H, W, 3) → one (N, 3, H', W') float32 BGR batch, each image at the
    top left of a zero canvas whose sides are the largest sides rounded up to DIVISOR."""
    h = max(p.shape[0] for p in pixels)
    w = max(p.shape[1] for p in pixels)
    h, w = -(-h // DIVISOR) * DIVISOR, -(-w // DIVISOR) * DIVISOR
    batch = np.zeros((len(pixels), 3, h, w), dtype=np.float32)
    for i, p in enumerate(pixels):
        batch[i, :, :p.shape[0], :p.shape[1]] = p[:, :, ::-1].transpose(2, 0, 1)
    return batch


def _grid(h: int, w: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = h // stride, w // stride
    r, c = np.divmod(np.arange(rows * cols, dtype=np.float32), cols)
    return c, r


def decode(outputs: dict[str, np.ndarray], index: int, h: int, w: int, threshold: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's boxes (K, 4: x1 y1 x2 y2), landmarks (K, 5, 2) and scores (K,) above
    `threshold`, before suppression; (h, w) is the padded input's size."""
    boxes, points, scores = [], [], []
    for s in STRIDES:
        cls = np.clip(outputs[f"cls_{s}"][index, :, 0], 0, 1)
        obj = np.clip(outputs[f"obj_{s}"][index, :, 0], 0, 1)
        score = np.sqrt(cls * obj)
        keep = np.nonzero(score >= threshold)[0]
        if not len(keep):
            continue
        c, r = _grid(h, w, s)
        c, r = c[keep], r[keep]
        bb = outputs[f"bbox_{s}"][index, keep]
        cx, cy = (c + bb[:, 0]) * s, (r + bb[:, 1]) * s
        bw, bh = np.exp(bb[:, 2]) * s, np.exp(bb[:, 3]) * s
        boxes.append(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1))
        kps = outputs[f"kps_{s}"][index, keep].reshape(-1, 5, 2)
        points.append(np.stack([(kps[..., 0] + c[:, None]) * s,
                                (kps[..., 1] + r[:, None]) * s], axis=-1))
        scores.append(score[keep])
    if not boxes:
        return np.zeros((0, 4)), np.zeros((0, 5, 2)), np.zeros((0,))
    return (np.concatenate(boxes).astype(np.float64), np.concatenate(points).astype(np.float64),
            np.concatenate(scores).astype(np.float64))


def _areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _iou_with(boxes: np.ndarray, areas: np.ndarray, i, others) -> np.ndarray:
    """Intersection over union of box `i` with the boxes `others` (indices or a slice)."""
    w = np.clip(np.minimum(boxes[i, 2], boxes[others, 2])
                - np.maximum(boxes[i, 0], boxes[others, 0]), 0, None)
    h = np.clip(np.minimum(boxes[i, 3], boxes[others, 3])
                - np.maximum(boxes[i, 1], boxes[others, 1]), 0, None)
    inter = w * h
    return inter / (areas[i] + areas[others] - inter + 1e-9)


def suppress(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression: the indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    areas = _areas(boxes)
    kept = []
    while len(order):
        i, rest = order[0], order[1:]
        kept.append(i)
        order = rest[_iou_with(boxes, areas, i, rest) <= iou]
    return np.asarray(kept, dtype=np.int64)


def vote(boxes: np.ndarray, points: np.ndarray, scores: np.ndarray, iou: float
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Suppression with box voting: each kept face's box and points become the
    score-weighted mean of every detection overlapping it by more than 0.5 (the same face
    seen in another pass), its score the best of them."""
    keep = suppress(boxes, scores, iou)
    if not len(keep):
        return boxes[:0], points[:0], scores[:0]
    areas = _areas(boxes)
    out_b, out_p = [], []
    for i in keep:
        same = _iou_with(boxes, areas, i, slice(None)) > 0.5
        weight = scores[same] / scores[same].sum()
        out_b.append(weight @ boxes[same])
        out_p.append(np.tensordot(weight, points[same], axes=1))
    return np.array(out_b), np.array(out_p), scores[keep]


# The mirror image's points, in the original's order: left and right swap.
MIRROR_ORDER = [1, 0, 2, 4, 3]


def check_against_card(path: Path, data: bytes) -> None:
    """ValueError unless `data` has the sha256 the card beside `path` records (the card is
    written by model.convert.yunet; a graph without a card is taken as it is)."""
    import hashlib
    import json
    card = path.with_suffix(".json")
    if not card.exists():
        return
    want = json.loads(card.read_text()).get("sha256")
    got = hashlib.sha256(data).hexdigest()
    if want and got != want:
        raise ValueError(f"{path} has sha256 {got}, but its card {card.name} records {want}; "
                         f"rebuild it with `make detector-weights`")


class YuNet:
    """The network and its decode. `detect(pixels)` → per image (boxes, landmarks, scores),
    with landmarks in MTCNN's order (image-left eye, image-right eye, nose, image-left mouth
    corner, image-right mouth corner), which is also YuNet's.

    flip: also detect on the mirror image (in the same batch) and merge by box voting.
    """

    def __init__(self, path: str | Path = DEFAULT_YUNET, threshold: float = 0.6,
                 nms_iou: float = 0.3, threads: int = 1, flip: bool = False):
        import onnxruntime as ort
        data = Path(path).read_bytes()  # OSError when missing
        check_against_card(Path(path), data)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.threshold, self.nms_iou, self.flip = threshold, nms_iou, flip
        try:
            self._session = ort.InferenceSession(data, options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 — ORT raises bare Exception subclasses
            raise ValueError(f"{path}: not a loadable ONNX graph ({exc})") from None
        self._names = [o.name for o in self._session.get_outputs()]

    def detect(self, pixels: Sequence[np.ndarray]
               ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        n = len(pixels)
        views = list(pixels) + ([p[:, ::-1] for p in pixels] if self.flip else [])
        batch = pad_batch(views)
        outputs = dict(zip(self._names, self._session.run(self._names, {"input": batch})))
        found = []
        for i in range(n):
            boxes, points, scores = decode(outputs, i, batch.shape[2], batch.shape[3],
                                           self.threshold)
            if self.flip:
                width = pixels[i].shape[1]
                b, p, sc = decode(outputs, n + i, batch.shape[2], batch.shape[3],
                                  self.threshold)
                b = np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1)
                p = p[:, MIRROR_ORDER] * [-1, 1] + [width, 0]
                boxes, points = np.concatenate([boxes, b]), np.concatenate([points, p])
                scores = np.concatenate([scores, sc])
                found.append(vote(boxes, points, scores, self.nms_iou))
            else:
                keep = suppress(boxes, scores, self.nms_iou)
                found.append((boxes[keep], points[keep], scores[keep]))
        return found
