"""Background removal with rembg, on an explicit session (never rembg's own default).

`LIVEPIX_REMBG_MODEL` is a rembg model name (default `u2net`, Apache-2.0), a path to an
.onnx file with U^2-Net's signature, or an http(s) URL of one. Named models live under
`<data dir>/models/rembg/models/<name>/<name>.onnx`; a file already there is used as is.
A missing commercially usable model is linked in from rembg's own folder (`U2NET_HOME`,
default `~/.u2net`) if rembg downloaded it there, md5 checked, else fetched from
`LIVEPIX_REMBG_MIRROR` (rembg's GitHub release by default) and checked against rembg's
md5; a URL is fetched once into `<data dir>/models/rembg/custom/`. Both fetches report
their bytes. Other names are left to rembg's own download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

from PIL import Image

from livepix.config import Settings

from ..errors import InvalidImageError, ModelUnavailableError
from . import EngineInput, EngineOutput, Report, download
from .download import Progress, is_url

log = logging.getLogger(__name__)

SETTING = "LIVEPIX_REMBG_MODEL"

# Models whose licence allows commercial use (bria-rmbg, rembg's own default, does
# not), with the md5 of rembg's release files (from rembg 2.0.86's session modules).
MODEL_MD5 = {
    "u2net": "60024c5c889badc19c04ad937298a77b",
    "u2netp": "8e83ca70e441ab06c318d82300c84806",
    "u2net_human_seg": "c09ddc2e0104f800e3e1bb4652583d1f",
    "silueta": "55e59e0d8062d2f5d013f4725ee84782",
    "isnet-general-use": "fc16ebd8b0c10d971d3513d564d01e29",
}
COMMERCIAL_MODELS = tuple(MODEL_MD5)

# Fetching reports between these percents: after "Preparing" (1), before the run (10).
FETCH_LOW, FETCH_HIGH = 2, 8


def _quiet(percent: float, message: str, **_: object) -> None:
    log.info("%s", message)


def rembg_home(settings: Settings) -> Path:
    return settings.model_dir / "rembg"


def is_custom(spec: str) -> bool:
    """Whether `spec` names a model file (a path or a URL) rather than a rembg model."""
    return is_url(spec) or spec.endswith(".onnx") or os.sep in spec


def model_file(settings: Settings) -> Path:
    """Where the configured model is (or would be, once fetched)."""
    spec = settings.rembg_model.strip()
    if is_url(spec):
        name = os.path.basename(urllib.parse.urlparse(spec).path) or "model.onnx"
        return rembg_home(settings) / "custom" / name
    if is_custom(spec):
        return Path(spec).expanduser().resolve()
    return rembg_home(settings) / "models" / spec / f"{spec}.onnx"


def pullable(settings: Settings) -> bool:
    """Whether `livepix models pull` can fetch the configured model."""
    spec = settings.rembg_model.strip()
    return is_url(spec) or not is_custom(spec)


def fetch(settings: Settings, report: Report) -> Path:
    """The configured model file, fetched first if it is one livepix fetches itself."""
    spec = settings.rembg_model.strip()
    path = model_file(settings)
    if path.is_file():
        return path
    if is_url(spec):
        return download.fetch(
            spec,
            path,
            Progress(report, f"the rembg model {path.name}", FETCH_LOW, FETCH_HIGH),
            source=f"{SETTING}={spec}",
            hint=f"this worker may be offline: point {SETTING} at a local .onnx file",
        )
    if is_custom(spec):
        raise ModelUnavailableError(f"{SETTING} points at {path.name}, which does not exist")
    md5 = MODEL_MD5.get(spec)
    if md5 is None:  # rembg fetches it (or refuses the name) without byte progress
        report(FETCH_LOW, f"Fetching the rembg model {spec}")
        return path
    if adopt_legacy(spec, md5, path):
        report(FETCH_HIGH, f"Found the rembg model {spec} in rembg's own folder")
        return path
    url = f"{settings.rembg_mirror.rstrip('/')}/{spec}.onnx"
    return download.fetch(
        url,
        path,
        Progress(report, f"the rembg model {spec}", FETCH_LOW, FETCH_HIGH),
        source=f"the rembg model {spec!r} from {url}",
        hint=(
            f"put {spec}.onnx at models/rembg/models/{spec}/ under LIVEPIX_DATA_DIR, set "
            f"LIVEPIX_REMBG_MIRROR to a reachable copy, or point {SETTING} at an .onnx file"
        ),
        md5=md5,
    )


def legacy_file(spec: str) -> Path:
    """Where rembg itself keeps the named model (`U2NET_HOME`, default ~/.u2net)."""
    return Path(os.environ.get("U2NET_HOME") or "~/.u2net").expanduser() / f"{spec}.onnx"


def adopt_legacy(spec: str, md5: str, path: Path) -> bool:
    """Link (or copy) a named model that rembg already downloaded into `path`, if its
    md5 is right: a user of rembg does not fetch 170 MB again."""
    legacy = legacy_file(spec)
    if not legacy.is_file():
        return False
    digest = hashlib.md5(usedforsecurity=False)
    with open(legacy, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    if digest.hexdigest() != md5:
        log.warning("%s does not match rembg's md5 for %s; fetching it instead", legacy, spec)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        try:
            os.link(legacy, partial)
        except OSError:  # another filesystem, or no hard links there
            shutil.copyfile(legacy, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    log.info("using %s as the rembg model %s", legacy, spec)
    return True


class BackgroundRemover:
    """A loaded rembg session."""

    def __init__(self, session: Any, model: str) -> None:
        self._session = session
        self.model = model

    @classmethod
    def load(cls, settings: Settings, report: Report | None = None) -> BackgroundRemover:
        """Fetch the model if needed (with progress to `report`) and open a session."""
        report = report or _quiet
        spec = settings.rembg_model.strip()
        path = fetch(settings, report)
        custom = is_custom(spec)
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
