"""`livepix models`: what is configured, present and loadable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from livepix.config import DEFAULT_LAMA_MODEL
from tests.fake_hub import FakeHub, FileServer, serving
from tests.models import build_tiny_u2net
from tests.models_diffusion import build_tiny_sd, build_tiny_taesd
from tests.models_lama import build_tiny_lama


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("sd-cli") / "tiny-sd")


@pytest.fixture(scope="module")
def tiny_taesd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_taesd(tmp_path_factory.mktemp("taesd-cli") / "tiny-taesd")


def livepix(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    full.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "livepix", *args],
        env=full, capture_output=True, text=True, timeout=180, check=False,
    )


def test_models_list_check_loads_what_is_present(data_dir: Path, tiny_sd_dir: Path, tiny_taesd_dir: Path) -> None:
    out = livepix(
        "models", "list", "--check",
        LIVEPIX_DATA_DIR=str(data_dir), LIVEPIX_TXT2IMG_MODEL=str(tiny_sd_dir),
        LIVEPIX_PREVIEW_MODEL=str(tiny_taesd_dir),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if not line.startswith(" ")}
    assert lines["image_generation,"].endswith("present  loadable")
    assert lines["previews"].endswith("present  loadable")
    assert lines["background_removal"].endswith("present  loadable")
    assert "absent" in out.stdout.split("LIVEPIX_FACE_MODEL_DIR")[1].splitlines()[0]
    assert "non-commercial" in out.stdout
    # LaMa by default: the shared data dir holds a tiny one where its fetched copy goes.
    lama = out.stdout.split("object_removal (lama)")[1].splitlines()
    assert lama[0].endswith("present  loadable")
    assert lama[1].strip() == DEFAULT_LAMA_MODEL
    assert lama[2].strip().startswith("licence: Apache-2.0")


def test_models_list_knows_the_lama_default_and_its_opt_out(tmp_path: Path) -> None:
    out = livepix("models", "list", LIVEPIX_DATA_DIR=str(tmp_path))
    lama = out.stdout.split("object_removal (lama)")[1].splitlines()
    assert "LIVEPIX_LAMA_MODEL" in lama[0] and "absent" in lama[0]
    assert lama[1].strip() == DEFAULT_LAMA_MODEL
    off = livepix("models", "list", "--check", LIVEPIX_DATA_DIR=str(tmp_path), LIVEPIX_LAMA_MODEL="none")
    lama = off.stdout.split("object_removal (lama)")[1].splitlines()
    assert lama[0].endswith("present  loadable")  # nothing to fetch or load
    assert lama[1].strip() == "none (OpenCV telea/ns only)"


def test_models_list_reports_a_broken_model_and_fails(tmp_path: Path) -> None:
    broken = tmp_path / "models" / "rembg" / "models" / "u2net" / "u2net.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not an onnx graph")
    out = livepix("models", "list", "--check", LIVEPIX_DATA_DIR=str(tmp_path))
    assert out.returncode == 1
    assert "NOT loadable" in out.stdout


def test_models_pull_skips_what_is_present(data_dir: Path, tiny_sd_dir: Path) -> None:
    out = livepix(
        "models", "pull", LIVEPIX_DATA_DIR=str(data_dir), LIVEPIX_TXT2IMG_MODEL=str(tiny_sd_dir),
        LIVEPIX_PREVIEW_MODEL="latent",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "background_removal: already present" in out.stdout
    assert "object_removal (lama): already present" in out.stdout


def test_models_pull_shows_the_bytes_of_each_download_and_list_loads_them_offline(
    tiny_sd_dir: Path, tmp_path: Path
) -> None:
    """The same fetch code as a task's, printed: a loopback hub and file server, no network."""
    onnx = build_tiny_u2net(tmp_path / "src" / "tiny.onnx", 400_000).read_bytes()
    lama = build_tiny_lama(tmp_path / "src" / "big-lama.pt").read_bytes()
    repo = "livepix-test/tiny-sd"
    env = {"LIVEPIX_DATA_DIR": str(tmp_path / "data"), "LIVEPIX_TXT2IMG_MODEL": repo, "LIVEPIX_PREVIEW_MODEL": "latent"}
    with (
        serving(FakeHub(repo, tiny_sd_dir)) as hub,
        serving(FileServer({"/tiny.onnx": onnx, "/big-lama.pt": lama})) as files,
    ):
        env["LIVEPIX_REMBG_MODEL"] = f"{files.url}/tiny.onnx"
        env["LIVEPIX_LAMA_MODEL"] = f"{files.url}/big-lama.pt"
        out = livepix(
            "models", "pull", HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.url, HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_IMPLICIT_TOKEN="1", **env,
        )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "image_generation, style_transfer: ready" in lines
    assert "background_removal: ready" in lines
    assert "object_removal (lama): ready" in lines
    lama_mb = f"{len(lama) / 1_000_000:.1f} MB"
    assert f"    Fetching the LaMa model big-lama.pt: {lama_mb} of {lama_mb}" in lines, out.stdout
    hub_bytes = [line for line in lines if re.fullmatch(rf"    Fetching {repo}: [\d.]+ MB of [\d.]+ MB", line)]
    onnx_bytes = [line for line in lines if re.fullmatch(r"    Fetching the rembg model tiny.onnx: [\d.]+ MB of 0.4 MB", line)]
    assert len(hub_bytes) >= 2 and len(onnx_bytes) >= 2, out.stdout

    # The hosts are gone and the hub is off limits: the fetched copies load.
    listed = livepix("models", "list", "--check", **env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    status = {line.split()[0]: line for line in listed.stdout.splitlines() if not line.startswith(" ")}
    assert status["image_generation,"].endswith("present  loadable")
    assert status["background_removal"].endswith("present  loadable")
    assert status["object_removal"].endswith("present  loadable")


def test_models_pull_fetches_the_preview_decoder_and_list_loads_it_offline(
    tiny_sd_dir: Path, tiny_taesd_dir: Path, tmp_path: Path
) -> None:
    repo = "livepix-test/tiny-taesd"
    env = {
        "LIVEPIX_DATA_DIR": str(tmp_path / "data"),
        "LIVEPIX_TXT2IMG_MODEL": str(tiny_sd_dir),
        "LIVEPIX_REMBG_MODEL": str(build_tiny_u2net(tmp_path / "tiny.onnx", 1000)),
        "LIVEPIX_PREVIEW_MODEL": repo,
        "LIVEPIX_LAMA_MODEL": "none",  # this test is about the decoder: no LaMa to fetch
    }
    absent = livepix("models", "pull", **env)  # offline, nothing cached
    assert absent.returncode == 1
    assert "previews (image_generation, style_transfer): failed: the preview model" in absent.stdout
    hub_args = {"HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}
    with serving(FakeHub("livepix-test/another-model", tiny_taesd_dir)) as other:
        unknown = livepix("models", "pull", HF_ENDPOINT=other.url, **hub_args, **env)
    assert unknown.returncode == 1  # the hub answers, but has no such repo
    assert f"the preview model '{repo}' could not be loaded" in unknown.stdout
    with serving(FakeHub(repo, tiny_taesd_dir)) as hub:
        out = livepix("models", "pull", HF_ENDPOINT=hub.url, **hub_args, **env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "previews (image_generation, style_transfer): ready" in out.stdout.splitlines()
    listed = livepix("models", "list", "--check", **env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    status = {line.split()[0]: line for line in listed.stdout.splitlines() if not line.startswith(" ")}
    assert status["previews"].endswith("present  loadable")
    assert "licence: the model's own" in listed.stdout.split("LIVEPIX_PREVIEW_MODEL")[1]
