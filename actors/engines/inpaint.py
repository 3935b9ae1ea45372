"""Object removal: paint over a masked region with LaMa or OpenCV inpainting.

The mask is white where the object is (or built from `parameters.boxes`), dilated by
`dilate_px` so that the object's edge goes too. `method` picks `lama` (the model of
`LIVEPIX_LAMA_MODEL`, big-lama.pt by default, fetched on first use), `telea` or `ns`
(Navier-Stokes; OpenCV, no weights). `auto` uses LaMa unless `LIVEPIX_LAMA_MODEL=none`;
when LaMa cannot be had (offline, a failed fetch, a file that does not load) it falls
back to `telea`, logs why, and says so in the result's metadata (`"fallback"`). The
failure is remembered for `LAMA_RETRY_S`, so that an offline worker does not try the
fetch again on every task; an explicit `method: lama` always tries, and fails with
`model_unavailable` when LaMa cannot be had.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from livepix.config import Settings

from ..errors import InvalidImageError, ModelUnavailableError, TaskFailedError
from . import EngineInput, EngineOutput, Report

if TYPE_CHECKING:
    from .lama import LamaInpainter

log = logging.getLogger(__name__)

INPAINT_RADIUS_PX = 5
LAMA_RETRY_S = 300.0  # `auto` tries again to load a LaMa that could not be had after this


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
    """The method a task tries first: `auto` means LaMa unless it is turned off."""
    from .lama import NONE, SETTING, is_disabled

    if requested == "auto":
        return "telea" if is_disabled(settings) else "lama"
    if requested == "lama" and is_disabled(settings):
        raise ModelUnavailableError(
            f"method lama needs a LaMa model, and {SETTING}={NONE} turns it off; unset it for "
            "the default big-lama.pt or point it at one (path or URL); parameters.method telea "
            "or ns need no model"
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
        self._lama_failed: tuple[float, str] | None = None  # (monotonic time, why)

    def lama(self, report: Report, *, retry: bool = True) -> LamaInpainter:
        """The process's LaMa model, loaded once (two threads never load it twice).

        Without `retry`, a load that failed less than `LAMA_RETRY_S` ago fails again at
        once with the same reason instead of trying (and maybe waiting on a fetch) again.
        """
        if self._lama is None:
            with self._lama_lock:
                if self._lama is None:
                    from .lama import LamaInpainter

                    failed = self._lama_failed
                    if not retry and failed and time.monotonic() - failed[0] < LAMA_RETRY_S:
                        raise ModelUnavailableError(failed[1])
                    try:
                        self._lama = LamaInpainter.load(self._settings, report)
                    except ModelUnavailableError as exc:
                        self._lama_failed = (time.monotonic(), exc.message)
                        raise
                    self._lama_failed = None
        return self._lama

    def run(self, task: EngineInput, report: Report) -> EngineOutput:
        if task.image is None:
            raise InvalidImageError("object_removal needs an image")
        params: dict[str, Any] = task.parameters
        requested = str(params.get("method") or "auto")
        method = choose_method(requested, self._settings)
        report(5, "Preparing the mask")
        rgb = np.asarray(task.image.convert("RGB"))
        mask = dilate(build_mask(task, task.image.size), int(params.get("dilate_px", 0)))
        covered = float(np.count_nonzero(mask)) / mask.size
        if covered == 0.0:
            raise InvalidImageError("the mask is empty: paint the object white, or give boxes")

        metadata: dict[str, Any] = {"method": method}
        lama = None
        if method == "lama":
            try:
                lama = self.lama(report, retry=requested == "lama")
            except ModelUnavailableError as exc:
                if requested == "lama":
                    raise
                log.warning("LaMa is not available, object removal uses telea: %s", exc.message)
                report(9, "LaMa is not available: inpainting with OpenCV telea instead")
                method = "telea"
                metadata.update(method=method, fallback=exc.message)
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
