"""`livepix models`: what is configured, present and loadable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models_diffusion import build_tiny_sd


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("sd-cli") / "tiny-sd")


def livepix(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    full.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "livepix", *args], env=full, capture_output=True, text=True, timeout=180
    )


def test_models_list_check_loads_what_is_present(data_dir: Path, tiny_sd_dir: Path) -> None:
    out = livepix(
        "models", "list", "--check",
        LIVEPIX_DATA_DIR=str(data_dir), LIVEPIX_TXT2IMG_MODEL=str(tiny_sd_dir),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if not line.startswith(" ")}
    assert lines["image_generation,"].endswith("present  loadable")
    assert lines["background_removal"].endswith("present  loadable")
    assert "absent" in out.stdout.split("LIVEPIX_FACE_MODEL_DIR")[1].splitlines()[0]
    assert "non-commercial" in out.stdout


def test_models_list_reports_a_broken_model_and_fails(tmp_path: Path) -> None:
    broken = tmp_path / "models" / "rembg" / "models" / "u2net" / "u2net.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not an onnx graph")
    out = livepix("models", "list", "--check", LIVEPIX_DATA_DIR=str(tmp_path))
    assert out.returncode == 1
    assert "NOT loadable" in out.stdout


def test_models_pull_skips_what_is_present(data_dir: Path, tiny_sd_dir: Path) -> None:
    out = livepix("models", "pull", LIVEPIX_DATA_DIR=str(data_dir), LIVEPIX_TXT2IMG_MODEL=str(tiny_sd_dir))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "background_removal: already present" in out.stdout
