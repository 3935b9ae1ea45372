"""Where models run: `LIVEPIX_DEVICE` (auto, cpu, cuda, cuda:N) and the matching dtype."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import EngineUnavailableError, says_out_of_memory


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
