"""Object removal: paint over a masked region with OpenCV inpainting.

The mask is white where the object is (or built from `parameters.boxes`), dilated by
`dilate_px` so that the object's edge goes too. `method` picks `telea` or `ns`
(Navier-Stokes); `auto` uses `telea`. LaMa (`lama`) needs `LIVEPIX_LAMA_MODEL`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from livepix.config import Settings

from ..errors import InvalidImageError, ModelUnavailableError
from . import EngineInput, EngineOutput, Report

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


class ObjectRemover:
    """OpenCV inpainting; needs no model weights."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def run(self, task: EngineInput, report: Report) -> EngineOutput:
        import cv2

        if task.image is None:
            raise InvalidImageError("object_removal needs an image")
        params: dict[str, Any] = task.parameters
        method = params.get("method", "auto")
        if method == "lama":
            raise ModelUnavailableError(
                "LaMa object removal is not available in this release; "
                "use parameters.method telea or ns"
            )
        method = "telea" if method == "auto" else method

        report(10, "Preparing the mask")
        rgb = np.asarray(task.image.convert("RGB"))
        mask = dilate(build_mask(task, task.image.size), int(params.get("dilate_px", 0)))
        covered = float(np.count_nonzero(mask)) / mask.size
        if covered == 0.0:
            raise InvalidImageError("the mask is empty: paint the object white, or give boxes")

        report(30, f"Inpainting {covered:.1%} of the image ({method})")
        flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        filled = cv2.inpaint(bgr, mask, INPAINT_RADIUS_PX, flag)
        report(90, "Composing the result")
        out = Image.fromarray(cv2.cvtColor(filled, cv2.COLOR_BGR2RGB))
        return EngineOutput(
            image=out,
            metadata={
                "method": method,
                "masked_fraction": round(covered, 4),
                "width": out.width,
                "height": out.height,
                "parameters": params,
            },
        )
