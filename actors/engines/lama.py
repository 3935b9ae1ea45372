"""LaMa inpainting: a TorchScript `big-lama.pt`, loaded once per worker process.

`LIVEPIX_LAMA_MODEL` is a local file or an http(s) URL (default: big-lama.pt from the
simple-lama-inpainting release, Apache-2.0), or `none` to use OpenCV only; a URL is
fetched once into `<data dir>/models/lama/<file name>` and that copy is used from then
on. The model's
signature: forward(image 1x3xHxW float in [0, 1], mask 1x1xHxW float in {0, 1}) ->
1x3xHxW in [0, 1], with H and W multiples of 8. torch is imported lazily, so that the
OpenCV methods never pay for it.
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

from livepix.config import Settings

from ..errors import ModelUnavailableError, OutOfMemoryError
from . import Report, download
from .device import Device, free_cuda_memory, is_out_of_memory, pick_device
from .download import is_url

log = logging.getLogger(__name__)

SETTING = "LIVEPIX_LAMA_MODEL"
NONE = "none"  # LIVEPIX_LAMA_MODEL=none: no LaMa, OpenCV only
MULTIPLE = 8  # LaMa needs sides that are multiples of 8

_loads_lock = threading.Lock()
_loads = 0


def model_loads() -> int:
    """How many times this process has loaded a LaMa model."""
    return _loads


def _quiet(percent: float, message: str, **_: object) -> None:
    log.info("%s", message)


def is_disabled(settings: Settings) -> bool:
    """Whether the operator turned LaMa off (`LIVEPIX_LAMA_MODEL=none`)."""
    return settings.lama_model.strip().lower() in ("", NONE)


def model_path(settings: Settings) -> Path:
    """Where the configured model is, or (for a URL) where its fetched copy goes."""
    spec = settings.lama_model.strip()
    if is_url(spec):
        name = os.path.basename(urllib.parse.urlparse(spec).path) or "big-lama.pt"
        return settings.model_dir / "lama" / name
    return Path(spec).expanduser()


def fetch(url: str, settings: Settings, report: Report) -> Path:
    """The local copy of the model at `url`, downloaded once into the model dir."""
    target = model_path(settings)
    download.fetch(
        url,
        target,
        download.Progress(report, f"the LaMa model {target.name}", 6, 8),
        source=f"{SETTING}={url}",
        hint=(
            f"this worker may be offline: put {target.name} in the lama folder of its model "
            f"directory (under LIVEPIX_DATA_DIR) or point {SETTING} at a local file"
        ),
    )
    return target


def resolve(settings: Settings, report: Report) -> Path:
    """The local model file that `LIVEPIX_LAMA_MODEL` names (fetching a URL first)."""
    spec = settings.lama_model.strip()
    if is_disabled(settings):
        raise ModelUnavailableError(
            f"LaMa is turned off ({SETTING}={NONE}); set it to a TorchScript big-lama.pt, path "
            "or URL, or unset it for the default; parameters.method telea or ns need no model"
        )
    if is_url(spec):
        return fetch(spec, settings, report)
    path = model_path(settings)
    if not path.is_file():
        raise ModelUnavailableError(f"{SETTING}={spec} does not exist or is not a file")
    return path


def pad_amount(size: int) -> int:
    return (-size) % MULTIPLE


class LamaInpainter:
    """A loaded LaMa TorchScript module on its device (fp32: LaMa degrades in fp16)."""

    def __init__(self, module: Any, device: Device, path: Path) -> None:
        self._module = module
        self.device = device
        self.path = path

    @classmethod
    def load(cls, settings: Settings, report: Report | None = None) -> LamaInpainter:
        """Resolve (fetch) and load the model; `report` gets the progress, if given."""
        global _loads
        report = report or _quiet
        path = resolve(settings, report)
        device = pick_device(settings.device)
        report(8, f"Loading the LaMa model on {device.name}")
        import torch

        try:
            module = torch.jit.load(str(path), map_location=device.name)  # type: ignore[no-untyped-call]
        except (RuntimeError, ValueError, OSError) as exc:
            if is_out_of_memory(exc):
                raise  # not the file's fault: the worker may free memory and retry
            raise ModelUnavailableError(
                f"{SETTING}={settings.lama_model} is not a loadable TorchScript file "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from exc
        module.eval()
        with _loads_lock:
            _loads += 1
        log.info("loaded the LaMa model %s on %s", path, device.name)
        return cls(module, device, path)

    def inpaint(self, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Fill `mask` (HxW, nonzero = remove) in `rgb` (HxWx3 uint8); other pixels stay exact."""
        hole = mask > 0
        try:
            filled = self._forward(rgb, hole)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            log.warning("LaMa ran out of memory on %s: %s", self.device.name, exc)
            filled = None
        if filled is None:  # outside the handler, so the traceback's tensors are gone
            free_cuda_memory()
            height, width = mask.shape
            raise OutOfMemoryError(
                f"{self.device.name} ran out of memory inpainting a {width}x{height} image "
                "with LaMa; try a smaller image or method telea"
            )
        return np.where(hole[..., None], filled, rgb)

    def _forward(self, rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """LaMa's output (HxWx3 uint8) for the whole image, padded to multiples of 8."""
        import torch
        import torch.nn.functional as F

        height, width = hole.shape
        pad_h, pad_w = pad_amount(height), pad_amount(width)
        with torch.inference_mode():
            image = torch.from_numpy(np.require(rgb, np.uint8, ["C", "W"])).to(self.device.name)
            image = image.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
            mask = torch.from_numpy(hole.astype(np.float32)).to(self.device.name)[None, None]
            if pad_h or pad_w:
                mode = "reflect" if height > pad_h and width > pad_w else "replicate"
                image = F.pad(image, (0, pad_w, 0, pad_h), mode=mode)
                mask = F.pad(mask, (0, pad_w, 0, pad_h), mode=mode)
            out = self._module(image, mask)[0, :, :height, :width]
            out = out.permute(1, 2, 0).clamp(0, 1).mul(255).round()
            result: np.ndarray = out.to(torch.uint8).cpu().numpy()
        return result
