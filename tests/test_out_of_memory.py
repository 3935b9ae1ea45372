"""Running out of memory is recognised whoever says it: onnxruntime (face swap, background
removal), torch's CPU allocator, Python's MemoryError."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from actors.errors import ModelUnavailableError, failure_of, is_out_of_memory, says_out_of_memory


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


def test_a_real_torch_cpu_allocation_failure_maps_to_out_of_memory() -> None:
    import torch

    with pytest.raises(RuntimeError) as failure:
        torch.empty(1 << 42)  # 16 TB of floats: the CPU allocator refuses at once
    assert is_out_of_memory(failure.value)
    code, message = failure_of(failure.value)
    assert code == "out_of_memory" and "can't allocate memory" in message


def test_errors_that_say_memory_but_are_not_running_out_keep_their_code() -> None:
    unavailable = ModelUnavailableError("LIVEPIX_LAMA_MODEL=x could not be fetched (out of memory?)")
    assert not is_out_of_memory(unavailable)
    assert failure_of(unavailable)[0] == "model_unavailable"
    assert failure_of(MemoryError()) == ("out_of_memory", "the worker ran out of memory")
    assert failure_of(ValueError("bad shape"))[0] == "engine_error"
