"""Model-specific costs the benchmark reports: the LLaDA2 MoE layer's routing overhead."""
from __future__ import annotations

import torch

from .models.layers import SwiGLU, fill_random
from .models.llada2 import LLaDA2Config, random_moe_layer


@torch.no_grad()
def moe_routing_overhead(cfg: LLaDA2Config, tokens: int, *, dtype: torch.dtype = torch.float32,
                         device: str | torch.device = "cpu", repeats: int = 10, seed: int = 0) -> dict:
    """Where one MoE layer's time goes for `tokens` tokens (a decoding step feeds batch × block_length), in
    seconds per call (medians):

    - `router`: gate matmul, sigmoid, group-limited top-k and the weights;
    - `dispatch`: the bookkeeping around the experts (sort by expert, gathers, putting the outputs back, the
      weighted sum): the layer's dispatch with every expert replaced by the identity;
    - `layer`: the whole MoE FFN (router, dispatch, routed and shared experts);
    - `dense`: a dense SwiGLU of the layer's active width ((top-k + shared) × moe_intermediate_size), the cost
      the same active parameters would have without routing.

    Plus `router_share` and `dispatch_share` (of the layer), `overhead_vs_dense` ((router + dispatch) / dense) and
    `layer_vs_dense`. The weights are seeded random, so the tokens spread over the experts as a trained router's
    would not exactly: the count of experts that receive tokens (`experts_used`) is reported with them.
    """
    from .bench import time_call  # bench imports this module; by call time it is loaded
    layer = random_moe_layer(cfg, seed, dtype, device)
    active = cfg.moe_intermediate_size * (cfg.num_experts_per_tok + cfg.num_shared_experts)
    with torch.device("meta"):
        dense = SwiGLU(cfg.hidden_size, active)
    fill_random(dense, seed, dtype, device)
    x = torch.randn(tokens, cfg.hidden_size, generator=torch.Generator(device=device).manual_seed(seed),
                    device=device).to(dtype)
    experts, weights = layer.gate(x)
    for run in (lambda: layer(x), lambda: dense(x)):  # untimed: allocator and kernel choices settle
        run()
    seconds = {
        "router": time_call(lambda: layer.gate(x), repeats).median,
        "dispatch": time_call(lambda: layer.dispatch(x, experts, weights, lambda e, rows: rows), repeats).median,
        "layer": time_call(lambda: layer(x), repeats).median,
        "dense": time_call(lambda: dense(x), repeats).median,
    }
    return {
        "tokens": tokens, "experts_used": int(experts.unique().numel()), **seconds,
        "router_share": seconds["router"] / seconds["layer"],
        "dispatch_share": seconds["dispatch"] / seconds["layer"],
        "overhead_vs_dense": (seconds["router"] + seconds["dispatch"]) / seconds["dense"],
        "layer_vs_dense": seconds["layer"] / seconds["dense"],
    }
