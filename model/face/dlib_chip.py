"""dlib's face-chip extraction (``dlib.get_face_chip``) in numpy, without dlib.

dlib's face ResNet (and face_recognition's ``face_encodings``) sees a face through
``get_face_chip(img, shape, size=150, padding=0.25)``: a similarity transform fitted from the
5 landmarks of dlib's 5-point shape predictor onto a fixed template, turned into a rotated
rectangle, and sampled with bilinear interpolation, through a 2x image pyramid when the face
is much larger than the chip. This module reproduces each of those steps as dlib 20.0
writes them (``dlib/image_transforms/interpolation.h``: ``get_face_chip_details``,
``chip_details``, ``extract_image_chips``, ``transform_image``, ``interpolate_bilinear``;
``dlib/image_transforms/image_pyramid.h``: ``pyramid_down<2>``), including its quirks:

* the chip rectangle is ``cols*scale`` wide with dlib's ``r - l + 1`` width convention, and
  chip pixel ``(cols-1, 0)`` maps onto its right edge, so the sampling scale is
  ``(cols*scale - 1)/(cols - 1)``, not exactly the fitted ``scale``;
* the image is first cropped to the rotated rectangle grown by a margin (2 pixels, more
  per pyramid level), rounded to whole pixels; samples whose 2x2 neighbourhood leaves that
  crop become background (black), not only those that leave the image;
* the pyramid level is the deepest one at which the rectangle is still larger than the chip
  (``pyramid_down<2>`` shrinks a rectangle of width ``w`` to ``(w + 1)/2``), so the pyramid
  is used when the face is about 2x (or more) larger than the chip;
* ``pyramid_down<2>`` is a 5-tap [1 4 6 4 1] filter on every other pixel, integer sums
  divided by 256 with truncation; its point mapping is ``p/2 - (1.25, 0.75)``;
* interpolated values are truncated (not rounded) to uint8;
* ``dlib.get_face_chip`` takes ``padding`` as a C ``float``.

Coordinates are dlib's: pixel indices, pixel centres at integers. Landmarks are (5, 2)
arrays of (x, y) in dlib's 5-point order: 0, 1 = outer and inner corner of the eye on the
image's right, 2, 3 = outer and inner corner of the eye on the image's left, 4 = base of the
nose (see ``TEMPLATE_5``). dlib's shape predictor and Python API give integer points; floats
(sub-pixel landmarks from another detector) are accepted and used as given, as dlib 20's C++
``full_object_detection`` (which holds ``dpoint``s) would.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CHIP_SIZE = 150
CHIP_PADDING = 0.25

# dlib's 5-point face template (get_face_chip_details), as fractions of an unpadded chip:
# right-of-image eye outer/inner corner, left-of-image eye outer/inner corner, nose base.
TEMPLATE_5 = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ],
    dtype=np.float64,
)

# A rectangle is (left, top, right, bottom), inclusive, as in dlib: width = right - left + 1.
Rect = tuple[float, float, float, float]


@dataclass(frozen=True)
class ChipDetails:
    """dlib's ``chip_details``: a rectangle in the image (centre and size), rotated by
    ``angle`` radians about its centre, sampled onto a ``rows`` x ``cols`` chip."""

    rect: Rect
    angle: float
    rows: int
    cols: int

    @property
    def center(self) -> tuple[float, float]:
        left, top, right, bottom = self.rect
        return (left + right) / 2.0, (top + bottom) / 2.0

    def matrix(self) -> np.ndarray:
        """The 2x3 affine M with image (x, y) = M[:, :2] @ chip (x, y) + M[:, 2], for chip
        pixel indices, at full resolution (what dlib samples when no pyramid is used)."""
        return _corner_affine(self.rect, self.angle, self.rows, self.cols)


# --------------------------------------------------------------------------------------
# chip geometry
#
# Written with Python floats in the order dlib's formulas take them (its matrices sum
# products left to right), so that the rectangle, angle and sampling affine agree with
# dlib's to the last bits but for its SVD, which we take from numpy. That matters: a sample
# in a flat 2x2 neighbourhood evaluates to an exact integer or to one ulp below it, and
# truncation turns that ulp into a whole grey level.

def _svd(a: list[list[float]]) -> tuple[list[list[float]], list[float], list[list[float]]]:
    """a = u diag(q) v^T (numpy's LAPACK SVD; dlib-bin uses its own Golub-Reinsch routine,
    whose last bits can differ: see the tolerance in tests/test_dlib_chip.py)."""
    u, q, vt = np.linalg.svd(np.asarray(a, dtype=np.float64), full_matrices=False)
    return u.tolist(), q.tolist(), vt.T.tolist()


def _dot(a: list[float], b: list[float]) -> float:
    """Left-to-right sum of products, as dlib's matrix multiply."""
    total = a[0] * b[0]
    for i in range(1, len(a)):
        total += a[i] * b[i]
    return total


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """dlib's ``find_similarity_transform`` (Umeyama 1991, eqs. 34-43): the 2x3 M with
    dst ~= M[:, :2] @ src + M[:, 2], bit-identical to dlib's."""
    src = [tuple(map(float, p)) for p in np.asarray(src, dtype=np.float64)]
    dst = [tuple(map(float, p)) for p in np.asarray(dst, dtype=np.float64)]
    n = len(src)
    mfx = mfy = mtx = mty = 0.0
    for (sx, sy), (tx, ty) in zip(src, dst):
        mfx += sx
        mfy += sy
        mtx += tx
        mty += ty
    mfx, mfy, mtx, mty = mfx / n, mfy / n, mtx / n, mty / n
    sigma_from = 0.0
    cov = [[0.0, 0.0], [0.0, 0.0]]
    for (sx, sy), (tx, ty) in zip(src, dst):
        fx, fy, tx, ty = sx - mfx, sy - mfy, tx - mtx, ty - mty
        sigma_from += fx * fx + fy * fy
        cov[0][0] += tx * fx
        cov[0][1] += tx * fy
        cov[1][0] += ty * fx
        cov[1][1] += ty * fy
    sigma_from /= n
    inv_n = 1.0 / n  # dlib's matrix /= scalar multiplies by the reciprocal
    cov = [[c * inv_n for c in row] for row in cov]
    u, d, v = _svd(cov)

    def det(a: list[list[float]]) -> float:
        return a[0][0] * a[1][1] - a[0][1] * a[1][0]

    sign = [1.0, 1.0]
    if det(cov) < 0 or (det(cov) == 0 and det(u) * det(v) < 0):
        if d[1] < d[0]:
            sign[1] = -1.0
        else:
            sign[0] = -1.0
    us = [[u[i][k] * sign[k] for k in range(2)] for i in range(2)]
    r = [[_dot(us[i], v[j]) for j in range(2)] for i in range(2)]  # u * s * trans(v)
    c = 1.0
    if sigma_from != 0:
        c = 1.0 / sigma_from * (d[0] * sign[0] + d[1] * sign[1])
    # t = mean_to - c*r*mean_from; dlib moves the scalar outside: (r*mean_from)*c
    tx = mtx - _dot(r[0], [mfx, mfy]) * c
    ty = mty - _dot(r[1], [mfx, mfy]) * c
    return np.array([[r[0][0] * c, r[0][1] * c, tx], [r[1][0] * c, r[1][1] * c, ty]])


def chip_details(
    landmarks: np.ndarray, size: int = CHIP_SIZE, padding: float = CHIP_PADDING
) -> ChipDetails:
    """dlib's ``get_face_chip_details`` for a 5-point shape.

    ``landmarks``: (5, 2) (x, y) in dlib's 5-point order. ``padding`` is rounded to a C
    float first, as ``dlib.get_face_chip`` does. Returns the rotated rectangle that
    ``extract_chip`` samples; ``.matrix()`` gives it as a chip->image affine.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (5, 2):
        raise ValueError(f"expected (5, 2) landmarks in dlib's 5-point order, got {pts.shape}")
    if int(size) != size or size <= 0 or not padding >= 0:
        raise ValueError(f"need an integer size > 0 and padding >= 0, got {size}, {padding}")
    size = int(size)
    pad = float(np.float32(padding))
    # (padding + p)/(2*padding + 1) is a dlib matrix expression: it multiplies by the reciprocal
    inv = 1.0 / (2 * pad + 1)
    chip_pts = [((pad + x) * inv * size, (pad + y) * inv * size) for x, y in TEMPLATE_5.tolist()]
    return chip_details_from_points(np.array(chip_pts), pts, size)


def chip_details_from_points(chip_points: np.ndarray, image_points: np.ndarray,
                             size: int = CHIP_SIZE) -> ChipDetails:
    """dlib's ``chip_details(chip_points, image_points, chip_dims(size, size))``: the chip
    whose least-squares similarity puts `chip_points` (chip pixels) onto `image_points`."""
    tform = similarity_transform(np.asarray(chip_points, dtype=np.float64),
                                 np.asarray(image_points, dtype=np.float64)).tolist()
    px, py = tform[0][0], tform[1][0]  # the transform's linear part applied to (1, 0)
    angle = math.atan2(py, px)
    scale = math.sqrt(px * px + py * py)
    half = size / 2.0
    cx = tform[0][0] * half + tform[0][1] * half + tform[0][2]
    cy = tform[1][0] * half + tform[1][1] * half + tform[1][2]
    width = size * scale - 1  # centered_drect: the edges are width - 1 apart
    height = size * scale - 1
    rect = (cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2)
    return ChipDetails(rect=rect, angle=angle, rows=size, cols=size)


def _rotate(cx: float, cy: float, x: float, y: float, angle: float) -> tuple[float, float]:
    """dlib's ``rotate_point`` (std::sin/std::cos: Python's math uses the same libm)."""
    ca, sa = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    return ca * dx - sa * dy + cx, sa * dx + ca * dy + cy


def _corners(rect: Rect, angle: float) -> list[tuple[float, float]]:
    """Top-left, top-right, bottom-left, bottom-right corners of ``rect`` rotated about its
    centre."""
    left, top, right, bottom = rect
    cx, cy = (left + right) / 2.0, (top + bottom) / 2.0
    return [_rotate(cx, cy, x, y, angle)
            for x, y in ((left, top), (right, top), (left, bottom), (right, bottom))]


def _corner_affine(rect: Rect, angle: float, rows: int, cols: int) -> np.ndarray:
    """dlib's ``find_affine_transform`` from the chip's top-left, top-right and bottom-left
    pixels onto the rotated rectangle's corners: Q * pinv(P), pinv through ``_svd``."""
    tl, tr, bl, _ = _corners(rect, angle)
    p = [[0.0, cols - 1.0, 0.0], [0.0, 0.0, rows - 1.0], [1.0, 1.0, 1.0]]
    q = [[tl[0], tr[0], bl[0]], [tl[1], tr[1], bl[1]]]
    u, w, v = _svd(p)
    tol = np.finfo(np.float64).eps * 3 * max(w)
    inv_w = [1.0 / x if (x >= tol or x <= -tol) and x != 0 else 0.0 for x in w]
    vs = [[v[i][k] * inv_w[k] for k in range(3)] for i in range(3)]
    pinv = [[_dot(vs[i], u[j]) for j in range(3)] for i in range(3)]  # vs * trans(u)
    pinv_cols = [[pinv[k][j] for k in range(3)] for j in range(3)]
    return np.array([[_dot(q[i], pinv_cols[j]) for j in range(3)] for i in range(2)])


# --------------------------------------------------------------------------------------
# rectangles the way dlib's drectangle / rectangle treat them


def _area(rect: Rect) -> float:
    left, top, right, bottom = rect
    if top > bottom or left > right:
        return 0.0
    return (right - left + 1) * (bottom - top + 1)


def _rect_down(rect: Rect) -> Rect:
    """``pyramid_down<2>::rect_down``: corners through p/2 - (1.25, 0.75)."""
    left, top, right, bottom = rect
    return (left / 2.0 - 1.25, top / 2.0 - 0.75, right / 2.0 - 1.25, bottom / 2.0 - 0.75)


def _to_int_rect(rect: Rect) -> tuple[int, int, int, int]:
    """drectangle -> rectangle: every side to floor(x + 0.5)."""
    return tuple(int(np.floor(v + 0.5)) for v in rect)


# --------------------------------------------------------------------------------------
# pixels


def pyramid_down(image: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_down<2>`` on a uint8 image (H, W) or (H, W, C): separable 5-tap
    [1 4 6 4 1] filter evaluated at every other pixel starting at (2, 2), sum // 256.
    Output is ((H - 3) // 2, (W - 3) // 2); images of 8 pixels or fewer a side give an
    empty image."""
    h, w = image.shape[:2]
    if h <= 8 or w <= 8:
        return np.zeros((0, 0) + image.shape[2:], dtype=image.dtype)
    # uint16 cannot overflow: a row sum is at most 16*255 and a full sum at most 256*255
    img = image.astype(np.uint16)
    nc, nr = (w - 3) // 2, (h - 3) // 2
    cols = [img[:, k:k + 2 * nc - 1:2] for k in range(5)]
    tmp = cols[0] + 4 * cols[1] + 6 * cols[2] + 4 * cols[3] + cols[4]
    rows = [tmp[k:k + 2 * nr - 1:2] for k in range(5)]
    out = rows[0] + 4 * rows[1] + 6 * rows[2] + 4 * rows[3] + rows[4]
    return (out >> 8).astype(image.dtype)


def transform_image(image: np.ndarray, affine: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """dlib's ``transform_image`` with ``interpolate_bilinear`` and a black background:
    chip pixel (c, r) samples ``image`` at ``affine @ (c, r, 1)``; a sample whose 2x2
    neighbourhood is not inside ``image`` is 0; values are truncated to uint8."""
    squeeze = image.ndim == 2
    img = image[:, :, None] if squeeze else image
    h, w, ch = img.shape
    if h < 2 or w < 2:  # no 2x2 neighbourhood anywhere: all background
        out = np.zeros((rows, cols, ch), dtype=image.dtype)
        return out[:, :, 0] if squeeze else out
    c = np.arange(cols, dtype=np.float64)[None, :]
    r = np.arange(rows, dtype=np.float64)[:, None]
    x = affine[0, 0] * c + affine[0, 1] * r + affine[0, 2]  # m*p + b, dlib's order
    y = affine[1, 0] * c + affine[1, 1] * r + affine[1, 2]
    left, top = np.floor(x), np.floor(y)
    inside = (left >= 0) & (top >= 0) & (left < w - 1) & (top < h - 1)
    lr = (x - left)[..., None]
    tb = (y - top)[..., None]
    # gather the 2x2 neighbourhoods (clamped; samples outside are zeroed below)
    base = np.clip(top, 0, h - 2).astype(np.intp) * w + np.clip(left, 0, w - 2).astype(np.intp)
    flat = img.reshape(h * w, ch)
    # np.take along the rows: the same values as flat[base], ~4x faster than fancy indexing
    tl, tr, bl, br = (np.take(flat, base + k, axis=0) for k in (0, 1, w, w + 1))
    # interpolate_bilinear's expression, operation for operation:
    # (1 - tb) * ((1 - lr) * tl + lr * tr) + tb * ((1 - lr) * bl + lr * br)
    ilr = 1 - lr
    upper = ilr * tl
    upper += lr * tr
    lower = ilr * bl
    lower += lr * br
    upper *= 1 - tb
    lower *= tb
    upper += lower
    upper *= inside[..., None]
    out = upper.astype(image.dtype)  # C cast to unsigned char: truncation (values >= 0)
    return out[:, :, 0] if squeeze else out


@dataclass(frozen=True)
class _Plan:
    box: tuple[int, int, int, int]  # crop of the image (inclusive), dlib's bounding_box
    level: int  # pyramid level sampled, -1 = the crop itself
    affine: np.ndarray  # chip (x, y) -> coordinates in the crop / pyramid level


def _plan(details: ChipDetails, height: int, width: int) -> _Plan:
    """What dlib's ``extract_image_chips`` decides for one chip: the crop, the pyramid
    level and the sampling affine."""
    size = details.rows * details.cols
    # depth of the pyramid and the margin it needs
    grow = 2.0
    rect = _rect_down(details.rect)
    while _area(rect) > size:
        rect = _rect_down(rect)
        grow = grow * 2 + 2
    xs, ys = zip(*_corners(details.rect, details.angle))
    left, top, right, bottom = min(xs) - grow, min(ys) - grow, max(xs) + grow, max(ys) + grow
    grown = (max(left, 0.0), max(top, 0.0), min(right, width - 1.0), min(bottom, height - 1.0))
    box = _to_int_rect(grown)
    if box[0] > box[2] or box[1] > box[3]:
        box = (0, 0, -1, -1)  # dlib's empty rectangle
    # the level: shrink the rectangle (in crop coordinates) while it stays above the chip
    left, top, right, bottom = details.rect
    rect = (left - box[0], top - box[1], right - box[0], bottom - box[1])
    level = -1
    while _area(_rect_down(rect)) > size:
        level += 1
        rect = _rect_down(rect)
    return _Plan(box=box, level=level,
                 affine=_corner_affine(rect, details.angle, details.rows, details.cols))


def pyramid_level(details: ChipDetails, height: int, width: int) -> int:
    """The pyramid level dlib samples this chip from in an image of this size: -1 for the
    image itself, k >= 0 for k + 1 halvings by ``pyramid_down``."""
    return _plan(details, height, width).level


def extract_image_chip(image: np.ndarray, details: ChipDetails) -> np.ndarray:
    """dlib's ``extract_image_chip(img, details)`` with bilinear interpolation, for a uint8
    image (H, W) or (H, W, C). Returns (rows, cols[, C]) of the image's dtype."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W[, C]) uint8 image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    left, top, right, bottom = details.rect
    if (details.angle == 0 and details.rows == bottom - top + 1
            and details.cols == right - left + 1):
        # no rotation, no scaling: dlib copies the (rounded) rectangle, zero outside
        l, t, r, b = _to_int_rect(details.rect)
        out = np.zeros((b - t + 1, r - l + 1) + image.shape[2:], dtype=image.dtype)
        il, it, ir, ib = max(l, 0), max(t, 0), min(r, w - 1), min(b, h - 1)
        if il <= ir and it <= ib:
            out[it - t:ib - t + 1, il - l:ir - l + 1] = image[it:ib + 1, il:ir + 1]
        return out
    plan = _plan(details, h, w)
    l, t, r, b = plan.box
    src = image[t:b + 1, l:r + 1] if r >= l and b >= t else image[:0, :0]
    for _ in range(plan.level + 1):
        src = pyramid_down(src)
    return transform_image(src, plan.affine, details.rows, details.cols)


def extract_chip(
    image: np.ndarray,
    landmarks: np.ndarray,
    size: int = CHIP_SIZE,
    padding: float = CHIP_PADDING,
) -> np.ndarray:
    """``dlib.get_face_chip(image, dlib.full_object_detection(rect, landmarks), size,
    padding)`` without dlib.

    ``image``: (H, W, 3) uint8 RGB (or (H, W) uint8). ``landmarks``: (5, 2) (x, y) from
    dlib's 5-point shape predictor, in its order. Returns (size, size, 3) uint8.
    """
    return extract_image_chip(image, chip_details(landmarks, size, padding))
