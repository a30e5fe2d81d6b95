"""Dream's own samplers (`diffusion_generate`, alg = maskgit_plus | topk_margin | entropy; shared/reference/dream.md
§3), plus the pieces Fast-dLLM's Dream variant (fastdllm_dream.py) shares with them: Dream's confidences, its
timestep quota, its position choice and a block that runs a fixed number of forwards."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from ..policy import Decision, Policy, PolicyConfig, register_policy, top_k
from .baseline import Baseline


def dream_probabilities(logits: Tensor, temperature: float) -> Tensor:
    """Dream's p: the softmax of the temperature-scaled logits in the logits' own dtype (the mask token
    included), as its `sample_tokens` computes them."""
    return (logits / temperature if temperature > 0 else logits).softmax(-1)


def dream_tokens(probabilities: Tensor, sampled: Tensor, temperature: float) -> Tensor:
    """x0: the first maximum of p at temperature 0 (the reference's `probs.max`), else the engine's sample."""
    return probabilities.argmax(-1) if temperature == 0 else sampled


def top1_probability(p: Tensor, tokens: Tensor) -> Tensor:  # maskgit_plus: p of the chosen token
    return p.gather(-1, tokens[..., None]).squeeze(-1)


def top2_margin(p: Tensor, tokens: Tensor) -> Tensor:  # topk_margin: top-1 minus top-2 probability
    top2 = p.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def negative_entropy(p: Tensor, tokens: Tensor) -> Tensor:  # entropy: sum p log(p + 1e-10), higher = surer
    return (p * torch.log(p + 1e-10)).sum(-1)


def timesteps(steps: int, eps: float, device) -> Tensor:
    """Dream's schedule: linspace(1, eps, steps + 1) in float32, on the canvas's device as the reference's."""
    return torch.linspace(1, eps, steps + 1, dtype=torch.float32, device=device)


def transfer_count(masks: Tensor, i: Tensor, schedule: Tensor) -> Tensor:
    """Per row, the positions Dream's step i (of len(schedule) - 1) commits: int(M (1 - s/t)) in float32 with
    t, s = schedule[i], schedule[i + 1]; every mask left (M) at the last step. May be 0."""
    last = len(schedule) - 2
    i = i.clamp(max=last)
    t, s = schedule[i], schedule[i + 1]
    quota = (masks.float() * (1 - s / t)).long()  # truncation, as int() of the reference's float32 product
    return torch.where(i >= last, masks, quota)


def choose(confidence: Tensor, eligible: Tensor, n: Tensor, alg_temp: float, generator) -> Tensor:
    """The n eligible positions to commit: the most confident, or with alg_temp > 0 n drawn without replacement
    from softmax(confidence / alg_temp) (Gumbel top-k: the reference's multinomial distribution, other draws)."""
    if alg_temp > 0:
        uniform = torch.rand(confidence.shape, generator=generator, device=confidence.device, dtype=torch.float64)
        confidence = confidence.double() / alg_temp - (-uniform.log()).log()
    return top_k(confidence, eligible, n)


@dataclass
class BlockForwards:
    """Per row: forwards spent in the current block (and whatever a rule adds); `opening`: the next
    `keep_decoding` call starts a block."""

    forwards: Tensor  # [batch]
    schedule: Tensor  # the timesteps of one block
    opening: bool = True


class TemperedPolicy(Policy):
    """A rule scoring with Dream's confidences, which read the temperature-scaled softmax."""

    def __init__(self, decoding):
        super().__init__(decoding)
        self.temperature = decoding.temperature

    def fits(self, decoding):
        return super().fits(decoding) and self.temperature == decoding.temperature


class FixedForwards(TemperedPolicy):
    """A rule whose block ends when `more_forwards` says so, not when it has no mask left: Dream spends its
    forwards on a full span, and leaves a position masked where the model predicts the mask token."""

    def block_timesteps(self, canvas: Tensor, prompt_length: int) -> Tensor:
        """Dream's timesteps for one block: S = steps / blocks (steps None: gen_length) and the knob eps."""
        gen_length = canvas.shape[1] - prompt_length
        per_block = (self.config.steps or gen_length) * self.block_length // gen_length
        return timesteps(per_block, self.config.eps, canvas.device)

    def more_forwards(self, memory: BlockForwards) -> Tensor:
        """[batch] bool, for rows that already ran the block: another forward."""
        raise NotImplementedError

    def keep_decoding(self, memory, has_mask):
        if memory.opening:  # a new block: the rows with masks join it (all of them without EoTP)
            memory.forwards.zero_()
            go = has_mask
        else:
            go = (memory.forwards > 0) & self.more_forwards(memory)
        memory.opening = not bool(go.any())
        return go


class DreamSampler(FixedForwards, Baseline):  # `steps` as the baseline's (its check and steps_per_block)
    """Dream's `diffusion_generate` for a confidence rule (the subclasses' `confidence`), exact with one block
    (block_length = gen_length, Dream has no blocks): `steps` forwards (NFE = steps, also once the span is
    full: a step that commits 0 positions still runs its forward); step i commits the n = int(M (1 - s/t))
    most confident masked positions (M: masks left, t, s: timesteps i, i + 1 of linspace(1, eps, steps + 1) in
    float32; n = M at the last step, uneven counts, often 0 early). Confidences come from p = softmax(logits /
    temperature) in the dtype of the model's logits, over the whole vocabulary, the mask token included: a position whose
    prediction is the mask token stays masked (and may end the decode masked, as in the reference).
    alg_temp > 0 draws the n positions from softmax(confidence / alg_temp) with the decode's seed.

    Generalised: with several blocks the schedule runs per block, steps / blocks forwards each over the block's
    masks (steps must be a multiple of the number of blocks); M is each row's own count (the reference uses the
    batch's mean, the same with one row). Not reproduced: top_p/top_k filtering (the harness has no such
    switch); at temperature > 0 the token is the engine's Gumbel-max sample of the same distribution (float64
    logits), not torch's Categorical draw, and alg_temp's draws are Gumbel top-k, not torch.multinomial (same
    distributions, other random numbers); ties in confidence go to the earlier position (torch.topk leaves
    them unspecified). `origin` (reveal each mask with probability 1 - s/t) is not offered."""

    @dataclass(frozen=True)
    class Config(PolicyConfig):
        # total forwards (NFE), split evenly over blocks; None: gen_length (Dream's example: steps = max_new_tokens)
        steps: int | None = None
        eps: float = field(default=1e-3, metadata={"symbol": "ε", "secondary": True})  # the last timestep (1e-3)
        # > 0: sample the committed positions from softmax(confidence / alg_temp) (Dream: 0, the most confident)
        alg_temp: float = field(default=0.0, metadata={"secondary": True})

        def validate(self):
            super().validate()
            self.require("steps", self.steps is None or self.steps > 0, "> 0")
            self.require("eps", 0 <= self.eps < 1, "in [0, 1)")
            self.require("alg_temp", self.alg_temp >= 0, ">= 0")

    confidence: ClassVar  # (p [n, W, vocab], tokens [n, W]) -> [n, W], higher commits first

    def max_forwards_per_block(self, decoding):
        return self.steps_per_block(decoding)

    def begin(self, canvas, prompt_length):
        return BlockForwards(forwards=canvas.new_zeros(canvas.shape[0]),
                             schedule=self.block_timesteps(canvas, prompt_length))

    def more_forwards(self, memory):
        return memory.forwards < len(memory.schedule) - 1

    def step(self, state):
        memory, rows = state.memory, state.rows
        i = memory.forwards[rows]  # this forward's index in the block
        memory.forwards[rows] += 1
        p = dream_probabilities(state.logits, self.temperature)
        tokens = dream_tokens(p, state.prediction, self.temperature)
        masked = state.masked & state.in_block
        n = transfer_count(masked.sum(-1), i, memory.schedule)
        commit = choose(type(self).confidence(p, tokens), masked, n, self.config.alg_temp, state.generator)
        return Decision(commit=commit, tokens=tokens)


@register_policy("maskgit_plus")
class MaskGITPlus(DreamSampler):
    """Dream's alg="maskgit_plus": confidence = the probability of the chosen token."""

    confidence = staticmethod(top1_probability)


@register_policy("topk_margin")
class TopKMargin(DreamSampler):
    """Dream's alg="topk_margin": confidence = top-1 minus top-2 probability."""

    confidence = staticmethod(top2_margin)


@register_policy("entropy")
class Entropy(DreamSampler):
    """Dream's alg="entropy" (its documented example): confidence = the negative entropy sum p log(p + 1e-10)."""

    confidence = staticmethod(negative_entropy)
