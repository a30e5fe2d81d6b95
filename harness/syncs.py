"""Counting host synchronisations: the tensor operations that make the host wait for the device (a value read
back, or an output whose shape depends on the data), so that a decode's per-step count can be measured on any
device, this CPU included, where nothing actually waits.

    with count_host_syncs() as syncs:
        generate(model, prompts, config)
    print(syncs.total, syncs.counts)

Counted: `item`, `tolist`, `numpy`, `cpu`, `bool()` / `int()` / `float()` / `__index__` of a tensor,
`nonzero` / `torch.nonzero`, `unique`, `masked_select`, and indexing (`x[m]`, `x[m] = v`) with a boolean
tensor (a data-dependent shape). Operations nested inside a counted one count once. On CUDA,
`torch.cuda.set_sync_debug_mode("warn")` reports the syncs the driver sees, for comparison.

`python -m harness.syncs` prints syncs per step of the embedded default's decodes (baseline and threshold 0.9,
with and without the dual cache).
"""
from __future__ import annotations

import functools
from collections import Counter
from contextlib import contextmanager

import torch
from torch import Tensor

_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "nonzero",
            "unique", "masked_select")
_FUNCTIONS = ("nonzero", "unique", "masked_select")


class HostSyncs:
    """What `count_host_syncs` saw: `counts` per operation name, and their `total`."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._depth = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def wrap(self, name: str, original, condition=None):
        @functools.wraps(original)
        def counted(*args, **kwargs):
            if self._depth == 0 and (condition is None or condition(*args)):
                self.counts[name] += 1
            self._depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                self._depth -= 1
        return counted


def _boolean_index(_tensor, index, *_value) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(part, Tensor) and part.dtype == torch.bool for part in parts)


@contextmanager
def count_host_syncs():
    """Count, while the block runs, the tensor operations that synchronise the host with the device."""
    syncs = HostSyncs()
    patched = [(owner, name, owner.__dict__.get(name)) for owner, names in
               ((Tensor, _METHODS + ("__getitem__", "__setitem__")), (torch, _FUNCTIONS)) for name in names]
    try:
        for owner, name, _ in patched:
            condition = _boolean_index if name in ("__getitem__", "__setitem__") else None
            label = {"__getitem__": "x[bool]", "__setitem__": "x[bool] = v"}.get(name, name)
            setattr(owner, name, syncs.wrap(label, getattr(owner, name), condition))
        yield syncs
    finally:
        for owner, name, own in patched:  # put back what the class itself defined, or uncover the inherited one
            if own is None:
                delattr(owner, name)
            else:
                setattr(owner, name, own)


def main() -> None:
    from .decoding import DecodeConfig, generate
    from .models import load_model

    model = load_model("tiny")
    print("| decode (embedded default, prompt 32, G 64, B 32) | batch | steps | host syncs | per step | by op |")
    print("|---|---|---|---|---|---|")
    for batch in (1, 4):
        prompts = torch.randint(0, min(model.mask_token_id, model.eos_token_id), (batch, 32),
                                generator=torch.Generator().manual_seed(0))
        for label, settings in (("baseline", {}), ("baseline + dual", dict(cache="dual")),
                                ("threshold 0.9", dict(strategy="threshold", threshold=0.9)),
                                ("threshold 0.9 + dual", dict(strategy="threshold", threshold=0.9, cache="dual"))):
            config = DecodeConfig.create(gen_length=64, block_length=32, **settings)
            with count_host_syncs() as syncs:
                out = generate(model, prompts, config)
            steps = len(out.tokens_per_step[0]) if batch == 1 else int(out.steps_per_block.amax(0).sum())
            ops = ", ".join(f"{name} {n}" for name, n in syncs.counts.most_common())
            print(f"| {label} | {batch} | {steps} | {syncs.total} | {syncs.total / steps:.2f} | {ops} |", flush=True)


if __name__ == "__main__":
    main()
