"""The model catalogue behind `livepix models list` and `livepix models pull`.

One entry per model a worker may load: its setting, what it resolves to, whether the
files are present, and (with `--check`) whether the engine actually loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from livepix.config import Settings

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


def catalogue(settings: Settings) -> list[ModelEntry]:
    from .engines.background import COMMERCIAL_MODELS, BackgroundRemover, model_file
    from .engines.diffusion import Diffusion, hub_cache, model_source
    from .engines.faceswap import FaceSwapper

    source, local = model_source(settings)
    rembg_path = model_file(settings)
    report: Report = _silent

    def diffusion_present() -> bool:
        if local:
            return (Path(source) / "model_index.json").is_file()
        return (hub_cache(settings) / f"models--{source.replace('/', '--')}").is_dir()

    def lama_load() -> object:
        from .engines.lama import LamaInpainter

        return LamaInpainter.load(settings)

    lama = settings.lama_model.strip()
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
            "background_removal",
            "LIVEPIX_REMBG_MODEL",
            settings.rembg_model,
            "Apache-2.0" if settings.rembg_model in COMMERCIAL_MODELS else "the model's own",
            rembg_path.is_file,
            lambda: BackgroundRemover.load(settings),
            rembg_path.suffix == ".onnx" and settings.rembg_model == rembg_path.stem,
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
            lama or "(not set: OpenCV telea/ns only)",
            "the LaMa weights' own (LaMa code: Apache-2.0); no default",
            lambda: bool(lama) and (lama.startswith(("http://", "https://")) or Path(lama).is_file()),
            lama_load,
            lama.startswith(("http://", "https://")),
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
    for entry in catalogue(settings):
        if not entry.pullable:
            continue
        if entry.present():
            print(f"{entry.name}: already present")
            continue
        print(f"{entry.name}: fetching {entry.value} ...", flush=True)
        try:
            entry.load()
            print(f"{entry.name}: ready")
        except TaskFailedError as exc:
            failures += 1
            print(f"{entry.name}: failed: {exc.message}")
    return 1 if failures else 0
