"""Similarity-transform alignment of 5 facial landmarks onto a fixed 112x112 template.

Coordinates are continuous pixel coordinates with pixel centres at +0.5, which is the
convention Pillow's affine transform uses; landmarks from the detector (pixel indices) are
shifted by half a pixel on the way in.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

CROP_SIZE = 112

# The widely used 5-point template for 112x112 face crops (left eye, right eye, nose tip,
# left mouth corner, right mouth corner), in pixel-index coordinates.
TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

# Where the 5 landmarks sit, as fractions of width/height, on face-centred square photos such
# as LFW deep-funneled or celeba-extra (median over LFW, measured with our detector). Used to
# align an image when no face is found, so every evaluation pair still gets a score.
CENTRED_FACE_LANDMARKS = np.array(
    [
        [0.4170, 0.4538],
        [0.5903, 0.4490],
        [0.5032, 0.5471],
        [0.4325, 0.6352],
        [0.5832, 0.6325],
    ],
    dtype=np.float64,
)


# LFW's fixed centre box (top, right, bottom, left) on its 250x250 images: where a
# face-centred photo's face is assumed when no detector finds it (face_recognition's fallback,
# and ours for dlib's 5-point predictor).
CENTRE_BOX_250 = (70, 180, 180, 70)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src onto dst.

    Umeyama (1991). Returns a 2x3 matrix M with dst ~= M[:, :2] @ src + M[:, 2].
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_s, dst - mu_d
    cov = dst_c.T @ src_c / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0  # avoid a reflection
    rot = u @ np.diag(d) @ vt
    var_s = (src_c**2).sum() / len(src)
    scale = float((sigma * d).sum() / var_s) if var_s > 0 else 1.0
    trans = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, trans[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to an (N, 2) array of points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def align_face(image: Image.Image, landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Warp `image` so that `landmarks` (5x2, pixel indices) land on the template.

    Returns an (size, size, 3) uint8 RGB array.
    """
    template = TEMPLATE_112 * (size / CROP_SIZE)
    matrix = similarity_transform(np.asarray(landmarks) + 0.5, template + 0.5)
    # Pillow wants the inverse map: output coordinates -> input coordinates.
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    warped = image.transform(
        (size, size), Image.Transform.AFFINE, data=tuple(inverse.ravel()),
        resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0),
    )
    return np.asarray(warped, dtype=np.uint8)


def centred_face_landmarks(width: int, height: int) -> np.ndarray:
    """The landmarks a face-centred photo of this size is assumed to have (fallback)."""
    return CENTRED_FACE_LANDMARKS * np.array([width, height], dtype=np.float64)


def resize_crop(image: Image.Image, size: int = CROP_SIZE) -> np.ndarray:
    """The detect=False path: the input already is an aligned crop; only resize it."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)
