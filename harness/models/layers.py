"""Pieces every native dLLM shares: what the engine reads from a model (`NativeLM`), RMSNorm in fp32, half-split
RoPE, bidirectional grouped-query attention, and the KV cache the engine hands to a forward."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
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
        self.inputs: Tensor | None = None  # [batch, len] token ids last fed, where a model keeps them (Dream)

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
        out.inputs = None if self.inputs is None else self.inputs[rows]
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


def apply_rope(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    cos, sin = rope
    return x * cos + rotate_half(x) * sin


def attend(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, cache: KVCache | None, layer: int,
           start: int) -> Tensor:
    """Bidirectional attention (no causal mask: only `key_mask` hides keys) of q [batch, heads, n, head_dim] over
    k, v, or over every cached key once k, v are stored at positions [start, start + n). A K/V head serves
    consecutive query heads (query head h reads K/V head h // group, as HF's `repeat_kv`)."""
    if cache is not None:
        k, v = cache.update(layer, start, k, v)
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)


def sdpa_mask(attention_mask: Tensor | None) -> Tensor | None:
    """A [batch, keys] or [batch, queries, keys] mask (True/1: may attend) as SDPA's bool mask over the heads."""
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    return mask[:, None, None, :] if mask.dim() == 2 else mask[:, None]


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), with the Hugging Face names (Dream's MLP, LLaDA2's dense FFN and experts)."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, width, bias=False)  # the SiLU branch
        self.up_proj = nn.Linear(dim, width, bias=False)
        self.down_proj = nn.Linear(width, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class NativeLM(nn.Module):
    """Base of the native models: what the decoding engine reads (from `self.config`: mask/eos ids, vocabulary
    size, max length) and the RoPE tables (from its `rope_theta` and `head_dim`)."""

    supports_cache = True
    block_diffusion = False  # a bidirectional canvas

    def reset_buffers(self) -> None:
        """Compute the non-persistent buffers (RoPE frequencies) on the weights' device (after a meta build)."""
        cfg = self.config
        exponents = torch.arange(0, cfg.head_dim, 2, dtype=torch.float32, device=self.device) / cfg.head_dim
        self.register_buffer("inv_freq", 1.0 / cfg.rope_theta ** exponents, persistent=False)

    @property
    def mask_token_id(self) -> int:
        return self.config.mask_token_id

    @property
    def eos_token_id(self) -> int:
        return self.config.eos_token_id

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_length(self) -> int:
        return self.config.max_length

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """fp32 cos, sin for token positions ([n] shared by the batch, or [batch, n])."""
        angles = positions.to(self.inv_freq.device, torch.float32)[..., None] * self.inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        if angles.dim() == 3:  # per row: broadcast over the heads
            angles = angles[:, None]
        return angles.cos(), angles.sin()


def fill_random(module: nn.Module, seed: int, dtype: torch.dtype, device: str | torch.device) -> nn.Module:
    """Give `module` (built on meta or anywhere) seeded random weights on `device`, one tensor at a time in
    sorted-name order (parameters and persistent buffers): norm weights 1 + 0.2·N(0, 1), biases 0.5·N(0, 1), a
    router's `expert_bias` 0.1·N(0, 1), embeddings N(0, 1), other weights N(0, 1/fan_in) — the golden fixtures'
    scheme. Non-unit norms and non-zero biases make a loader that drops or swaps them fail."""
    embeddings = {f"{name}.weight" for name, m in module.named_modules() if isinstance(m, nn.Embedding)}
    generator = torch.Generator(device=device).manual_seed(seed)
    state = {}
    for name, tensor in sorted(module.state_dict().items()):
        noise = torch.randn(tensor.shape, generator=generator, device=device)
        if name.endswith("expert_bias"):
            noise = 0.1 * noise
        elif name.endswith(".bias"):
            noise = 0.5 * noise
        elif tensor.dim() == 1:
            noise = 1 + 0.2 * noise
        elif name not in embeddings:
            noise = noise / tensor.shape[1] ** 0.5
        state[name] = noise.to(dtype)
    module.load_state_dict(state, strict=True, assign=True)
    return module


def seeded_random(build: Callable[[], nn.Module], seed: int, dtype: torch.dtype,
                  device: str | torch.device) -> nn.Module:
    """The model `build()` makes, with `fill_random`'s weights, built straight on `device` (tests, benchmarks,
    the start of training): an 8B shape never needs a CPU copy."""
    with torch.device("meta"):
        model = build()
    fill_random(model, seed, dtype, device)
    if hasattr(model, "reset_buffers"):
        model.reset_buffers()  # non-persistent buffers were built on meta
    return model.eval().requires_grad_(False)
