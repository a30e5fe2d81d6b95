"""Pieces every native dLLM shares: what the engine reads from a model (`NativeLM`), RMSNorm in fp32, half-split
RoPE, bidirectional grouped-query attention, and the KV cache the engine hands to a forward."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KVCache:
    """Per-layer keys and values of the canvas positions [0, len(cache)), as of the forwards that wrote them.

    Preallocated (gpt-fast style): at the first forward, one zeroed K buffer and one V buffer per layer of
    [batch, kv_heads, capacity, head_dim] (heads, head_dim, dtype and device from that forward's K/V; `batch`
    and `capacity` from the constructor, else from that forward), written in place from then on. The engine
    creates one per decode with `KVCache(batch, capacity)` sized for its whole canvas, so it is never
    reallocated; a cache built without a capacity (`KVCache()`) grows to fit, reallocating.

    A forward from position 0 (re)fills it: its rows become the cache's rows (the first `rows` of the buffers,
    a view: a refresh for fewer rows copies nothing) and its length the cached length. A forward over positions
    [start, start + n) of the same rows writes its fresh K/V in place and attends to every cached key, so other
    positions are served from the forward that last wrote them: Fast-dLLM's prefix and dual caches differ only
    in which range the engine recomputes. A forward that reaches past the cached length extends it (block
    diffusion: the cache grows by a block, and a block-causal mask hides nothing cached from it).

    Attention reads the buffers up to the cached length, so a forward's key count changes only when the length
    does (at a refresh, or block diffusion's first forward of a block): within a block every cached step has
    the same shapes, and its logits are bit for bit those of a cache that held exactly those keys. (Reading the
    whole buffer under a mask that hides the rest would keep block diffusion's shapes across blocks too, but
    SDPA then sums over more, zero-weighted keys and the logits move in the last bits.)
    """

    def __init__(self, batch: int | None = None, capacity: int | None = None) -> None:
        self.batch, self.capacity = batch, capacity
        self.key_buffers: list[Tensor] = []  # per layer [batch, kv_heads, capacity, head_dim]
        self.value_buffers: list[Tensor] = []
        self.rows = 0  # the batch rows the last fill wrote: the first `rows` of the buffers
        self.length = 0
        self.input_buffer: Tensor | None = None  # [batch, capacity] token ids fed, where a model keeps them (Dream)

    def __len__(self) -> int:  # cached sequence length
        return self.length

    @property
    def keys(self) -> list[Tensor]:
        """Per layer, the cached keys [rows, kv_heads, len(cache), head_dim] (views of the buffers)."""
        return [k[:self.rows, :, :self.length] for k in self.key_buffers]

    @property
    def values(self) -> list[Tensor]:
        return [v[:self.rows, :, :self.length] for v in self.value_buffers]

    @property
    def inputs(self) -> Tensor | None:
        """[rows, len(cache)] the token ids fed, for a model that keeps them (Dream's read-only query)."""
        return None if self.input_buffer is None else self.input_buffer[:self.rows, :self.length]

    def store_inputs(self, start: int, ids: Tensor) -> None:
        """Keep the token ids [rows, n] of positions [start, start + n) (before the forward's `update`s)."""
        self.input_buffer = self._fitted(self.input_buffer, ids, 1, start)
        self.input_buffer[:ids.shape[0], start:start + ids.shape[1]] = ids

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store K/V [rows, heads, n, head_dim] of positions [start, start + n); return all cached K/V."""
        rows, end = k.shape[0], start + k.shape[2]
        if layer == 0:  # the first layer checks the forward and moves the cached extent
            if start > 0 and self.rows == 0:
                raise ValueError("an empty KV cache is filled by a forward starting at position 0")
            if start > 0 and rows != self.rows:
                raise ValueError(f"a forward of {rows} rows on a KV cache filled for {self.rows}: refill it from 0")
            if start > self.length:
                raise ValueError(f"a forward from position {start} would leave a gap after the {self.length} "
                                 f"cached ones")
            self.rows, self.length = rows, (end if start == 0 else max(self.length, end))
        if layer == len(self.key_buffers):
            self.key_buffers.append(None)
            self.value_buffers.append(None)
        self.key_buffers[layer] = keys = self._fitted(self.key_buffers[layer], k, 2, start)
        self.value_buffers[layer] = values = self._fitted(self.value_buffers[layer], v, 2, start)
        keys[:rows, :, start:end] = k
        values[:rows, :, start:end] = v
        return keys[:rows, :, :self.length], values[:rows, :, :self.length]

    def _fitted(self, buffer: Tensor | None, fresh: Tensor, dim: int, start: int) -> Tensor:
        """`buffer` when it has room for `fresh` (rows first, positions [start, start + n) along `dim`); else a
        new zeroed one (the first forward, or a cache without a capacity growing) keeping positions [0, start)."""
        end = start + fresh.shape[dim]
        if buffer is not None and fresh.shape[0] <= buffer.shape[0] and end <= buffer.shape[dim]:
            return buffer
        if self.capacity is not None and end > self.capacity:
            raise ValueError(f"a forward up to position {end} overflows the KV cache's capacity {self.capacity}")
        shape = list(fresh.shape)
        shape[0] = max(self.batch or 0, fresh.shape[0], 0 if buffer is None else buffer.shape[0])
        shape[dim] = self.capacity or max(end, 0 if buffer is None else buffer.shape[dim])
        grown = fresh.new_zeros(shape)
        if buffer is not None and start > 0:
            grown.narrow(dim, 0, start)[:buffer.shape[0]] = buffer.narrow(dim, 0, start)
        return grown


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
        width = getattr(cfg, "rotary_dim", cfg.head_dim)  # LLaDA2 rotates only part of each head
        exponents = torch.arange(0, width, 2, dtype=torch.float32, device=self.device) / width
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
