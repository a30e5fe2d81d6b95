import inspect
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from ...models.metered import Metered
from ..policy import ConfigError, Decision, Policy, PolicyConfig, greedy_confidence, register_policy, top_k

FIRST_CAP = 30  # the verify cap ("last accept") at a block's first step
FORWARDS_PER_POSITION = 10  # our guard: a block may take 10 B forwards (the reference has no cap)


def takes_position_ids(model) -> bool:
    """Whether the model's forward accepts explicit position ids (and with them a per-query mask)."""
    while isinstance(model, Metered):
        model = model.inner
    return "position_ids" in inspect.signature(model.forward).parameters


@register_policy("wino")
class Wino(Policy):
    """WINO (Feng-Hong/WINO-DLLM `decoding_wino`): wide-in draft, narrow-out verify through a shadow block.

    Every forward is fed the canvas plus a shadow block of B masks placed at the current block's positions;
    shadow j sees every canvas key but its own counterpart (and the other shadow keys), canvas queries see no
    shadow key. Draft: commit the block's masked positions with float64 confidence > threshold (the
    `max_accept = min(max(int(0.7 m), 5), 20)` most confident when more qualify; the most confident one when
    none does). Verify, only when the draft committed more than one token: tokens committed before this step
    whose shadow probability is < threshold_back are re-masked; when there are at least `cap` of them, only
    the `cap - 1` least probable, where `cap` is the previous step's accept count (30 at a block's first step).

    Quirks kept: strict comparisons; the cap lags one step; re-masks stay inside the current block; `m`
    counts the block's masks, re-masked ones included (`0.7 m` in float32, as the reference computes it).
    Guard (ours): the reference loops until the block has no mask and may never stop; a block that takes
    more than 10 B forwards is an error. Needs a model whose forward takes `position_ids` and a
    [batch, queries, keys] mask (LLaDA); others are refused before the first forward."""

    @dataclass(frozen=True)
    class Config(PolicyConfig):
        threshold: float = field(default=0.6, metadata={"symbol": "τ"})  # draft: confidence > τ (function default)
        # verify: re-mask earlier commits whose shadow probability < τ_back (function default)
        threshold_back: float = field(default=0.9, metadata={"symbol": "τ_back", "secondary": True})

        def validate(self):
            super().validate()
            for knob in ("threshold", "threshold_back"):
                self.require(knob, 0 <= getattr(self, knob) <= 1, "in [0, 1]")

    caches = ("none",)
    no_cache_because = "its forward appends a shadow block with its own positions and attention mask"
    needs_bidirectional = no_cache_because
    needs_unshifted = "its shadow block's first prediction would come from the canvas's last position"
    greedy_only = True

    def max_forwards_per_block(self, decoding):
        return FORWARDS_PER_POSITION * decoding.block_length

    def begin(self, canvas, prompt_length):
        return SimpleNamespace(cap=torch.full((canvas.shape[0],), FIRST_CAP, device=canvas.device), shadow=None)

    def forward(self, model, input_ids, key_mask, memory, rows, block_start, block_end):
        if not takes_position_ids(model):
            raise ConfigError(f"strategy 'wino' needs a model whose forward takes position_ids and a "
                              f"[batch, queries, keys] attention mask (LLaDA), not {type(model).__name__}")
        n, length = input_ids.shape
        width, device = block_end - block_start, input_ids.device
        keys = torch.ones_like(input_ids, dtype=torch.bool) if key_mask is None else key_mask.bool()
        block_positions = torch.arange(block_start, block_end, device=device)
        counterpart = torch.arange(length, device=device) == block_positions[:, None]
        canvas_queries = torch.cat([keys[:, None].expand(n, length, length), keys.new_zeros(n, length, width)], -1)
        shadow_queries = torch.cat([keys[:, None] & ~counterpart, keys.new_ones(n, width, width)], -1)
        logits = model(torch.cat([input_ids, input_ids.new_full((n, width), model.mask_token_id)], 1),
                       torch.cat([canvas_queries, shadow_queries], 1),
                       position_ids=torch.cat([torch.arange(length, device=device),
                                               torch.arange(block_start, block_end, device=device)]))
        memory.shadow = logits[:, length:]  # for `step`, which follows this forward for the same rows
        return logits[:, :length]

    def step(self, state):
        memory, rows, cfg = state.memory, state.rows, self.config
        if state.step == 0:
            memory.cap[rows] = FIRST_CAP
        prediction, confidence = greedy_confidence(state.logits, torch.float64)
        masked = state.masked & state.in_block
        max_accept = (masked.sum(-1).float() * 0.7).long().clamp(5, 20)
        confident = masked & (confidence > cfg.threshold)
        count = confident.sum(-1, keepdim=True)
        commit = torch.where(count > max_accept[:, None], top_k(confidence, masked, max_accept),
                             torch.where(count == 0, top_k(confidence, masked, 1), confident))

        shadow = memory.shadow[:, :state.tokens.shape[1]].double().softmax(-1)
        belief = shadow.gather(-1, state.tokens[..., None]).squeeze(-1)  # p(current token) with itself hidden
        doubtful = ~state.masked & state.in_block & state.inside & (belief < cfg.threshold_back)
        cap = memory.cap[rows]
        remask = torch.where((doubtful.sum(-1) >= cap)[:, None], top_k(-belief, doubtful, cap - 1), doubtful)
        accepted = commit.sum(-1)
        memory.cap[rows] = accepted
        return Decision(commit, prediction, remask & (accepted > 1)[:, None])
