"""Object removal: paint over a masked region with LaMa or OpenCV inpainting.

The mask is white where the object is (or built from `parameters.boxes`), dilated by
`dilate_px` so that the object's edge goes too. `method` picks `lama` (needs
`LIVEPIX_LAMA_MODEL`), `telea` or `ns` (Navier-Stokes, OpenCV, no weights); `auto`
uses LaMa when `LIVEPIX_LAMA_MODEL` is set, else `telea`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from livepix.config import Settings

from ..errors import InvalidImageError, ModelUnavailableError, TaskFailedError
from . import EngineInput, EngineOutput, Report

if TYPE_CHECKING:
    from .lama import LamaInpainter

INPAINT_RADIUS_PX = 5


def build_mask(task: EngineInput, size: tuple[int, int]) -> np.ndarray:
    """A uint8 mask (255 = remove) from the mask image and/or the boxes."""
    width, height = size
    mask = np.zeros((height, width), dtype=np.uint8)
    if task.mask is not None:
        drawn = task.mask.convert("L")
        if drawn.size != size:
            drawn = drawn.resize(size, Image.Resampling.NEAREST)
        mask[np.asarray(drawn) >= 128] = 255
    for x0, y0, x1, y1 in task.parameters.get("boxes") or []:
        mask[max(0, y0) : min(height, y1), max(0, x0) : min(width, x1)] = 255
    return mask


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    if px <= 0:
        return mask
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return np.asarray(cv2.dilate(mask, kernel))


def choose_method(requested: str, settings: Settings) -> str:
    """The method a task runs: `auto` means LaMa when a model is configured."""
    if requested == "auto":
        return "lama" if settings.lama_model.strip() else "telea"
    if requested == "lama" and not settings.lama_model.strip():
        raise ModelUnavailableError(
            "method lama needs LIVEPIX_LAMA_MODEL (a TorchScript big-lama.pt, path or URL); "
            "parameters.method telea or ns need no model"
        )
    if requested not in ("lama", "telea", "ns"):
        raise TaskFailedError(f"unknown object removal method {requested!r}")
    return requested


def opencv_inpaint(rgb: np.ndarray, mask: np.ndarray, method: str) -> np.ndarray:
    import cv2

    flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    filled = cv2.inpaint(bgr, mask, INPAINT_RADIUS_PX, flag)
    return np.asarray(cv2.cvtColor(filled, cv2.COLOR_BGR2RGB))


class ObjectRemover:
    """Object removal; the LaMa model is loaded on the first LaMa task, then kept."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lama: LamaInpainter | None = None
        self._lama_lock = threading.Lock()

    def lama(self, report: Report) -> LamaInpainter:
        """The process's LaMa model, loaded once (two threads never load it twice)."""
        if self._lama is None:
            with self._lama_lock:
                if self._lama is None:
                    from .lama import LamaInpainter

                    self._lama = LamaInpainter.load(self._settings, report)
        return self._lama

    def run(self, task: EngineInput, report: Report) -> EngineOutput:
        if task.image is None:
            raise InvalidImageError("object_removal needs an image")
        params: dict[str, Any] = task.parameters
        method = choose_method(str(params.get("method") or "auto"), self._settings)
        report(5, "Preparing the mask")
        rgb = np.asarray(task.image.convert("RGB"))
        mask = dilate(build_mask(task, task.image.size), int(params.get("dilate_px", 0)))
        covered = float(np.count_nonzero(mask)) / mask.size
        if covered == 0.0:
            raise InvalidImageError("the mask is empty: paint the object white, or give boxes")

        metadata: dict[str, Any] = {"method": method}
        lama = self.lama(report) if method == "lama" else None
        if lama is not None:
            from .lama import model_loads

            metadata.update(
                device=lama.device.name, model=lama.path.name, model_loads=model_loads()
            )

        report(30, f"Inpainting {covered:.1%} of the image ({method})")
        if lama is not None:
            filled = lama.inpaint(rgb, mask)
        else:
            filled = opencv_inpaint(rgb, mask, method)
        report(90, "Composing the result")
        out = Image.fromarray(filled)
        metadata.update(
            masked_fraction=round(covered, 4),
            width=out.width,
            height=out.height,
            parameters=params,
        )
        return EngineOutput(image=out, metadata=metadata)
