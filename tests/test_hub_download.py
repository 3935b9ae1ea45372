"""Byte progress of hub downloads, in process: the `snapshot_download` that diffusers
calls, run for real (its download threads included) against a loopback fake hub."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.engines.download import Progress
from actors.engines.hub import DIFFUSERS_MODULE, progress_of
from actors.errors import TaskCancelledError
from tests.fake_hub import FakeHub, serving
from tests.models_diffusion import build_tiny_sd
from tests.test_download import recorder

REPO = "livepix-test/tiny-sd"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    folder = build_tiny_sd(tmp_path_factory.mktemp("hub-unit") / "tiny-sd")
    with serving(FakeHub(REPO, folder, bytes_per_s=1_000_000)) as server:
        assert isinstance(server, FakeHub)
        yield server


@pytest.fixture(autouse=True)
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def snapshot(hub: FakeHub, cache: Path) -> str:
    import importlib

    module: Any = importlib.import_module(DIFFUSERS_MODULE)
    folder: str = module.snapshot_download(REPO, cache_dir=str(cache), endpoint=hub.url, token=False)
    return folder


def test_a_snapshot_reports_the_bytes_written_of_its_total(hub: FakeHub, tmp_path: Path) -> None:
    seen: list[tuple[float, str]] = []
    progress = Progress(recorder(seen), REPO, 2, 4)
    with progress_of(progress) as active:
        assert active
        folder = snapshot(hub, tmp_path)
    assert (Path(folder) / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert progress.total == progress.done == hub.total_bytes()
    total = f"{hub.total_bytes() / 1e6:.1f} MB"
    assert seen[-1] == (4, f"Fetching {REPO}: {total} of {total}")
    assert all(re.fullmatch(rf"Fetching {REPO}: [\d.]+ MB of {total}", m) for _, m in seen), seen
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)


def test_the_wrapper_is_removed_afterwards(hub: FakeHub) -> None:
    import importlib

    module = importlib.import_module(DIFFUSERS_MODULE)
    before = module.snapshot_download
    with progress_of(Progress(recorder([]), REPO, 2, 4)):
        assert module.snapshot_download is not before
    assert module.snapshot_download is before


def test_an_exception_raised_by_report_leaves_the_download_threads(hub: FakeHub, tmp_path: Path) -> None:
    """A cancel raised in a download thread surfaces in the caller's thread."""
    calls = 0

    def report(percent: float, message: str, **_: Any) -> None:
        nonlocal calls
        calls += 1
        raise TaskCancelledError("cancelled")

    with progress_of(Progress(report, REPO, 2, 4)), pytest.raises(TaskCancelledError):
        snapshot(hub, tmp_path)
    assert calls == 1  # later updates re-raise without reporting
    weights = tmp_path / f"models--{REPO.replace('/', '--')}" / "snapshots"
    assert not list(weights.rglob("diffusion_pytorch_model.safetensors"))


def test_without_a_tqdm_class_parameter_the_download_runs_as_before_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import importlib

    def snapshot_download(repo_id: str, **options: Any) -> str:  # an older huggingface_hub
        return repo_id

    module = importlib.import_module(DIFFUSERS_MODULE)
    monkeypatch.setattr(module, "snapshot_download", snapshot_download)
    with progress_of(Progress(recorder([]), REPO, 2, 4)) as active:
        assert not active
        assert module.snapshot_download is snapshot_download
    assert "no byte progress" in caplog.text
