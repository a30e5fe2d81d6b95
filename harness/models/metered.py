"""A model wrapper that counts forward passes and the time spent in them."""
from __future__ import annotations

import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Metered(torch.nn.Module):
    """Delegates to `model`; `calls` and `seconds` accumulate over forwards (CUDA synchronised around each)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.inner = model
        self.calls, self.seconds = 0, 0.0

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, *args, **kwargs):
        synchronize(self.inner.device)
        start = time.perf_counter()
        out = self.inner(*args, **kwargs)
        synchronize(self.inner.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out
