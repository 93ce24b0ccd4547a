"""Tiny random ONNX graphs with the input/output signatures of InsightFace's ``det_10g.onnx`` and ``1k3d68.onnx``
(built with the ``onnx`` helper API; used by tests/test_insightface_onnx.py and scripts/compare_official_insightface.py).

* SCRFD (``det_10g``): input ``input.1`` ``(1, 3, ?, ?)``; 9 outputs in upstream's order, scores of strides 8, 16,
  32, then boxes (4 distances), then keypoints (10 offsets), each ``(H/s * W/s * 2, k)`` (two anchors per
  location, row-major, anchor fastest), as ``SCRFD._init_vars`` expects for ``len(outputs) == 9`` (unbatched).
  Per stride: a ``s x s`` convolution with stride ``s`` (one cell per location), ``Transpose`` to NHWC and
  ``Reshape`` to ``(-1, k)``; scores through a sigmoid, box distances through ``Abs`` (+ an offset) so that boxes
  are proper.
* 1k3d68: input ``data`` ``(N, 3, 192, 192)``; the first nodes are named ``Sub*`` and ``Mul*`` (so ``Landmark``
  reads mean 0, std 1, as for the real file); one output ``(N, 3309)`` = 1103 x 3, the last 68 rows are the points;
  ``Tanh`` keeps x, y in [-1, 1] (inside the crop).
"""

from __future__ import annotations

import numpy as np


def _init(name: str, array: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(array, dtype=np.float32) if array.dtype != np.int64 else array, name)


def scrfd_graph(seed: int = 0, score_bias: float = 0.0, score_gain: float = 1.0, box_offset: float = 1.5) -> bytes:
    """Serialized ONNX model shaped like ``det_10g.onnx`` (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    outputs: dict[str, list] = {"score": [], "bbox": [], "kps": []}
    for stride in (8, 16, 32):
        for kind, k in (("score", 1), ("bbox", 4), ("kps", 10)):
            c = 2 * k
            w = rng.normal(0, 1.0 / (stride * np.sqrt(3.0)), size=(c, 3, stride, stride)) * (
                score_gain if kind == "score" else 1.0)
            b = rng.normal(0, 0.5, size=(c,)) + (score_bias if kind == "score" else 0.0)
            p = f"{kind}{stride}"
            inits += [_init(f"{p}_w", w), _init(f"{p}_b", b), _init(f"{p}_shape", np.array([-1, k], dtype=np.int64))]
            nodes.append(helper.make_node("Conv", ["input.1", f"{p}_w", f"{p}_b"], [f"{p}_conv"],
                                          kernel_shape=[stride, stride], strides=[stride, stride], name=f"Conv_{p}"))
            nodes.append(helper.make_node("Transpose", [f"{p}_conv"], [f"{p}_nhwc"], perm=[0, 2, 3, 1]))
            last = f"{p}_flat"
            nodes.append(helper.make_node("Reshape", [f"{p}_nhwc", f"{p}_shape"], [last]))
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [last], [f"score_{stride}"]))
            elif kind == "bbox":
                inits.append(_init(f"{p}_off", np.array([box_offset])))
                nodes.append(helper.make_node("Abs", [last], [f"{p}_abs"]))
                nodes.append(helper.make_node("Add", [f"{p}_abs", f"{p}_off"], [f"bbox_{stride}"]))
            else:
                nodes.append(helper.make_node("Identity", [last], [f"kps_{stride}"]))
            outputs[kind].append(helper.make_tensor_value_info(f"{kind}_{stride}", TensorProto.FLOAT, ["n", k]))
    graph = helper.make_graph(
        nodes, "scrfd_fake",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
        outputs["score"] + outputs["bbox"] + outputs["kps"], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def landmark_graph(seed: int = 0, normalised_inside: bool = True, outputs: int = 3309) -> bytes:
    """Serialized ONNX model shaped like ``1k3d68.onnx`` (``outputs=3309``) or a 2-D landmark model."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    prefix = ("Sub", "Mul") if normalised_inside else ("Pre", "Scale")
    inits = [_init("mean", np.array([127.5])), _init("scale", np.array([1 / 128.0])),
             _init("conv_w", rng.normal(0, 1 / 48.0, size=(4, 3, 16, 16))), _init("conv_b", np.zeros(4)),
             _init("fc_w", rng.normal(0, 1.5 / np.sqrt(576), size=(576, outputs))),
             _init("fc_b", rng.normal(0, 0.3, size=(outputs,)))]
    nodes = [
        helper.make_node("Sub", ["data", "mean"], ["x0"], name=f"{prefix[0]}_0"),
        helper.make_node("Mul", ["x0", "scale"], ["x1"], name=f"{prefix[1]}_1"),
        helper.make_node("Conv", ["x1", "conv_w", "conv_b"], ["x2"], kernel_shape=[16, 16], strides=[16, 16],
                         name="Conv_2"),
        helper.make_node("Flatten", ["x2"], ["x3"], axis=1, name="Flatten_3"),
        helper.make_node("Gemm", ["x3", "fc_w", "fc_b"], ["x4"], name="Gemm_4"),
        helper.make_node("Tanh", ["x4"], ["fc1"], name="Tanh_5"),
    ]
    graph = helper.make_graph(nodes, "landmark_fake",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, 192, 192])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", outputs])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def face_image(h: int = 360, w: int = 480, seed: int = 0) -> np.ndarray:
    """An RGB uint8 test image: smooth gradients plus a few bright blobs (structure for the random filters)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    img = np.stack([xx / w * 200, yy / h * 200, (xx + yy) / (h + w) * 255], axis=-1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(15, 60)
        img += 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None] * rng.uniform(-1, 1, 3)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
