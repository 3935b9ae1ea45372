"""A tiny TorchScript module with LaMa's signature, built at test time (no weights committed).

forward(image 1x3xHxW in [0, 1], mask 1x1xHxW in {0, 1}) -> 1x3xHxW in [0, 1]: masked
pixels become the per-channel mean of the unmasked ones plus a small random-weight
convolution of the image, so that it is a real network that changes the hole. Like
big-lama.pt, it refuses sides that are not multiples of 8, so the engine must pad.

With `keep_bytes`, the module keeps a buffer that big (on the image's device) from its
first run on: memory that the loaded engine holds until it is freed, standing in for
the weights of a big model while the file stays tiny. The buffer is never written, so
on the CPU it takes address space, not physical memory.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


class TinyLama(nn.Module):
    def __init__(self, keep_bytes: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 3, kernel_size=3, padding=1)
        self.keep_bytes = keep_bytes
        self.register_buffer("kept", torch.empty(0, dtype=torch.uint8), persistent=False)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if image.shape[2] % 8 != 0 or image.shape[3] % 8 != 0:
            raise ValueError("LaMa needs sides that are multiples of 8")
        if self.kept.numel() < self.keep_bytes:
            self.kept = torch.empty(self.keep_bytes, dtype=torch.uint8, device=image.device)
        known = 1.0 - mask
        count = known.sum(dim=(2, 3), keepdim=True).clamp(min=1.0)
        mean = (image * known).sum(dim=(2, 3), keepdim=True) / count
        detail = 0.05 * torch.tanh(self.conv(torch.cat([image * known, mask], dim=1)))
        filled = (mean + detail).clamp(0.0, 1.0)
        return image * known + filled * mask


def build_tiny_lama(path: Path, seed: int = 0, keep_bytes: int = 0) -> Path:
    """Script `TinyLama` with random weights and save it at `path`; load it with torch.jit.load."""
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript; big-lama.pt is TorchScript all the same.
        warnings.filterwarnings("ignore", message=".*torch.jit", category=DeprecationWarning)
        scripted = torch.jit.script(TinyLama(keep_bytes).eval())
        scripted.save(str(path))  # type: ignore[no-untyped-call]
    return path
