"""LLaDA in plain PyTorch: the official checkpoint layout, bidirectional attention, and a KV cache.

Parameter names follow the official checkpoints (`model.transformer.blocks.{i}.q_proj.weight`, ...), so a
Hugging Face LLaDA folder loads by name with no conversion.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import KVCache, NativeLM, RMSNorm, apply_rope, attend, sdpa_mask, seeded_random

# Architecture flags of the official checkpoints; any other value is a model this file does not implement.
_REQUIRED_FLAGS = {
    "block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu", "rope": True,
    "alibi": False, "weight_tying": False, "include_bias": False, "attention_layer_norm": False,
    "input_emb_norm": False, "scale_logits": False,
}


@dataclass(frozen=True)
class LLaDAConfig:
    d_model: int
    n_heads: int
    n_kv_heads: int
    n_layers: int
    mlp_hidden_size: int
    vocab_size: int  # rows of the embedding and the LM head (`embedding_size` in config.json)
    max_sequence_length: int
    rope_theta: float
    rms_norm_eps: float
    mask_token_id: int
    eos_token_id: int
    pad_token_id: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def max_length(self) -> int:
        return self.max_sequence_length

    @classmethod
    def from_json(cls, path: str | Path, token_ids: dict | None = None) -> LLaDAConfig:
        """From an official config.json; `token_ids` (mask/eos/pad ids read elsewhere, e.g. the tokenizer's)
        fill keys the file lacks."""
        raw = {**(token_ids or {}), **json.loads(Path(path).read_text())}
        for key, want in _REQUIRED_FLAGS.items():
            if key in raw and raw[key] != want:
                raise ValueError(f"{path}: {key}={raw[key]!r} is not supported (LLaDA uses {want!r})")
        if raw.get("include_qkv_bias"):
            raise ValueError(f"{path}: include_qkv_bias=true is not supported (LLaDA has no biases)")
        try:
            return cls(
                d_model=raw["d_model"], n_heads=raw["n_heads"],
                n_kv_heads=raw.get("n_kv_heads") or raw["n_heads"], n_layers=raw["n_layers"],
                mlp_hidden_size=raw.get("mlp_hidden_size") or raw["mlp_ratio"] * raw["d_model"],
                vocab_size=raw.get("embedding_size") or raw["vocab_size"],
                max_sequence_length=raw["max_sequence_length"], rope_theta=float(raw["rope_theta"]),
                rms_norm_eps=float(raw["rms_norm_eps"]), mask_token_id=raw["mask_token_id"],
                eos_token_id=raw["eos_token_id"], pad_token_id=raw.get("pad_token_id", raw["eos_token_id"]),
            )
        except KeyError as err:
            raise ValueError(f"{path}: missing LLaDA config key {err.args[0]!r}") from None

    def to_json_dict(self) -> dict:
        """The official LLaDA config.json key set, with this model's sizes and token ids."""
        return {
            "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
            "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
            "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                         "AutoModel": "modeling_llada.LLaDAModelLM",
                         "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
            "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama",
            "d_model": self.d_model, "embedding_dropout": 0.0, "embedding_size": self.vocab_size,
            "eos_token_id": self.eos_token_id, "flash_attention": False, "include_bias": False,
            "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta", "init_fn": "mitchell",
            "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
            "mask_token_id": self.mask_token_id, "max_sequence_length": self.max_sequence_length,
            "mlp_hidden_size": self.mlp_hidden_size, "mlp_ratio": max(1, self.mlp_hidden_size // self.d_model),
            "model_type": "llada", "multi_query_attention": None, "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads, "n_layers": self.n_layers, "pad_token_id": self.pad_token_id,
            "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": self.rms_norm_eps, "rope": True,
            "rope_full_precision": True, "rope_theta": self.rope_theta, "scale_logits": False,
            "transformers_version": "4.46.3", "use_cache": False, "vocab_size": self.vocab_size,
            "weight_tying": False,
        }


class Block(nn.Module):
    """Pre-norm transformer block; attribute names are the checkpoint's."""

    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        d, hd = cfg.d_model, cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, hd
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(d, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.n_kv_heads * hd, bias=False)
        self.attn_out = nn.Linear(cfg.n_heads * hd, d, bias=False)
        self.ff_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.ff_proj = nn.Linear(d, cfg.mlp_hidden_size, bias=False)  # gate (SiLU branch)
        self.up_proj = nn.Linear(d, cfg.mlp_hidden_size, bias=False)  # linear branch
        self.ff_out = nn.Linear(cfg.mlp_hidden_size, d, bias=False)  # down projection

    def attention(self, h: Tensor, rope: tuple[Tensor, Tensor], key_mask: Tensor | None,
                  cache: KVCache | None, layer: int, start: int) -> Tensor:
        b, t, _ = h.shape
        q = self.q_proj(h).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        # RoPE in full precision (rope_full_precision=true)
        q, k = apply_rope(q.float(), rope).to(h.dtype), apply_rope(k.float(), rope).to(h.dtype)
        out = attend(q, k, v, key_mask, cache, layer, start)
        return self.attn_out(out.transpose(1, 2).reshape(b, t, -1))

    def forward(self, x, rope, key_mask, cache, layer, start):
        x = x + self.attention(self.attn_norm(x), rope, key_mask, cache, layer, start)
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class LLaDA(NativeLM):
    """The network behind `LLaDAModelLM`. Logits at position i predict token i (no shift)."""

    config_class = LLaDAConfig

    def __init__(self, cfg: LLaDAConfig, tokenizer=None):
        super().__init__()
        self.config = cfg
        self.tokenizer = tokenizer
        self.model = nn.Module()  # gives the official `model.transformer.*` parameter names
        self.model.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.d_model),
            blocks=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers)),
            ln_f=RMSNorm(cfg.d_model, cfg.rms_norm_eps),
            ff_out=nn.Linear(cfg.d_model, cfg.vocab_size, bias=False),  # LM head, untied
        ))
        self.reset_buffers()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *, start: int = 0,
                cache: KVCache | None = None, position_ids: Tensor | None = None) -> Tensor:
        """Logits for `input_ids`, which sit at positions [start, start + n) of the canvas.

        attention_mask: [batch, keys] with 1 for keys to attend to (the inputs themselves, or with a filled `cache`
        every cached key), or [batch, queries, keys] for any layout (WINO's shadow block, a block-causal mask).
        An empty `cache` is filled by this forward. `position_ids` ([n] or [batch, n]) default to start..start+n-1.
        """
        key_mask = sdpa_mask(attention_mask)
        tr = self.model.transformer
        x = tr.wte(input_ids)
        if position_ids is None:
            position_ids = torch.arange(start, start + input_ids.shape[1], device=self.inv_freq.device)
        rope = self.rope(position_ids)
        for layer, block in enumerate(tr.blocks):
            x = block(x, rope, key_mask, cache, layer, start)
        return tr.ff_out(tr.ln_f(x))


def random_llada(cfg: LLaDAConfig, seed: int = 0, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> LLaDA:
    """A LLaDA with seeded random weights (`seeded_random`), built on `device`."""
    return seeded_random(lambda: LLaDA(cfg), seed, dtype, device)
