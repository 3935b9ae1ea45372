"""Image generation and style transfer with diffusers, sharing one set of weights.

`LIVEPIX_TXT2IMG_MODEL` is a Hugging Face model id or a local diffusers directory
(default `stable-diffusion-v1-5/stable-diffusion-v1-5`, CreativeML OpenRAIL-M, which
allows commercial use under its use restrictions). Hub models are cached under
`<data dir>/models/huggingface`; the task that fetches one reports its bytes (`hub`).
Style transfer is img2img built with `from_pipe`: the same modules, no second copy of
the weights.

Every denoising step reports progress (and so is a cancel point: the exception raised
by `report` leaves the pipeline before the VAE decode) with a preview of its latents
(`preview.py`: a TAESD by default).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from PIL import Image

from livepix.config import Settings
from livepix.wire import STYLE_PRESETS

from ..errors import InvalidImageError, OutOfMemoryError
from . import EngineInput, EngineOutput, Report
from .device import Device, free_cuda_memory, is_out_of_memory, pick_device
from .download import Progress
from .hub import load_pretrained, model_source, progress_of
from .preview import Previewer, load_previewer

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
STYLE_MAX_SIDE = 768  # img2img input is scaled down to this; SD1.x is trained near 512


def image_model(settings: Settings) -> tuple[str, bool]:
    """(what to load, whether it is a local directory) for LIVEPIX_TXT2IMG_MODEL."""
    return model_source(settings.txt2img_model or DEFAULT_MODEL)


class Diffusion:
    """A loaded text-to-image pipeline and its img2img sibling."""

    def __init__(self, txt2img: Any, model: str, device: Device, preview: Previewer) -> None:
        from diffusers import AutoPipelineForImage2Image

        self.txt2img = txt2img
        self.img2img = AutoPipelineForImage2Image.from_pipe(txt2img)
        self.img2img.set_progress_bar_config(disable=True)
        self.model = model
        self.device = device
        self.preview = preview
        # Pipelines keep per-call state (the scheduler): one run at a time.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, settings: Settings, report: Report) -> Diffusion:
        import torch
        from diffusers import AutoPipelineForText2Image

        device = pick_device(settings.device)

        def load(source: str, **options: Any) -> Any:
            return AutoPipelineForText2Image.from_pretrained(source, dtype=device.dtype, **options)  # type: ignore[no-untyped-call]

        @contextmanager
        def fetching(source: str) -> Iterator[None]:
            report(2, f"Fetching {source} into the data dir (first use; several GB)")
            with progress_of(Progress(report, source, 2, 4)):  # denoising reports from 4 on
                yield

        source, local = image_model(settings)
        pipe = load_pretrained(load, source, local, "LIVEPIX_TXT2IMG_MODEL", "image model", settings, fetching)
        pipe.set_progress_bar_config(disable=True)
        pipe = pipe.to(device.name)
        log.info("diffusion model %s on %s (%s)", source, device.name, torch.float16 if device.is_cuda else "fp32")
        return cls(pipe, source, device, load_previewer(settings, device, report))

    def generate(self, task: EngineInput, report: Report) -> EngineOutput:
        params = task.parameters
        seed = params.get("seed")
        seed = random.randrange(2**32) if seed is None else int(seed)
        steps = int(params["steps"])
        count = int(params.get("num_outputs") or 1)
        outcome = self._run(
            self.txt2img,
            report,
            "Denoising",
            prompt=task.prompt,
            negative_prompt=params.get("negative_prompt") or None,
            width=int(params["width"]),
            height=int(params["height"]),
            num_inference_steps=steps,
            guidance_scale=float(params["guidance_scale"]),
            num_images_per_prompt=count,
            generator=self._generators(seed, count),
        )
        return EngineOutput(
            image=outcome[0],
            more=outcome[1:],
            metadata={"model": self.model, "seed": seed, **self._seeds(seed, count), "device": self.device.name,
                      "parameters": {**params, "seed": seed}},
            prompt_used=task.prompt,
        )

    def stylize(self, task: EngineInput, report: Report) -> EngineOutput:
        if task.image is None:
            raise InvalidImageError("style_transfer needs an image")
        params = task.parameters
        style = params.get("style")
        prompt = ", ".join(p for p in (task.prompt, STYLE_PRESETS.get(style or "")) if p)
        seed = params.get("seed")
        seed = random.randrange(2**32) if seed is None else int(seed)
        count = int(params.get("num_outputs") or 1)
        image = fit_for_diffusion(task.image.convert("RGB"), STYLE_MAX_SIDE)
        outcome = self._run(
            self.img2img,
            report,
            "Restyling",
            prompt=prompt,
            image=image,
            strength=float(params["strength"]),
            num_inference_steps=int(params["steps"]),
            guidance_scale=float(params["guidance_scale"]),
            num_images_per_prompt=count,
            generator=self._generators(seed, count),
        )
        return EngineOutput(
            image=outcome[0],
            more=outcome[1:],
            metadata={
                "model": self.model,
                "seed": seed,
                **self._seeds(seed, count),
                "style": style,
                "device": self.device.name,
                "input_size": list(task.image.size),
                "output_size": list(outcome[0].size),
                "parameters": {**params, "seed": seed},
            },
            prompt_used=prompt,
        )

    @staticmethod
    def _seeds(seed: int, count: int) -> dict[str, list[int]]:
        """The seed of each output (`seeds`), when there are several."""
        return {"seeds": [(seed + i) % 2**32 for i in range(count)]} if count > 1 else {}

    def _generators(self, seed: int, count: int) -> list[Any]:
        import torch

        # A CPU generator gives the same noise for a seed on every device; one per output,
        # so that output i starts from the noise a task with seed + i alone would use.
        return [torch.Generator("cpu").manual_seed((seed + i) % 2**32) for i in range(count)]

    def _run(self, pipe: Any, report: Report, verb: str, **kwargs: Any) -> list[Image.Image]:
        import torch

        def on_step(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            total = int(getattr(pipeline, "num_timesteps", 0) or kwargs["num_inference_steps"])
            done = step + 1
            latents = tensors.get("latents")
            if latents is not None and latents.is_cuda:
                # Finish the step on the GPU here, so that the recorder times a preview's
                # decode, not the rest of the step (it spaces out slow previews).
                torch.cuda.synchronize(latents.device)
            report(
                5 + 88 * done / total,
                f"{verb} step {done}/{total}",
                step=done,
                total=total,
                preview=(lambda: self.preview(latents)) if latents is not None else None,
            )
            return tensors

        with self._lock:
            report(4, f"{verb}")
            try:
                with torch.inference_mode():
                    out = pipe(
                        callback_on_step_end=on_step,
                        callback_on_step_end_tensor_inputs=["latents"],
                        **kwargs,
                    )
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
                free_cuda_memory()
                raise OutOfMemoryError(
                    "the device ran out of memory; try a smaller size or fewer concurrent tasks"
                ) from exc
        images: list[Image.Image] = list(out.images)
        return images


def fit_for_diffusion(image: Image.Image, max_side: int) -> Image.Image:
    """Scale down to `max_side` and round each side down to a multiple of 8 (min 64)."""
    scale = min(1.0, max_side / max(image.size))
    width = max(64, int(image.width * scale) // 8 * 8)
    height = max(64, int(image.height * scale) // 8 * 8)
    if (width, height) == image.size:
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)


class ImageGenerator:
    """The `image_generation` engine: the shared `Diffusion` in text-to-image mode."""

    def __init__(self, diffusion: Diffusion) -> None:
        self.diffusion = diffusion

    def run(self, task: EngineInput, report: Report) -> EngineOutput:
        return self.diffusion.generate(task, report)


class StyleTransfer:
    """The `style_transfer` engine: the shared `Diffusion` in img2img mode."""

    def __init__(self, diffusion: Diffusion) -> None:
        self.diffusion = diffusion

    def run(self, task: EngineInput, report: Report) -> EngineOutput:
        return self.diffusion.stylize(task, report)
