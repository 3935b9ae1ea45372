"""onnxruntime's out-of-memory error (face swap, background removal) is recognised."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from actors.errors import says_out_of_memory


def test_a_real_onnxruntime_allocation_failure_reads_as_out_of_memory() -> None:
    # A graph that asks for a 4 TB tensor: the CPU arena refuses at once.
    fill = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    node = helper.make_node("ConstantOfShape", ["shape"], ["out"], value=fill)
    graph = helper.make_graph(
        [node], "huge",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception) as failure:
        session.run(None, {"shape": np.array([1 << 40], dtype=np.int64)})
    assert says_out_of_memory(failure.value)


def test_other_engine_errors_are_not_out_of_memory() -> None:
    assert not says_out_of_memory(ValueError("shapes (3,4) and (5,) not aligned"))
    assert not says_out_of_memory(RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT"))
