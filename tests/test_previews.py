"""Preview decoders (actors/engines/preview.py) on tiny random-weight models: what a
progress event's preview is made of, and how it falls back without failing a task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from actors.engines.device import pick_device
from actors.engines.preview import TinyDecoder, latents_preview, load_decoder, load_previewer
from actors.errors import ModelUnavailableError
from livepix.config import Settings
from tests.models_diffusion import build_tiny_sd, build_tiny_taesd

CPU = pick_device("cpu")


def quiet(*_: object, **__: object) -> None:
    pass


def settings(preview_model: str) -> Settings:
    return Settings(redis_url="redis://unused", preview_model=preview_model)


@pytest.fixture(scope="module")
def tiny_taesd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_taesd(tmp_path_factory.mktemp("taesd-unit") / "tiny-taesd")


def test_a_taesd_decodes_no_more_than_the_preview_shows(tiny_taesd: Path) -> None:
    decoder = load_decoder(settings(str(tiny_taesd)), CPU, quiet)
    with torch.inference_mode():
        assert decoder(torch.randn(1, 4, 32, 32)).size == (64, 64)  # small: as is (2x)
        assert decoder(torch.randn(1, 4, 300, 200)).size == (170, 256)  # pooled, aspect kept
        # a batch of two: side by side, each pooled to half the preview
        assert decoder(torch.randn(2, 4, 260, 260)).size == (256, 128)
        assert decoder(torch.randn(4, 4, 260, 260)).size == (256, 256)  # two by two


def test_an_sd_vae_is_not_taken_for_a_taesd(tmp_path: Path) -> None:
    """An AutoencoderKL loads as an AutoencoderTiny with random weights: refused."""
    vae_dir = build_tiny_sd(tmp_path / "tiny-sd") / "vae"
    with pytest.raises(ModelUnavailableError, match="not a TAESD"):
        load_decoder(settings(str(vae_dir)), CPU, quiet)
    assert load_previewer(settings(str(vae_dir)), CPU, quiet) is latents_preview


def test_without_a_decoder_previews_come_from_the_latents(tmp_path: Path) -> None:
    assert load_previewer(settings("latent"), CPU, quiet) is latents_preview
    assert load_previewer(settings("Latent"), CPU, quiet) is latents_preview
    assert load_previewer(settings(str(tmp_path / "missing")), CPU, quiet) is latents_preview
    image = latents_preview(torch.randn(1, 4, 32, 32))
    assert image is not None and image.size == (128, 128)


def test_a_decode_that_fails_falls_back_to_the_latents_from_then_on(
    tiny_taesd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoder = load_decoder(settings(str(tiny_taesd)), CPU, quiet)
    assert isinstance(decoder, TinyDecoder)
    calls = []

    def broken(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise RuntimeError("Given groups=1, weight of size [8, 4, 3, 3], expected input ...")

    monkeypatch.setattr(decoder.vae, "decode", broken)
    with torch.inference_mode():
        first = decoder(torch.randn(1, 4, 32, 32))
        second = decoder(torch.randn(1, 4, 32, 32))
    assert first is not None and first.size == (128, 128)  # the projection
    assert second is not None and second.size == (128, 128)
    assert len(calls) == 1  # not tried again
