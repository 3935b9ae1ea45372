"""face_swap with insightface, on tiny random-weight models built at test time.

The fake SCRFD in tests/models_face.py finds a face on every warm disk of a picture;
the models go through insightface's real FaceAnalysis and INSwapper code, first in
process, then through real api and worker processes.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from actors.engines import EngineInput
from actors.errors import InvalidImageError, ModelUnavailableError, NoFaceDetectedError
from livepix.config import Settings
from tests.clients import assert_contiguous, decode_png, png_b64, sse_events, submit
from tests.conftest import Stack
from tests.models_face import build_face_models, face_picture

pytestmark = [
    # insightface's face_align calls scikit-image's deprecated SimilarityTransform.estimate.
    pytest.mark.filterwarnings(r"ignore:`estimate` is deprecated:FutureWarning"),
]

SOURCE_FACES = [(150, 110, 32)]
TARGET_FACES = [(70, 80, 36), (240, 150, 40)]  # left and right; both far from (300, 20)
FAR_CORNER = (slice(0, 24), slice(290, 320))  # rows, columns: no face reaches here


@pytest.fixture(scope="module")
def face_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_face_models(tmp_path_factory.mktemp("faces"))


def face_env(models: tuple[Path, Path]) -> dict[str, str]:
    pack, swapper = models
    return {
        "LIVEPIX_FACE_MODEL_DIR": str(pack),
        "LIVEPIX_SWAPPER_MODEL": str(swapper),
        "LIVEPIX_DEVICE": "cpu",
    }


def recorder() -> tuple[list[tuple[float, str]], Callable[..., None]]:
    calls: list[tuple[float, str]] = []

    def report(percent: float, message: str, **_: Any) -> None:
        calls.append((percent, message))

    return calls, report


def swap_task(target: Image.Image, **parameters: Any) -> EngineInput:
    return EngineInput(
        task_id="t",
        prompt=None,
        parameters={"source_face_index": 0, "target_face_index": None, **parameters},
        image=face_picture(320, 240, SOURCE_FACES),
        target_image=target,
    )


def changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    """Per-pixel mask of where two RGB images differ."""
    a = np.asarray(before.convert("RGB"), dtype=np.int16)
    b = np.asarray(after.convert("RGB"), dtype=np.int16)
    return np.asarray(np.abs(a - b).sum(axis=2) > 0)


def test_engine_swaps_every_face_in_process(face_models: tuple[Path, Path], tmp_path: Path) -> None:
    from actors.engines.faceswap import FaceSwapper

    pack, swapper = face_models
    engine = FaceSwapper.load(
        Settings(
            face_model_dir=str(pack),
            swapper_model=str(swapper),
            device="cpu",
            data_dir=str(tmp_path),
        )
    )
    target = face_picture(320, 240, TARGET_FACES)
    calls, report = recorder()
    out = engine.run(swap_task(target), report)

    assert out.image.mode == "RGB" and out.image.size == target.size
    assert out.metadata["faces_in_source"] == 1 and out.metadata["faces_in_target"] == 2
    assert out.metadata["swapped"] == 2 and out.metadata["target_face_index"] is None
    assert [m for _, m in calls] == [
        "Detecting faces",
        "Swapping face 1/2",
        "Swapping face 2/2",
        "Composing the result",
    ]
    assert [p for p, _ in calls] == sorted(p for p, _ in calls)
    diff = changed(target, out.image)
    for x, y, _ in TARGET_FACES:
        assert diff[y - 10 : y + 10, x - 10 : x + 10].mean() > 0.9, (x, y)
    assert not diff[FAR_CORNER].any()
    assert not diff[:, 130:180].any()  # the strip between the two faces

    # Faces are numbered left to right: index 1 is the right-hand face only.
    only_right = engine.run(swap_task(target, target_face_index=1), recorder()[1])
    diff = changed(target, only_right.image)
    assert only_right.metadata["swapped"] == 1
    assert not diff[60:100, 50:90].any() and diff[140:160, 230:250].mean() > 0.9

    with pytest.raises(InvalidImageError, match="target_face_index 2 but target_image has 2 face"):
        engine.run(swap_task(target, target_face_index=2), recorder()[1])
    with pytest.raises(InvalidImageError, match="source_face_index 1 but image has 1 face"):
        engine.run(swap_task(target, source_face_index=1), recorder()[1])
    with pytest.raises(NoFaceDetectedError, match="target_image"):
        engine.run(swap_task(face_picture(320, 240, [])), recorder()[1])
    no_source = swap_task(target)
    no_source.image = face_picture(320, 240, [])
    with pytest.raises(NoFaceDetectedError, match=r"in image \(the source face\)"):
        engine.run(no_source, recorder()[1])


def test_engine_load_errors_name_the_setting(
    face_models: tuple[Path, Path], tmp_path: Path
) -> None:
    from actors.engines.faceswap import FaceSwapper

    pack, swapper = face_models
    with pytest.raises(ModelUnavailableError) as unset:
        FaceSwapper.load(Settings(data_dir=str(tmp_path), device="cpu"))
    for words in ("LIVEPIX_FACE_MODEL_DIR", "LIVEPIX_SWAPPER_MODEL", "non-commercial"):
        assert words in unset.value.message
    with pytest.raises(
        ModelUnavailableError, match="LIVEPIX_FACE_MODEL_DIR=.*not an existing directory"
    ):
        FaceSwapper.load(
            Settings(
                face_model_dir=str(tmp_path / "nope"), swapper_model=str(swapper), device="cpu"
            )
        )
    with pytest.raises(ModelUnavailableError, match="LIVEPIX_SWAPPER_MODEL=.*not an existing file"):
        FaceSwapper.load(
            Settings(face_model_dir=str(pack), swapper_model=str(tmp_path / "x.onnx"), device="cpu")
        )
    empty = tmp_path / "empty_pack"
    empty.mkdir()
    with pytest.raises(ModelUnavailableError, match="no detection"):
        FaceSwapper.load(
            Settings(face_model_dir=str(empty), swapper_model=str(swapper), device="cpu")
        )
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ModelUnavailableError, match="LIVEPIX_SWAPPER_MODEL=.*could not be loaded"):
        FaceSwapper.load(
            Settings(
                face_model_dir=str(pack), swapper_model=str(tmp_path / "broken.onnx"), device="cpu"
            )
        )
    crowded = tmp_path / "crowded_pack"
    shutil.copytree(pack, crowded)
    shutil.copy(swapper, crowded / "inswapper.onnx")
    with pytest.raises(ModelUnavailableError, match="keep the inswapper out of this dir"):
        FaceSwapper.load(
            Settings(face_model_dir=str(crowded), swapper_model=str(swapper), device="cpu")
        )
    # A recognition model is not a swapper.
    with pytest.raises(ModelUnavailableError, match="is not an inswapper model"):
        FaceSwapper.load(
            Settings(
                face_model_dir=str(pack), swapper_model=str(pack / "w600k_tiny.onnx"), device="cpu"
            )
        )


def test_face_swap_through_a_worker(new_stack: Stack, face_models: tuple[Path, Path]) -> None:
    new_stack.env.update(face_env(face_models))
    base = new_stack.add_api()
    new_stack.add_worker("gpu")
    target = face_picture(320, 240, TARGET_FACES)
    body: dict[str, Any] = {
        "task_type": "face_swap",
        "image": png_b64(face_picture(320, 240, SOURCE_FACES)),
        "target_image": png_b64(target),
    }
    events = sse_events(base, submit(base, body))

    assert_contiguous(events)
    assert events[0]["type"] == "queued" and events[-1]["type"] == "succeeded", events[-1]
    messages = [e["message"] for e in events if e["type"] == "progress"]
    assert "Detecting faces" in messages and "Swapping face 2/2" in messages
    result = events[-1]["result"]
    assert result["metadata"]["swapped"] == 2 and result["metadata"]["faces_in_target"] == 2
    out = decode_png(result["image_data"])
    assert out.size == target.size
    diff = changed(target, out)
    for x, y, _ in TARGET_FACES:
        assert diff[y - 10 : y + 10, x - 10 : x + 10].mean() > 0.9
    assert not diff[FAR_CORNER].any()

    # The engine stays loaded: a second task does not prepare it again.
    body["parameters"] = {"target_face_index": 0}
    events = sse_events(base, submit(base, body))
    assert_contiguous(events)
    assert events[-1]["type"] == "succeeded", events[-1]
    assert events[-1]["result"]["metadata"]["swapped"] == 1
    assert not any(e["type"] == "progress" and e["message"].startswith("Preparing") for e in events)


def test_face_swap_without_a_face_in_the_target_fails(
    new_stack: Stack, face_models: tuple[Path, Path]
) -> None:
    new_stack.env.update(face_env(face_models))
    base = new_stack.add_api()
    new_stack.add_worker("gpu")
    body = {
        "task_type": "face_swap",
        "image": png_b64(face_picture(320, 240, SOURCE_FACES)),
        "target_image": png_b64(face_picture(320, 240, [])),
    }
    events = sse_events(base, submit(base, body))
    assert_contiguous(events)
    assert events[-1]["type"] == "failed"
    assert events[-1]["error"]["code"] == "no_face_detected"
    assert "target_image" in events[-1]["error"]["message"]


def test_face_swap_without_models_fails_fast_with_model_unavailable(new_stack: Stack) -> None:
    # Empty values count as unset, and override anything the test runner inherited.
    new_stack.env.update({"LIVEPIX_FACE_MODEL_DIR": "", "LIVEPIX_SWAPPER_MODEL": ""})
    base = new_stack.add_api()
    new_stack.add_worker("gpu")
    picture = png_b64(face_picture(320, 240, SOURCE_FACES))
    events = sse_events(
        base, submit(base, {"task_type": "face_swap", "image": picture, "target_image": picture})
    )
    assert_contiguous(events)
    started = next(e for e in events if e["type"] == "started")
    failed = events[-1]
    assert failed["type"] == "failed" and failed["error"]["code"] == "model_unavailable"
    assert "LIVEPIX_FACE_MODEL_DIR" in failed["error"]["message"]
    assert "LIVEPIX_SWAPPER_MODEL" in failed["error"]["message"]
    assert failed["ts"] - started["ts"] < 5
