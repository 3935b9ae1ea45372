"""Background removal with rembg, on an explicit session (never rembg's own default).

`LIVEPIX_REMBG_MODEL` is a rembg model name (default `u2net`, Apache-2.0) or a path to
an .onnx file with U^2-Net's signature. Named models live under
`<data dir>/models/rembg/models/<name>/<name>.onnx`; a file already there is used as is.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from PIL import Image

from livepix.config import Settings

from ..errors import InvalidImageError, ModelUnavailableError
from . import EngineInput, EngineOutput, Report

log = logging.getLogger(__name__)

# Models whose licence allows commercial use; bria-rmbg (rembg's own default) does not.
COMMERCIAL_MODELS = ("u2net", "u2netp", "u2net_human_seg", "silueta", "isnet-general-use")


def rembg_home(settings: Settings) -> Path:
    return settings.model_dir / "rembg"


def model_file(settings: Settings) -> Path:
    """Where the configured model is (or would be, once fetched)."""
    spec = settings.rembg_model
    if spec.endswith(".onnx") or os.sep in spec:
        return Path(spec).expanduser().resolve()
    return rembg_home(settings) / "models" / spec / f"{spec}.onnx"


class BackgroundRemover:
    """A loaded rembg session."""

    def __init__(self, session: Any, model: str) -> None:
        self._session = session
        self.model = model

    @classmethod
    def load(cls, settings: Settings) -> BackgroundRemover:
        spec = settings.rembg_model
        path = model_file(settings)
        custom = spec.endswith(".onnx") or os.sep in spec
        if custom and not path.is_file():
            raise ModelUnavailableError(
                f"LIVEPIX_REMBG_MODEL points at {path.name}, which does not exist"
            )
        # rembg reads its home from the environment at call time. A custom file is
        # loaded as `u2net_custom`, which only accepts files under that home.
        os.environ.pop("U2NET_HOME", None)
        os.environ["REMBG_HOME"] = str(path.parent if custom else rembg_home(settings))
        from rembg import new_session

        try:
            if custom:
                session = new_session("u2net_custom", model_path=str(path))
            else:
                session = new_session(spec)
        except ValueError as exc:
            raise ModelUnavailableError(
                f"LIVEPIX_REMBG_MODEL={spec!r} is not a rembg model ({exc})"
            ) from exc
        except OSError as exc:  # includes network errors while fetching
            raise ModelUnavailableError(
                f"the rembg model {spec!r} is not in the data dir and could not be fetched "
                f"({type(exc).__name__}); put {spec}.onnx at models/rembg/models/{spec}/ under "
                "LIVEPIX_DATA_DIR, or point LIVEPIX_REMBG_MODEL at an .onnx file"
            ) from exc
        except Exception as exc:
            # pooch raises requests/HTTP errors and onnxruntime raises its own on a bad
            # file; neither shares a base class we could name here.
            raise ModelUnavailableError(
                f"the rembg model {spec!r} could not be loaded: {type(exc).__name__}: {exc}"
            ) from exc
        log.info("rembg session %s ready", spec)
        return cls(session, spec)

    def run(self, task: EngineInput, report: Report) -> EngineOutput:
        from rembg import remove

        if task.image is None:
            raise InvalidImageError("background_removal needs an image")
        params = task.parameters
        report(10, "Finding the subject")
        image = task.image.convert("RGBA")
        bgcolor = params.get("bgcolor")
        out = remove(
            image,
            session=self._session,
            only_mask=bool(params.get("only_mask")),
            alpha_matting=bool(params.get("alpha_matting")),
            bgcolor=tuple(bgcolor) if bgcolor else None,
        )
        report(90, "Composing the result")
        if not isinstance(out, Image.Image):
            raise TypeError(f"rembg returned {type(out).__name__}, expected an image")
        if not params.get("only_mask") and out.mode != "RGBA":
            out = out.convert("RGBA")
        return EngineOutput(
            image=out,
            metadata={
                "model": self.model,
                "width": out.width,
                "height": out.height,
                "mode": out.mode,
                "parameters": params,
            },
        )
