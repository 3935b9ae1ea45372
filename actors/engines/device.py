"""Where models run: `LIVEPIX_DEVICE` (auto, cpu, cuda, cuda:N) and the matching dtype."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from livepix.config import Settings

from ..errors import EngineUnavailableError, TaskFailedError, says_out_of_memory

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Device:
    name: str  # "cpu", "cuda", "cuda:1"

    @property
    def is_cuda(self) -> bool:
        return self.name.startswith("cuda")

    @property
    def dtype(self) -> Any:
        """fp16 on CUDA, fp32 on the CPU (fp16 matmuls are slow or missing there)."""
        import torch

        return torch.float16 if self.is_cuda else torch.float32

    @property
    def onnx_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.is_cuda else ["CPUExecutionProvider"]


def pick_device(setting: str) -> Device:
    """Resolve `LIVEPIX_DEVICE`: `auto` takes CUDA when torch sees a GPU."""
    import torch

    setting = (setting or "auto").strip().lower()
    if setting == "auto":
        return Device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cpu":
        return Device("cpu")
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EngineUnavailableError(f"LIVEPIX_DEVICE={setting} but this worker sees no CUDA device")
        return Device(setting)
    raise EngineUnavailableError(f"LIVEPIX_DEVICE={setting!r} is not auto, cpu, cuda or cuda:N")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a CUDA (or CPU allocator) out-of-memory error from torch."""
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or says_out_of_memory(exc)


def free_cuda_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def limit_gpu_memory(settings: Settings) -> float | None:
    """Apply `LIVEPIX_GPU_MEMORY_FRACTION` to this process's CUDA device; the fraction
    applied, or None (unset, or the worker runs on the CPU: logged)."""
    fraction = settings.gpu_memory_fraction
    if fraction is None:
        return None
    try:
        device = pick_device(settings.device)
    except TaskFailedError as exc:  # its tasks will fail with the same words
        log.warning("LIVEPIX_GPU_MEMORY_FRACTION=%s not applied: %s", fraction, exc.message)
        return None
    if not device.is_cuda:
        log.info("LIVEPIX_GPU_MEMORY_FRACTION=%s ignored: this worker runs on the cpu", fraction)
        return None
    import torch

    index = torch.device(device.name).index
    index = torch.cuda.current_device() if index is None else index
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    total = torch.cuda.get_device_properties(index).total_memory
    log.info(
        "this worker may take %.0f%% of cuda:%d's memory (%.1f of %.1f GiB)",
        fraction * 100, index, fraction * total / 2**30, total / 2**30,
    )
    return fraction
