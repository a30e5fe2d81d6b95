"""LLaDA2.x (inclusionAI's LLaDA2.0 / 2.1 mini and flash) in plain PyTorch: the MoE backbone of
`LLaDA2MoeModelLM`, decoded in block-diffusion mode (block-causal attention), with a KV cache.

Parameter names follow the official checkpoints (`model.layers.{i}.attention.query_key_value.weight`,
`model.layers.{i}.mlp.experts.{e}.up_proj.weight`, ...), so a Hugging Face LLaDA2 folder loads by name with no
conversion. The maths follows the reference modeling code (see shared/reference/llada2.md): QK-norm before a
partial RoPE, sigmoid routing with group-limited top-k on bias-shifted scores, an always-on shared expert, no
logit shift. The mask and EOS ids are `generate` arguments upstream, not config keys: they come from the tokenizer
or from `model.mask_token_id` / `model.eos_token_id`.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import KVCache, NativeLM, RMSNorm, SwiGLU, attend, fill_random, rotate_half, sdpa_mask, seeded_random

# config.json values naming behaviour the reference code hard-codes; any other value is a model this file
# does not implement.
_REQUIRED_VALUES = {
    "hidden_act": "silu", "score_function": "sigmoid", "router_dtype": "fp32", "norm_topk_prob": True,
    "moe_router_enable_expert_bias": True, "use_qkv_bias": False, "use_bias": False, "use_qk_norm": True,
    "tie_word_embeddings": False, "norm_head": False, "rope_scaling": None, "use_sliding_window": False,
}

PUBLISHED_TOKEN_IDS = {"mask_token_id": 156895, "eos_token_id": 156892}  # the reference generate()'s defaults


@dataclass(frozen=True)
class LLaDA2Config:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int  # the dense SwiGLU of the first `first_k_dense_replace` layers
    moe_intermediate_size: int  # each routed expert's width (the shared expert: × num_shared_experts)
    num_experts: int
    num_experts_per_tok: int
    num_shared_experts: int
    n_group: int  # experts form n_group contiguous groups; routing keeps the topk_group best
    topk_group: int
    routed_scaling_factor: float
    first_k_dense_replace: int
    partial_rotary_factor: float  # RoPE rotates the first head_dim * factor dims of each head
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    mask_token_id: int
    eos_token_id: int

    def __post_init__(self):
        per_group = self.num_experts // self.n_group
        checks = [
            (self.num_attention_heads % self.num_key_value_heads == 0,
             "num_attention_heads must be a multiple of num_key_value_heads"),
            (self.num_experts % self.n_group == 0, "num_experts must be a multiple of n_group"),
            (per_group >= 2, "each of the n_group expert groups needs at least 2 experts (a group scores its best 2)"),
            (1 <= self.topk_group <= self.n_group, "topk_group must lie in [1, n_group]"),
            (1 <= self.num_experts_per_tok <= self.topk_group * per_group,
             "num_experts_per_tok must fit in the topk_group kept groups"),
            (self.rotary_dim % 2 == 0 and 0 < self.rotary_dim <= self.head_dim,
             "head_dim * partial_rotary_factor must be an even width within head_dim"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def max_length(self) -> int:
        return self.max_position_embeddings

    @classmethod
    def from_json(cls, path: str | Path, token_ids: dict | None = None) -> LLaDA2Config:
        """From an official config.json; `token_ids` (mask/eos ids read elsewhere: the tokenizer's, or explicit
        ones) fill what the file lacks (the official files hold neither)."""
        raw = {**(token_ids or {}), **json.loads(Path(path).read_text())}
        for key, want in _REQUIRED_VALUES.items():
            if key in raw and raw[key] != want:
                raise ValueError(f"{path}: {key}={raw[key]!r} is not supported (LLaDA2 uses {want!r})")
        missing_ids = [key for key in ("mask_token_id", "eos_token_id") if raw.get(key) is None]
        if missing_ids:
            settings = " ".join(f"model.{key}={PUBLISHED_TOKEN_IDS[key]}" for key in missing_ids)
            raise ValueError(f"{path}: LLaDA2's config.json has no {' or '.join(missing_ids)} and the tokenizer "
                             f"named none: set {settings} (the published LLaDA2 ids)")
        try:
            head_dim = raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]
            if raw.get("rotary_dim") not in (None, int(head_dim * raw["partial_rotary_factor"])):
                raise ValueError(f"rotary_dim={raw['rotary_dim']} is not head_dim * partial_rotary_factor, "
                                 f"the width the reference rotates")
            return cls(
                hidden_size=raw["hidden_size"], num_hidden_layers=raw["num_hidden_layers"],
                num_attention_heads=raw["num_attention_heads"],
                num_key_value_heads=raw.get("num_key_value_heads") or raw["num_attention_heads"], head_dim=head_dim,
                vocab_size=raw["vocab_size"], intermediate_size=raw["intermediate_size"],
                moe_intermediate_size=raw["moe_intermediate_size"], num_experts=raw["num_experts"],
                num_experts_per_tok=raw["num_experts_per_tok"], num_shared_experts=raw.get("num_shared_experts") or 0,
                n_group=raw["n_group"], topk_group=raw["topk_group"],
                routed_scaling_factor=float(raw["routed_scaling_factor"]),
                first_k_dense_replace=raw["first_k_dense_replace"],
                partial_rotary_factor=float(raw["partial_rotary_factor"]), rope_theta=float(raw["rope_theta"]),
                rms_norm_eps=float(raw["rms_norm_eps"]), max_position_embeddings=raw["max_position_embeddings"],
                mask_token_id=raw["mask_token_id"], eos_token_id=raw["eos_token_id"],
            )
        except KeyError as err:
            raise ValueError(f"{path}: missing LLaDA2 config key {err.args[0]!r}") from None
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


class Router(nn.Module):
    """`mlp.gate`: which experts each token uses, and with what weight, computed in fp32.

    Scores are sigmoid(x·Wᵀ). Selection uses the scores plus `expert_bias` (a learned buffer, stored in the
    checkpoint): keep the `topk_group` groups whose two best biased scores sum highest, then the top
    `num_experts_per_tok` experts inside them. Weights are the chosen experts' unbiased scores, normalised to sum
    to 1 (when more than one is chosen), times `routed_scaling_factor`.
    """

    def __init__(self, cfg: LLaDA2Config):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(cfg.num_experts))  # persistent: in the checkpoint
        self.top_k, self.n_group, self.topk_group = cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group
        self.scaling = cfg.routed_scaling_factor

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Expert indices [tokens, top_k] and their fp32 weights [tokens, top_k] for x [tokens, hidden]."""
        scores = torch.sigmoid(F.linear(x.float(), self.weight.float()))
        biased = scores + self.expert_bias.float()
        groups = biased.view(len(x), self.n_group, -1)
        kept = groups.topk(2, dim=-1).values.sum(-1).topk(self.topk_group, dim=-1).indices
        in_kept_group = torch.zeros(groups.shape[:2], dtype=torch.bool, device=x.device).scatter_(1, kept, True)
        biased = groups.masked_fill(~in_kept_group[..., None], float("-inf")).flatten(1)
        experts = biased.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, experts)
        if self.top_k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return experts, weights * self.scaling


class MoE(nn.Module):
    """Routed experts plus the always-on, unweighted shared expert (`mlp` of the layers past
    `first_k_dense_replace`)."""

    def __init__(self, cfg: LLaDA2Config):
        super().__init__()
        self.gate = Router(cfg)
        self.experts = nn.ModuleList(SwiGLU(cfg.hidden_size, cfg.moe_intermediate_size)
                                     for _ in range(cfg.num_experts))
        width = cfg.moe_intermediate_size * cfg.num_shared_experts
        self.shared_experts = SwiGLU(cfg.hidden_size, width) if width else None

    def forward(self, h: Tensor) -> Tensor:
        x = h.reshape(-1, h.shape[-1])
        experts, weights = self.gate(x)
        out = self.dispatch(x, experts, weights, lambda e, rows: self.experts[e](rows)).to(h.dtype)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out.view_as(h)

    def dispatch(self, x: Tensor, experts: Tensor, weights: Tensor,
                 run_expert: Callable[[int, Tensor], Tensor]) -> Tensor:
        """Σ weight · expert(x) per token, in fp32: the (token, choice) pairs sorted by expert, one batched call
        per expert that received any, then the outputs put back in (token, choice) order and summed over the
        choices (the reference's order, deterministic: no atomic adds)."""
        tokens, top_k = experts.shape
        order = experts.flatten().argsort(stable=True)
        counts = torch.bincount(experts.flatten(), minlength=len(self.experts)).tolist()
        rows = x[order // top_k]
        outputs = [run_expert(e, chunk) for e, chunk in enumerate(rows.split(counts)) if len(chunk)]
        by_choice = torch.empty(tokens * top_k, x.shape[-1], dtype=torch.float32, device=x.device)
        by_choice[order] = torch.cat(outputs).float()
        return (by_choice.view(tokens, top_k, -1) * weights[..., None]).sum(1)


def apply_partial_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first cos.shape[-1] dims of each head (half-split pairs inside that slice); pass the rest."""
    width = cos.shape[-1]
    rot, rest = x[..., :width], x[..., width:]
    return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: LLaDA2Config):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.query_key_value = nn.Linear(cfg.hidden_size, (self.n_heads + 2 * self.n_kv_heads) * cfg.head_dim,
                                         bias=False)  # rows: Q heads | K heads | V heads
        self.query_layernorm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)  # QK-norm, per head, before RoPE
        self.key_layernorm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.dense = nn.Linear(self.n_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, h: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None, cache: KVCache | None,
                layer: int, start: int) -> Tensor:
        b, t, _ = h.shape
        qkv = self.query_key_value(h).view(b, t, -1, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.n_heads, self.n_kv_heads, self.n_kv_heads], dim=1)
        q = apply_partial_rope(self.query_layernorm(q), *rope)
        k = apply_partial_rope(self.key_layernorm(k), *rope)
        out = attend(q, k, v, mask, cache, layer, start)
        return self.dense(out.transpose(1, 2).reshape(b, t, -1))


class DecoderLayer(nn.Module):
    """Pre-norm block; attribute names are the checkpoint's."""

    def __init__(self, cfg: LLaDA2Config, index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = (SwiGLU(cfg.hidden_size, cfg.intermediate_size) if index < cfg.first_k_dense_replace
                    else MoE(cfg))

    def forward(self, x, rope, mask, cache, layer, start):
        x = x + self.attention(self.input_layernorm(x), rope, mask, cache, layer, start)
        return x + self.mlp(self.post_attention_layernorm(x))


class LLaDA2(NativeLM):
    """The network behind `LLaDA2MoeModelLM`. Logits at position i predict token i (no shift).

    `block_diffusion`: the engine decodes it block by block under a block-causal mask (query i sees key j iff
    j // B <= i // B), so the K/V of finished blocks are final and cached.
    """

    block_diffusion = True
    config_class = LLaDA2Config
    # torch.compile needs one graph per forward; the dispatch's split sizes are read from the device
    no_compile_because = "its MoE dispatch splits tokens by counts read from the device"

    def __init__(self, cfg: LLaDA2Config, tokenizer=None):
        super().__init__()
        self.config = cfg
        self.tokenizer = tokenizer
        self.model = nn.Module()  # gives the official `model.*` parameter names
        self.model.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.model.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.model.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)  # untied
        self.reset_buffers()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *, start: int = 0,
                cache: KVCache | None = None, position_ids: Tensor | None = None) -> Tensor:
        """Logits for `input_ids`, which sit at positions [start, start + n) of the canvas.

        attention_mask: None (every key visible: fully bidirectional), [batch, keys] or [batch, queries, keys]
        bool, True where a query may attend (the engine's block-causal mask). Keys are the inputs, or with a
        `cache` every cached position after this forward's update. `position_ids` ([n] or [batch, n]) default
        to start..start+n-1.
        """
        mask = sdpa_mask(attention_mask)
        x = self.model.word_embeddings(input_ids)
        if position_ids is None:
            position_ids = torch.arange(start, start + input_ids.shape[1], device=self.inv_freq.device)
        rope = tuple(r.to(x.dtype) for r in self.rope(position_ids))  # fp32 tables, cast as the reference does
        for index, layer in enumerate(self.model.layers):
            x = layer(x, rope, mask, cache, index, start)
        return self.lm_head(self.model.norm(x))


def _shape(**sizes) -> LLaDA2Config:
    return LLaDA2Config(first_k_dense_replace=1, routed_scaling_factor=2.5, partial_rotary_factor=0.5,
                        rope_theta=600000.0, rms_norm_eps=1e-6, **sizes)


# Shapes for random models (benchmarks, tests). mini: inclusionAI/LLaDA2.1-mini config.json (LLaDA2.0-mini: same
# sizes; 16B total, 1.4B active). flash: LLaDA2.0/2.1-flash (100B total, 6.1B active), whose config.json was not
# readable
# here: these sizes reproduce exactly the parameter count published for Ling-flash-2.0, the backbone it continues
# (102,889,697,280 bf16 + 7,936 fp32 expert biases = 31 MoE layers × 256 experts; 6.15B active, 4.86B without
# the embeddings); its routing (top-8, 8 groups, 4 kept) is assumed equal to mini's. small, tiny: CPU shapes
# (tiny is the llada2_tiny fixture's).
LLADA2_SHAPES = {
    "mini": _shape(hidden_size=2048, num_hidden_layers=20, num_attention_heads=16, num_key_value_heads=4,
                   head_dim=128, vocab_size=157184, intermediate_size=5120, moe_intermediate_size=512,
                   num_experts=256, num_experts_per_tok=8, num_shared_experts=1, n_group=8, topk_group=4,
                   max_position_embeddings=32768, **PUBLISHED_TOKEN_IDS),
    "flash": _shape(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=4,
                    head_dim=128, vocab_size=157184, intermediate_size=9216, moe_intermediate_size=1024,
                    num_experts=256, num_experts_per_tok=8, num_shared_experts=1, n_group=8, topk_group=4,
                    max_position_embeddings=32768, **PUBLISHED_TOKEN_IDS),
    "small": _shape(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=64, vocab_size=1024, intermediate_size=512, moe_intermediate_size=128,
                    num_experts=32, num_experts_per_tok=4, num_shared_experts=1, n_group=4, topk_group=2,
                    max_position_embeddings=1024, mask_token_id=1023, eos_token_id=1022),
    "tiny": _shape(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=16, vocab_size=320, intermediate_size=128, moe_intermediate_size=32,
                   num_experts=8, num_experts_per_tok=2, num_shared_experts=1, n_group=4, topk_group=2,
                   max_position_embeddings=256, mask_token_id=310, eos_token_id=257),
}


def llada2_config(shape: str, **overrides) -> LLaDA2Config:
    """A preset shape's config (`LLADA2_SHAPES`), e.g. `llada2_config("mini", num_hidden_layers=4)`."""
    if shape not in LLADA2_SHAPES:
        raise ValueError(f"unknown LLaDA2 shape {shape!r} (known: {', '.join(LLADA2_SHAPES)})")
    return dataclasses.replace(LLADA2_SHAPES[shape], **overrides)


def random_llada2(cfg: LLaDA2Config, seed: int = 0, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> LLaDA2:
    """A LLaDA2 with seeded random weights (`seeded_random`: the llada2_tiny fixture's scheme), built on `device`."""
    return seeded_random(lambda: LLaDA2(cfg), seed, dtype, device)


def random_moe_layer(cfg: LLaDA2Config, seed: int = 0, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu") -> MoE:
    """One MoE FFN of `cfg` with seeded random weights (the routing-overhead benchmark)."""
    with torch.device("meta"):
        layer = MoE(cfg)
    return fill_random(layer, seed, dtype, device).eval().requires_grad_(False)
