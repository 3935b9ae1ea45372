"""Face swap with insightface: SCRFD finds faces, ArcFace embeds the source face, and
inswapper paints that identity onto each chosen face of the target.

There is no default model: the public insightface packs (buffalo_l, antelopev2) and
inswapper_128 are licensed for non-commercial research only, so the operator points
`LIVEPIX_FACE_MODEL_DIR` (a pack dir with a detection and a recognition .onnx) and
`LIVEPIX_SWAPPER_MODEL` (an inswapper .onnx) at models they may use. Nothing here ever
downloads: insightface fetches a pack whose dir is missing, so paths are checked first.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from livepix.config import Settings

from ..errors import InvalidImageError, ModelUnavailableError, NoFaceDetectedError
from . import EngineInput, EngineOutput, Report
from .device import pick_device

log = logging.getLogger(__name__)

DET_SIZE = (640, 640)  # SCRFD's usual input; the image is letterboxed into it
LICENCE_NOTE = (
    "the public insightface packs (e.g. buffalo_l) and inswapper_128 are licensed for "
    "non-commercial research only: use models you are licensed to use"
)


def _existing(setting: str, var: str, want_dir: bool) -> Path:
    """The configured path, or a ModelUnavailableError naming the variable."""
    path = Path(setting).expanduser()
    if not (path.is_dir() if want_dir else path.is_file()):
        kind = "directory" if want_dir else "file"
        raise ModelUnavailableError(f"{var}={setting} is not an existing {kind}")
    return path.resolve()


def _providers(device_name: str, base: list[str]) -> list[Any]:
    """ONNX Runtime providers; `cuda:N` pins the CUDA provider to device N."""
    _, _, index = device_name.partition(":")
    if index and base[0] == "CUDAExecutionProvider":
        return [("CUDAExecutionProvider", {"device_id": int(index)}), *base[1:]]
    return list(base)


def to_bgr(image: Image.Image) -> np.ndarray:
    """PIL (any mode) -> the contiguous uint8 BGR array OpenCV and insightface expect."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def to_pil(bgr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]), mode="RGB")


class FaceSwapper:
    """A loaded detector + recognizer (FaceAnalysis) and an inswapper, kept warm."""

    def __init__(self, analyser: Any, swapper: Any) -> None:
        self._analyser = analyser
        self._swapper = swapper

    @classmethod
    def load(cls, settings: Settings) -> FaceSwapper:
        pack_setting, swapper_setting = (
            settings.face_model_dir.strip(),
            settings.swapper_model.strip(),
        )
        if not pack_setting or not swapper_setting:
            raise ModelUnavailableError(
                "face_swap has no default model: set LIVEPIX_FACE_MODEL_DIR to an insightface "
                "pack dir (a detection and a recognition .onnx) and LIVEPIX_SWAPPER_MODEL to an "
                f"inswapper .onnx; {LICENCE_NOTE}"
            )
        pack = _existing(pack_setting, "LIVEPIX_FACE_MODEL_DIR", want_dir=True)
        swapper_path = _existing(swapper_setting, "LIVEPIX_SWAPPER_MODEL", want_dir=False)
        device = pick_device(settings.device)
        providers = _providers(device.name, device.onnx_providers)

        # insightface's face_align calls a scikit-image API deprecated in 0.26: without
        # this, every swap writes the same FutureWarning into the worker log.
        warnings.filterwarnings(
            "ignore", message="`estimate` is deprecated", category=FutureWarning
        )
        from insightface.app import FaceAnalysis
        from insightface.model_zoo import model_zoo
        from insightface.model_zoo.inswapper import INSwapper

        try:
            # `name` as an existing dir is loaded as is; `root` keeps anything insightface
            # might write under the data dir rather than ~/.insightface.
            analyser = FaceAnalysis(
                name=str(pack),
                root=str(settings.model_dir / "insightface"),
                allowed_modules=["detection", "recognition"],
                providers=providers,
            )
        except AssertionError as exc:  # FaceAnalysis asserts that it found a detector
            raise ModelUnavailableError(
                f"LIVEPIX_FACE_MODEL_DIR={pack} holds no detection (SCRFD) .onnx model"
            ) from exc
        except Exception as exc:  # onnxruntime and onnx raise their own, unrelated types
            # An inswapper left in the pack dir is routed as a model with no task name.
            hint = " (keep the inswapper out of this dir)" if "taskname" in str(exc) else ""
            raise ModelUnavailableError(
                f"LIVEPIX_FACE_MODEL_DIR={pack} could not be loaded: "
                f"{type(exc).__name__}: {exc}{hint}"
            ) from exc
        if "recognition" not in analyser.models:
            raise ModelUnavailableError(
                f"LIVEPIX_FACE_MODEL_DIR={pack} holds no recognition (ArcFace) .onnx model"
            )
        try:
            swapper = model_zoo.get_model(str(swapper_path), providers=providers)
        except Exception as exc:
            raise ModelUnavailableError(
                f"LIVEPIX_SWAPPER_MODEL={swapper_path} could not be loaded: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(swapper, INSwapper):
            raise ModelUnavailableError(
                f"LIVEPIX_SWAPPER_MODEL={swapper_path} is not an inswapper model "
                "(expected inputs 1x3x128x128 and 1x512)"
            )
        # ctx_id < 0 makes each model drop to the CPU provider; >= 0 keeps `providers`.
        analyser.prepare(ctx_id=0 if device.is_cuda else -1, det_size=DET_SIZE)
        log.info(
            "face swap ready: pack %s, swapper %s, %s", pack.name, swapper_path.name, device.name
        )
        return cls(analyser, swapper)

    def _faces(self, bgr: np.ndarray, field: str, role: str) -> list[Any]:
        """Faces of one image, left to right (insightface orders them by score)."""
        faces = sorted(self._analyser.get(bgr), key=lambda f: (float(f.bbox[0]), float(f.bbox[1])))
        if not faces:
            raise NoFaceDetectedError(f"no face detected in {field} ({role})")
        return faces

    def run(self, task: EngineInput, report: Report) -> EngineOutput:
        if task.image is None or task.target_image is None:
            raise InvalidImageError("face_swap needs image (the source face) and target_image")
        params = task.parameters
        source_index = int(params.get("source_face_index") or 0)
        target_index = params.get("target_face_index")

        report(10, "Detecting faces")
        source_faces = self._faces(to_bgr(task.image), "image", "the source face")
        if source_index >= len(source_faces):
            raise InvalidImageError(
                f"source_face_index {source_index} but image has {len(source_faces)} face(s)"
            )
        target = to_bgr(task.target_image)
        target_faces = self._faces(target, "target_image", "the picture whose faces are replaced")
        if target_index is not None and int(target_index) >= len(target_faces):
            raise InvalidImageError(
                f"target_face_index {target_index} but target_image has {len(target_faces)} face(s)"
            )
        chosen = target_faces if target_index is None else [target_faces[int(target_index)]]
        source_face = source_faces[source_index]

        result = target
        for i, face in enumerate(chosen, start=1):
            # Each report is a cancel point: a many-face picture stops between faces.
            report(
                20 + 70 * (i - 1) / len(chosen),
                f"Swapping face {i}/{len(chosen)}",
                step=i,
                total=len(chosen),
            )
            result = self._swapper.get(result, face, source_face, paste_back=True)
        report(90, "Composing the result")
        return EngineOutput(
            image=to_pil(result),
            metadata={
                "faces_in_source": len(source_faces),
                "faces_in_target": len(target_faces),
                "swapped": len(chosen),
                "source_face_index": source_index,
                "target_face_index": target_index,
                "parameters": params,
            },
        )
