"""Tiny models built at test time, loaded through the same code as real ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def build_tiny_u2net(path: Path, padding_bytes: int = 0) -> Path:
    """An ONNX graph with U^2-Net's signature: 1x3x320x320 in, 1x1x320x320 mask out.

    A 1x1 convolution and a sigmoid: bright red regions come out as foreground.
    `padding_bytes` of doc string make the file big enough to watch it download.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(
        np.array([4.0, -2.0, -2.0], dtype=np.float32).reshape(1, 3, 1, 1), name="w"
    )
    bias = numpy_helper.from_array(np.array([0.0], dtype=np.float32), name="b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input.1", "w", "b"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["d0"]),
        ],
        "tiny_u2net",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, [1, 1, 320, 320])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if padding_bytes:
        model.doc_string = "." * padding_bytes
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
