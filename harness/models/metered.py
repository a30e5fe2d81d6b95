"""A model wrapper that counts forward passes and the time spent in them."""
from __future__ import annotations

import statistics
import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model, run, repeats: int, calls_per_sample: int = 1) -> float:
    """Median seconds of one `run()` over `repeats` samples after one warm-up, CUDA synchronised around each
    sample; a sample times `calls_per_sample` calls, so that the clock's own cost vanishes from microsecond runs."""
    run()
    device, times = model.device, []  # resolved once: `model.device` alone costs microseconds
    calls = range(calls_per_sample)
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in calls:
            run()
        synchronize(device)
        times.append((time.perf_counter() - start) / calls_per_sample)
    return statistics.median(times)


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
