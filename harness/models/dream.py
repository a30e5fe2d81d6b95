"""Dream (Dream-v0-Instruct-7B) in plain PyTorch: Qwen2.5's decoder run bidirectionally, with a KV cache.

Parameter names follow the official checkpoint (`model.layers.{i}.self_attn.q_proj.weight`, `lm_head.weight`,
...), so a Hugging Face Dream folder loads by name with no conversion.

Dream keeps the autoregressive alignment of its Qwen initialisation: the network's output at position i
predicts token i+1. The forward realigns it within the fed span (`out[0] = raw[0]`, `out[i] = raw[i-1]`), as
every Dream sampler does, so that logits at i are the prediction for token i like every other model's.

A cached forward of the span [start, end) also runs the position before it as a read-only query (its cached K/V
stay as they are), so the span's first position is predicted from its left neighbour like every other one.
Fast-dLLM's Dream cache code shifts within the fed span instead and hands that position its own output row; it
commits the block's first position at the refresh, so it never reads that row, and every other row is the same
here: the extra query writes nothing that another query reads. Rules that do read it (all but Fast-dLLM's) get
Dream's real prediction.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .layers import KVCache, NativeLM, RMSNorm, SwiGLU, apply_rope, attend, sdpa_mask, seeded_random

# Qwen2 options and the only value this file implements (the official checkpoint's); another is refused.
_UNSUPPORTED = {
    "use_sliding_window": lambda v: bool(v), "rope_scaling": lambda v: v is not None,
    "tie_word_embeddings": lambda v: bool(v), "hidden_act": lambda v: v != "silu",
}


@dataclass(frozen=True)
class DreamConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    mask_token_id: int
    eos_token_id: int
    pad_token_id: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_length(self) -> int:
        return self.max_position_embeddings

    @classmethod
    def from_json(cls, path: str | Path, token_ids: dict | None = None) -> DreamConfig:
        """From an official config.json (unknown keys ignored); `token_ids` (mask/eos ids read elsewhere, e.g.
        the tokenizer's) fill keys the file lacks or leaves null."""
        own = {k: v for k, v in json.loads(Path(path).read_text()).items() if v is not None}
        raw = {**(token_ids or {}), **own}
        for key, unsupported in _UNSUPPORTED.items():
            if key in raw and unsupported(raw[key]):
                raise ValueError(f"{path}: {key}={raw[key]!r} is not supported by the native Dream")
        try:
            return cls(
                hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
                num_hidden_layers=raw["num_hidden_layers"], num_attention_heads=raw["num_attention_heads"],
                num_key_value_heads=raw["num_key_value_heads"], vocab_size=raw["vocab_size"],
                max_position_embeddings=raw["max_position_embeddings"], rope_theta=float(raw["rope_theta"]),
                rms_norm_eps=float(raw["rms_norm_eps"]), mask_token_id=raw["mask_token_id"],
                eos_token_id=raw["eos_token_id"], pad_token_id=raw.get("pad_token_id", raw["eos_token_id"]),
            )
        except KeyError as err:
            raise ValueError(f"{path}: missing Dream config key {err.args[0]!r}") from None


class Attention(nn.Module):
    """Grouped-query attention with q/k/v biases; query head h reads K/V head h // group."""

    def __init__(self, cfg: DreamConfig):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, hd
        self.q_proj = nn.Linear(d, self.n_heads * hd, bias=True)
        self.k_proj = nn.Linear(d, self.n_kv_heads * hd, bias=True)
        self.v_proj = nn.Linear(d, self.n_kv_heads * hd, bias=True)
        self.o_proj = nn.Linear(self.n_heads * hd, d, bias=False)

    def forward(self, h: Tensor, rope: tuple[Tensor, Tensor], key_mask: Tensor | None, cache: KVCache | None,
                layer: int, start: int, read_only: int = 0) -> Tensor:
        """`read_only` leading inputs are queries only: their keys and values come from the cache."""
        b, t, _ = h.shape
        q = self.q_proj(h).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h[:, read_only:]).view(b, t - read_only, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h[:, read_only:]).view(b, t - read_only, self.n_kv_heads, self.head_dim).transpose(1, 2)
        rope = tuple(r.to(h.dtype) for r in rope)  # the reference rotates in the weights' dtype
        k_rope = tuple(r[..., read_only:, :] for r in rope)
        out = attend(apply_rope(q, rope), apply_rope(k, k_rope), v, key_mask, cache, layer, start + read_only)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class Layer(nn.Module):
    """Pre-norm Qwen2 decoder layer; attribute names are the checkpoint's."""

    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, rope, key_mask, cache, layer, start, read_only=0):
        x = x + self.self_attn(self.input_layernorm(x), rope, key_mask, cache, layer, start, read_only)
        return x + self.mlp(self.post_attention_layernorm(x))


def padded_positions(keys: Tensor, first: int, start: int, n: int) -> Tensor:
    """Dream's padding convention for keys [batch, keys] at canvas positions [first, first + keys): real
    tokens count first, first + 1, ... from each row's first real token and every hidden key sits at 1.
    Returns the positions of [start, start + n)."""
    positions = (first + keys.long().cumsum(-1) - 1).masked_fill(~keys, 1)
    return positions[:, start - first:start - first + n]


class Dream(NativeLM):
    """The network behind `DreamModel`, with logits aligned for the engine: position i predicts token i.

    Padding: a [batch, keys] mask hides keys from every query, as the reference's 4-D `mask[q] & mask[k]`
    does for real queries, and sets Dream's position ids (`padded_positions`). Deliberate deviation: a pad
    query still sees the real keys (the reference's sees none), which keeps it finite on every attention
    kernel; its output is never read.
    """

    config_class = DreamConfig
    shift_logits = True  # the network predicts token i + 1 at position i; `forward` realigns it

    def __init__(self, cfg: DreamConfig, tokenizer=None):
        super().__init__()
        self.config = cfg
        self.tokenizer = tokenizer
        self.model = nn.Module()  # gives the official `model.*` parameter names
        self.model.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.model.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.model.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)  # untied
        self.reset_buffers()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *, start: int = 0,
                cache: KVCache | None = None, position_ids: Tensor | None = None) -> Tensor:
        """Logits aligned for the engine (row i predicts token i): `next_token_logits` shifted by one. From
        position 0 the first row is repeated (Dream's samplers' `cat([raw[:, :1], raw[:, :-1]])`; position 0 is
        prompt); a cached span also feeds the position before it as a read-only query (module docstring)."""
        if cache is None or start == 0:
            raw = self.next_token_logits(input_ids, attention_mask, start=start, cache=cache,
                                         position_ids=position_ids)
            return torch.cat([raw[:, :1], raw[:, :-1]], dim=1)
        before = cache.inputs[:, start - 1:start]
        if attention_mask is not None and attention_mask.dim() == 3:  # its query row: the span's first one's
            attention_mask = torch.cat([attention_mask[:, :1], attention_mask], 1)
        if position_ids is not None:
            position_ids = torch.cat([position_ids[..., :1] - 1, position_ids], -1)
        raw = self.next_token_logits(torch.cat([before, input_ids], 1), attention_mask, start=start - 1,
                                     cache=cache, position_ids=position_ids, read_only=1)
        return raw[:, :-1]

    def next_token_logits(self, input_ids: Tensor, attention_mask: Tensor | None = None, *, start: int = 0,
                          cache: KVCache | None = None, position_ids: Tensor | None = None,
                          read_only: int = 0) -> Tensor:
        """The network's own output for `input_ids`, which sit at positions [start, start + n) of the canvas:
        row i predicts token i + 1 (the reference's `logits`).

        attention_mask: [batch, keys] with 1 for keys to attend to (the inputs themselves, or with a `cache`
        every cached key from position 0), or [batch, queries, keys], used as given. An empty `cache` is
        filled by this forward. `position_ids` ([n] or [batch, n]) default to Dream's padding convention under
        a [batch, keys] mask, else start..start+n-1. The `read_only` leading inputs are queries only: the cache
        serves their keys and values, and keeps them.
        """
        n = input_ids.shape[1]
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            position_ids = padded_positions(attention_mask.bool(), 0 if cache is not None else start, start, n)
        if position_ids is None:
            position_ids = torch.arange(start, start + n, device=self.inv_freq.device)
        rope, key_mask = self.rope(position_ids), sdpa_mask(attention_mask)
        x = self.model.embed_tokens(input_ids)
        if cache is not None:  # the canvas's tokens, for the read-only query of a later cached span
            cache.store_inputs(start + read_only, input_ids[:, read_only:])
        for layer, block in enumerate(self.model.layers):
            x = block(x, rope, key_mask, cache, layer, start, read_only)
        return self.lm_head(self.model.norm(x))


def random_dream(cfg: DreamConfig, seed: int = 0, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> Dream:
    """A Dream with seeded random weights (`seeded_random`), built on `device`."""
    return seeded_random(lambda: Dream(cfg), seed, dtype, device)
