"""The model catalogue behind `livepix models list` and `livepix models pull`.

One entry per model a worker may load: its setting, what it resolves to, whether the
files are present, and (with `--check`) whether the engine actually loads it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from livepix.config import DEFAULT_LAMA_MODEL, Settings

from .engines import Report
from .errors import TaskFailedError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    setting: str
    value: str
    licence: str
    present: Callable[[], bool]
    load: Callable[[], object]
    pullable: bool


def _silent(percent: float, message: str, **_: object) -> None:
    log.info("%s", message)


class TerminalReport:
    """Progress of `pull` on the terminal: the same messages a task's events carry
    ("Fetching ...: 3.1 MB of 10 MB"), redrawn in place on a TTY, one a line otherwise."""

    def __init__(self) -> None:
        self._tty = sys.stdout.isatty()
        self._open = False

    def __call__(self, percent: float, message: str, **_: object) -> None:
        if self._tty:
            sys.stdout.write(f"\r\x1b[K    {message}")
            self._open = True
        else:
            sys.stdout.write(f"    {message}\n")
        sys.stdout.flush()

    def end_line(self) -> None:
        if self._open:
            sys.stdout.write("\n")
            self._open = False


def catalogue(settings: Settings, report: Report = _silent) -> list[ModelEntry]:
    from .engines.background import COMMERCIAL_MODELS, BackgroundRemover, model_file, pullable
    from .engines.device import pick_device
    from .engines.diffusion import Diffusion, image_model
    from .engines.download import is_url
    from .engines.faceswap import FaceSwapper
    from .engines.hub import in_hub_cache, model_source
    from .engines.lama import LamaInpainter, is_disabled, model_path
    from .engines.preview import is_latent, latents_preview, load_decoder

    source, local = image_model(settings)
    preview_source, preview_local = model_source(settings.preview_model.strip())
    rembg_path = model_file(settings)

    def diffusion_present() -> bool:
        if local:
            return (Path(source) / "model_index.json").is_file()
        return in_hub_cache(settings, source)

    def preview_present() -> bool:
        if is_latent(settings):
            return True  # nothing to fetch
        if preview_local:
            return (Path(preview_source) / "config.json").is_file()
        return in_hub_cache(settings, preview_source)

    def preview_load() -> object:
        if is_latent(settings):
            return latents_preview
        return load_decoder(settings, pick_device(settings.device), report)

    lama_off = is_disabled(settings)

    def lama_load() -> object:
        if lama_off:
            return None  # nothing to load: OpenCV only
        return LamaInpainter.load(settings, report)

    lama_licence = (
        "Apache-2.0 (default; LaMa's authors and the simple-lama-inpainting export)"
        if settings.lama_model.strip() == DEFAULT_LAMA_MODEL
        else "the LaMa weights' own"
    )
    return [
        ModelEntry(
            "image_generation, style_transfer",
            "LIVEPIX_TXT2IMG_MODEL",
            source,
            "CreativeML OpenRAIL-M (default)" if not settings.txt2img_model else "the model's own",
            diffusion_present,
            lambda: Diffusion.load(settings, report),
            not local,
        ),
        ModelEntry(
            "previews (image_generation, style_transfer)",
            "LIVEPIX_PREVIEW_MODEL",
            "latent (a projection, no model)" if is_latent(settings) else preview_source,
            "none" if is_latent(settings) else "MIT (default)" if preview_source == "madebyollin/taesd" else "the model's own",
            preview_present,
            preview_load,
            not is_latent(settings) and not preview_local,
        ),
        ModelEntry(
            "background_removal",
            "LIVEPIX_REMBG_MODEL",
            settings.rembg_model,
            "Apache-2.0" if settings.rembg_model in COMMERCIAL_MODELS else "the model's own",
            rembg_path.is_file,
            lambda: BackgroundRemover.load(settings, report),
            pullable(settings),
        ),
        ModelEntry(
            "face_swap (pack)",
            "LIVEPIX_FACE_MODEL_DIR",
            settings.face_model_dir or "(not set: no default, licence)",
            "insightface packs: non-commercial research only",
            lambda: bool(settings.face_model_dir) and Path(settings.face_model_dir).is_dir(),
            lambda: FaceSwapper.load(settings),
            False,
        ),
        ModelEntry(
            "face_swap (swapper)",
            "LIVEPIX_SWAPPER_MODEL",
            settings.swapper_model or "(not set: no default, licence)",
            "inswapper_128: non-commercial research only",
            lambda: bool(settings.swapper_model) and Path(settings.swapper_model).is_file(),
            lambda: FaceSwapper.load(settings),
            False,
        ),
        ModelEntry(
            "object_removal (lama)",
            "LIVEPIX_LAMA_MODEL",
            "none (OpenCV telea/ns only)" if lama_off else settings.lama_model.strip(),
            "none" if lama_off else lama_licence,
            lambda: lama_off or model_path(settings).is_file(),
            lama_load,
            not lama_off and is_url(settings.lama_model.strip()),
        ),
    ]


def list_models(settings: Settings, check: bool) -> int:
    """Print the catalogue; with `check`, try loading each present model."""
    failures = 0
    for entry in catalogue(settings):
        present = entry.present()
        line = f"{entry.name:<34} {entry.setting:<24} {'present' if present else 'absent':<8}"
        if check and present:
            try:
                entry.load()
                line += " loadable"
            except TaskFailedError as exc:
                failures += 1
                line += f" NOT loadable: {exc.message}"
        print(f"{line}\n    {entry.value}\n    licence: {entry.licence}")
    return 1 if failures else 0


def pull_models(settings: Settings) -> int:
    """Fetch every configured model that can be fetched into the data dir."""
    failures = 0
    report = TerminalReport()
    for entry in catalogue(settings, report):
        if not entry.pullable:
            continue
        if entry.present():
            print(f"{entry.name}: already present")
            continue
        print(f"{entry.name}: fetching {entry.value} ...", flush=True)
        try:
            entry.load()
            report.end_line()
            print(f"{entry.name}: ready")
        except TaskFailedError as exc:
            report.end_line()
            failures += 1
            print(f"{entry.name}: failed: {exc.message}")
    return 1 if failures else 0
