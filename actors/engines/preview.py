"""Previews of a denoising step: what the `preview` of a progress event shows.

`LIVEPIX_PREVIEW_MODEL` (default `madebyollin/taesd`, MIT) names a TAESD, a tiny
autoencoder (diffusers `AutoencoderTiny`, ~10 MB) that decodes a step's latents into a
picture close to the final image. Previews are sent at most 256 px wide, so the latents
are first pooled to what decodes to that size: the cost stays that of a 256 px decode
whatever the image size (about 0.25 s on a 2-core CPU), and the recorder spaces out
previews that slow to a tenth of the task's time (actors/recorder.py). With `latent`,
or when that model cannot be loaded or decoded, a 4x3 projection of the latents gives
a blurry thumbnail for free: a task never fails for its preview.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from PIL import Image

from livepix.config import Settings

from ..errors import ModelUnavailableError
from ..recorder import PREVIEW_MAX_SIDE
from . import Report
from .device import Device, free_cuda_memory, is_out_of_memory
from .hub import load_pretrained, model_source

log = logging.getLogger(__name__)

LATENT = "latent"  # LIVEPIX_PREVIEW_MODEL for the projection only
PREVIEW_MIN_SIDE = 128  # a latent projection is scaled up to this

Previewer = Callable[[Any], Image.Image | None]  # latents (B, C, h, w) -> image

# SD latent space (4 channels) to RGB, from ComfyUI's SD1.5 preview factors.
LATENT_RGB = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)


def grid(images: list[Image.Image]) -> Image.Image:
    """One picture of a batch's images: side by side for two, two by two for three or four."""
    if len(images) == 1:
        return images[0]
    columns = 2
    rows = -(-len(images) // columns)
    width, height = images[0].size
    sheet = Image.new("RGB", (columns * width, rows * height))
    for i, image in enumerate(images):
        sheet.paste(image, ((i % columns) * width, (i // columns) * height))
    return sheet


def latents_preview(latents: Any) -> Image.Image | None:
    """A small RGB image from SD latents (B, 4, h, w): no decoder, a 4x3 projection; a
    batch as one grid."""
    import torch

    if latents.ndim != 4 or latents.shape[1] != len(LATENT_RGB):
        return None
    factors = torch.tensor(LATENT_RGB, dtype=torch.float32, device=latents.device)
    rgb = torch.einsum("bchw,cr->bhwr", latents.float(), factors).clamp(-1, 1)
    pixels = ((rgb + 1) * 127.5).to(torch.uint8).cpu().numpy()
    image = grid([Image.fromarray(one) for one in pixels])
    if min(image.size) < PREVIEW_MIN_SIDE:
        scale = -(-PREVIEW_MIN_SIDE // min(image.size))
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)
    return image


class TinyDecoder:
    """Previews decoded by a TAESD; the latent projection where it cannot decode."""

    def __init__(self, vae: Any, source: str) -> None:
        self.vae = vae
        self.source = source
        config = vae.config
        self.upscale = int(config.upsampling_scaling_factor) ** (len(config.decoder_block_out_channels) - 1)
        self._failed = False

    def __call__(self, latents: Any) -> Image.Image | None:
        if self._failed or latents.ndim != 4 or latents.shape[1] != self.vae.config.latent_channels:
            return latents_preview(latents)
        try:
            return self._decode(latents)
        except Exception as exc:  # noqa: BLE001 - a task never fails for its preview
            if is_out_of_memory(exc):
                free_cuda_memory()  # a passing shortage: try again next time
            else:
                log.warning("preview decoder %s failed (%s); previews from the latents", self.source, exc)
                self._failed = True
            return latents_preview(latents)

    def _decode(self, latents: Any) -> Image.Image:
        import torch
        import torch.nn.functional as F

        height, width = latents.shape[2:]
        # a batch shares the preview: two images per row
        side = PREVIEW_MAX_SIDE if latents.shape[0] == 1 else PREVIEW_MAX_SIDE // 2
        scale = side / (max(height, width) * self.upscale)
        if scale < 1:  # decode no more pixels than the preview shows
            size = (max(1, int(height * scale)), max(1, int(width * scale)))
            latents = F.interpolate(latents.float(), size=size, mode="area")
        # A TAESD takes the latents as the pipeline holds them (its scaling factor is 1).
        samples = self.vae.decode(latents.to(self.vae.device, self.vae.dtype)).sample
        pixels = ((samples.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return grid([Image.fromarray(one.permute(1, 2, 0).cpu().numpy()) for one in pixels])


def load_previewer(settings: Settings, device: Device, report: Report) -> Previewer:
    """The previewer `LIVEPIX_PREVIEW_MODEL` names; the latent projection if it is
    `latent` or its model cannot be had (logged: a task never fails for its preview)."""
    if is_latent(settings):
        return latents_preview
    try:
        return load_decoder(settings, device, report)
    except ModelUnavailableError as exc:
        log.warning("%s; previews from the latents", exc.message)
        return latents_preview


def is_latent(settings: Settings) -> bool:
    return settings.preview_model.strip().lower() in ("", LATENT)


def load_decoder(settings: Settings, device: Device, report: Report) -> TinyDecoder:
    """The TAESD of `LIVEPIX_PREVIEW_MODEL`, fetched into the data dir on first use (in
    one piece: ~10 MB, no byte progress); ModelUnavailableError if it cannot be had."""
    from diffusers import AutoencoderTiny

    def load(source: str, **options: Any) -> Any:
        vae, info = AutoencoderTiny.from_pretrained(  # type: ignore[no-untyped-call]
            source, dtype=device.dtype, output_loading_info=True, **options
        )
        if info["missing_keys"]:  # another kind of model (an SD VAE): its weights would be random
            raise ValueError(f"not a TAESD: {len(info['missing_keys'])} of its weights are missing")
        return vae.to(device.name).eval()

    @contextmanager
    def fetching(source: str) -> Iterator[None]:
        report(4, f"Fetching {source} into the data dir (preview decoder, first use)")
        yield

    source, local = model_source(settings.preview_model.strip())
    vae = load_pretrained(load, source, local, "LIVEPIX_PREVIEW_MODEL", "preview model", settings, fetching)
    log.info("preview decoder %s on %s", source, device.name)
    return TinyDecoder(vae, source)
