import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from ..policy import ConfigError, Decision, Policy, PolicyConfig, greedy_confidence, register_policy, top_k


def masked_ratio(mode: str, progress: float) -> float:
    """The cumulative schedule's share of the block still masked after `progress` (0..1] of its steps,
    clipped to [1e-6, 1] as MaskGIT's gamma is."""
    if mode == "linear":
        ratio = 1 - progress
    elif mode == "cosine":
        ratio = math.cos(progress * math.pi / 2)
    elif mode.startswith("pow"):
        ratio = 1 - progress ** float(mode[3:])
    else:
        raise ValueError(mode)
    return min(max(ratio, 1e-6), 1.0)


@register_policy("rcr")
class RunningConfidenceRemasking(Policy):
    """RCR (MDPO's running-confidence remasking; ParallelBench `generate_dlm`, overtime_conf=True).

    Each block takes S = max(1, steps // blocks) forwards. Every step commits every masked position up to the
    block's end (float32 confidence, mask token out of argmax and softmax) and records its confidence as the
    position's running confidence; then, except at the block's last step, it re-masks the floor(m · ratio(t))
    decoded positions with the lowest running confidence, m being the block's masks at its start and ratio the
    cumulative schedule (`mode`). So each step keeps the quota's best tokens by running confidence.

    Quirks kept: re-masks reach earlier blocks (their running confidence dates from their commit); running
    confidences persist across blocks and re-masks; a block always takes S forwards, also once nothing is
    left to re-mask (wasted ones, as in the reference). Not reproduced: a stored confidence of exactly 1.0
    ties with the reference's 1.0 fill of prompt positions, which it may then re-mask; we re-mask only
    generated positions. Modes log and exp (which depend on the block's mask count) are not offered."""

    @dataclass(frozen=True)
    class Config(PolicyConfig):
        steps: int | None = None  # total forwards, S = max(1, steps // blocks) per block; None: G
        mode: str = "linear"  # cumulative schedule: linear (default), cosine or pow<k> (e.g. pow2)

        def validate(self):
            super().validate()
            self.require("steps", self.steps is None or self.steps > 0, "> 0")
            try:
                masked_ratio(self.mode, 0.5)
            except ValueError:
                raise ConfigError(f"decoding.mode must be linear, cosine or pow<k>, got {self.mode!r}") from None

    caches = ("none",)
    no_cache_because = "it re-masks tokens of earlier blocks"
    needs_bidirectional = no_cache_because
    greedy_only = True

    def steps_per_block(self, decoding):
        return max(1, (self.config.steps or decoding.gen_length) // decoding.num_blocks)

    def begin(self, canvas, prompt_length):
        batch, device = canvas.shape[0], canvas.device
        gen_length = canvas.shape[1] - prompt_length
        steps = max(1, (self.config.steps or gen_length) // (gen_length // self.block_length))
        return SimpleNamespace(prompt_length=prompt_length,
                               ratios=[masked_ratio(self.config.mode, (t + 1) / steps) for t in range(steps)],
                               block_masks=torch.zeros(batch, dtype=torch.float64, device=device),
                               running=torch.zeros(batch, canvas.shape[1] - prompt_length, device=device),
                               forwards_left=torch.zeros(batch, dtype=torch.long, device=device))

    def window(self, memory, block_start, block_end, canvas_end):
        return memory.prompt_length, block_end

    def keep_decoding(self, memory, has_mask):
        return has_mask | (memory.forwards_left > 0)

    def step(self, state):
        memory, rows, t = state.memory, state.rows, state.step
        width = state.masked.shape[1]
        if t == 0:
            memory.block_masks[rows] = (state.masked & state.in_block).sum(-1).double()
            memory.forwards_left[rows] = len(memory.ratios)
        memory.forwards_left[rows] -= 1
        prediction, confidence = greedy_confidence(state.logits, torch.float32, exclude=state.mask_id)
        running = torch.where(state.masked, confidence, memory.running[rows, :width])
        memory.running[rows, :width] = running
        if t >= len(memory.ratios) - 1:
            return Decision(state.masked, prediction)
        kept_masked = (memory.block_masks[rows] * memory.ratios[t]).floor().long()
        return Decision(state.masked, prediction, top_k(-running, state.inside, kept_masked))
