"""Pieces every native dLLM shares: RMSNorm in fp32, half-split RoPE, and the KV cache the engine hands to a
forward."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class KVCache:
    """Per-layer keys and values of the canvas positions [0, len(cache)), as of the forwards that wrote them.

    The first forward (from position 0) fills it. A forward over positions [start, start + n) writes its fresh
    K/V in place and attends to every cached key, so other positions are served from the forward that last
    wrote them: Fast-dLLM's prefix and dual caches differ only in which range the engine recomputes. A forward
    that reaches past the cached length extends it (block diffusion: the cache grows by a block, and a
    block-causal mask hides nothing cached from it).
    """

    def __init__(self) -> None:
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []

    def __len__(self) -> int:  # cached sequence length
        return self.keys[0].shape[2] if self.keys else 0

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store K/V [batch, heads, n, head_dim] of positions [start, start + n); return all cached K/V."""
        if layer == len(self.keys):  # filling: the first forward over the canvas
            if start != 0:
                raise ValueError("an empty KV cache is filled by a forward starting at position 0")
            self.keys.append(k)
            self.values.append(v)
            return k, v
        cached = self.keys[layer].shape[2]
        if start > cached:
            raise ValueError(f"a forward from position {start} would leave a gap after the {cached} cached ones")
        end = start + k.shape[2]
        if end > cached:
            self.keys[layer] = torch.cat([self.keys[layer][:, :, :start], k], 2)
            self.values[layer] = torch.cat([self.values[layer][:, :, :start], v], 2)
        else:
            self.keys[layer][:, :, start:end] = k
            self.values[layer][:, :, start:end] = v
        return self.keys[layer], self.values[layer]

    def select_rows(self, rows: Tensor) -> KVCache:
        """A cache for a subset of the batch rows (rows that finished a block stop being fed)."""
        out = KVCache()
        out.keys = [k[rows] for k in self.keys]
        out.values = [v[rows] for v in self.values]
        return out


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()  # normalise in fp32 whatever the weights' dtype, as the references do
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
