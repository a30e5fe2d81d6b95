from dataclasses import dataclass, field

import torch

from ..policy import ConfigError, Decision, PolicyConfig, register_policy, top_k
from .dream_samplers import (
    BlockForwards,
    FixedForwards,
    TemperedPolicy,
    choose,
    dream_probabilities,
    dream_tokens,
    negative_entropy,
    top1_probability,
    transfer_count,
)


@dataclass
class FastDreamBlock(BlockForwards):
    open: torch.Tensor | None = None  # [batch] bool: the block kept a mask after the row's last step


@register_policy("fastdllm_dream")
class FastDLLMDream(FixedForwards):
    """Fast-dLLM's block-wise Dream sampler (NVlabs/Fast-dLLM `dream/model/generation_utils_block.py`;
    shared/reference/dream.md §4b). Per block, the first forward (the cache refresh under cache=prefix|dual)
    commits the block's first position with its prediction, unconditionally; the later forwards follow `rule`
    (the reference's alg switch) over the block's masks until none is left, at least one of them per block:
    - threshold (alg="confidence_threshold"): commit the most confident mask and every mask whose confidence
      (p of the prediction) is >= τ. This is the `threshold` strategy's rule except for the refresh commit and
      the comparison (`threshold` commits > τ); where they differ, this is the reference.
    - entropy (any other alg): Dream's timestep quota on negative-entropy confidence with S = steps / blocks
      and linspace(1, eps, S + 1); the counter starts at 1 after the refresh (n = int(M (1 - s/t)), every mask
      at S - 1), and the forward at counter S commits nothing and ends the block: one extra forward when a
      mask is left (the model predicted the mask token), as the reference spends it.
    Confidences and tokens as Dream's samplers (dream_samplers.py): softmax of the temperature-scaled logits in
    their dtype, the mask token included (a predicted mask stays masked; under `threshold` such a block never
    ends, and the engine's forward cap raises where the reference loops forever).

    Generalised: per-row counts (the reference's quota uses the batch's mean, its threshold path batch 1);
    cache=none runs the same rule on full forwards (the reference's uncached path, §4a, is
    fastdllm_dream_canvas). Not reproduced: top_p/top_k; draws (temperature, alg_temp) come from the engine's
    generator with Gumbel noise. The reference asserts steps divisible by blocks also under `threshold`, where steps is unused; here only
    `entropy` checks it, and it refuses S < 2 (the reference would leave every block masked)."""

    @dataclass(frozen=True)
    class Config(PolicyConfig):
        rule: str = "threshold"  # threshold (alg="confidence_threshold") or entropy (any other alg)
        threshold: float = field(default=0.9, metadata={"symbol": "τ"})  # commit confidence >= τ (0.9)
        steps: int | None = None  # entropy: total steps, refreshes included, over blocks; None: gen_length
        eps: float = field(default=1e-3, metadata={"symbol": "ε", "secondary": True})  # entropy: last timestep
        alg_temp: float = field(default=0.0, metadata={"secondary": True})  # entropy: sample the positions if > 0

        def validate(self):
            super().validate()
            self.require("rule", self.rule in ("threshold", "entropy"), "threshold or entropy")
            self.require("threshold", 0 <= self.threshold <= 1, "in [0, 1]")
            self.require("steps", self.steps is None or self.steps > 0, "> 0")
            self.require("eps", 0 <= self.eps < 1, "in [0, 1)")
            self.require("alg_temp", self.alg_temp >= 0, ">= 0")

    @classmethod
    def check(cls, decoding):
        steps, blocks = decoding.policy.steps or decoding.gen_length, decoding.num_blocks
        if decoding.policy.rule == "entropy" and (steps % blocks or steps < 2 * blocks):
            raise ConfigError(f"decoding.steps ({steps}) must be a multiple of the number of blocks ({blocks}) "
                              f"and give each block >= 2 steps (its refresh and a quota step)")

    def steps_per_block(self, decoding):
        if self.config.rule == "threshold":
            return decoding.block_length
        return (self.config.steps or decoding.gen_length) // decoding.num_blocks

    def max_forwards_per_block(self, decoding):
        return self.steps_per_block(decoding) + 1  # threshold: refresh + B - 1 (+1 for B = 1); entropy: + extra

    def begin(self, canvas, prompt_length):
        batch = canvas.new_zeros(canvas.shape[0])
        return FastDreamBlock(forwards=batch, schedule=self.block_timesteps(canvas, prompt_length), open=batch.bool())

    def more_forwards(self, memory):
        go = (memory.forwards == 1) | memory.open  # one cached forward after the refresh, always
        if self.config.rule == "entropy":
            go &= memory.forwards < len(memory.schedule)  # the forward at counter S is the last
        return go

    def step(self, state):
        memory, rows, knobs = state.memory, state.rows, self.config
        memory.forwards[rows] += 1
        counter = memory.forwards[rows] - 1  # 0 at the refresh, then the reference's i = 1, 2, ...
        p = dream_probabilities(state.logits, self.temperature)
        tokens = dream_tokens(p, state.prediction, self.temperature)
        masked = state.masked & state.in_block
        if knobs.rule == "threshold":
            confidence = top1_probability(p, tokens)
            cached = (masked & (confidence >= knobs.threshold)) | top_k(confidence, masked, 1)
        else:
            last = len(memory.schedule) - 1
            n = transfer_count(masked.sum(-1), counter, memory.schedule).masked_fill(counter >= last, 0)
            cached = choose(negative_entropy(p, tokens), masked, n, knobs.alg_temp, state.generator)
        first = torch.zeros_like(masked)
        first[:, state.block_start] = True
        commit = torch.where((counter == 0)[:, None], first & masked, cached)
        memory.open[rows] = (masked & (~commit | (tokens == state.mask_id))).any(-1)
        return Decision(commit=commit, tokens=tokens)


@dataclass
class CanvasQuota:
    """Per row: forwards so far, the loop's length (extended at its last step), the base quota and the carry."""

    forwards: torch.Tensor  # [batch]
    budget: torch.Tensor  # [batch] the reference's `steps`, grown by one per last step that rejected a token
    quota: torch.Tensor  # [batch] M / steps, 0 once the loop was extended
    carried: torch.Tensor  # [batch] tokens the previous step rejected
    prompt_length: int


@register_policy("fastdllm_dream_canvas")
class FastDLLMDreamCanvas(TemperedPolicy):
    """Fast-dLLM's uncached Dream sampler (`dream/model/generation_utils.py`, alg="confidence_threshold";
    shared/reference/dream.md §4a): canvas-wide, no blocks. Each forward takes the k = M / steps + (tokens
    the previous step rejected) most confident masks of the canvas (p of the prediction, as Dream's
    samplers), commits the first and every other one with confidence >= τ, and carries the rejected count
    to the next step. A last step that rejects a token extends the loop by one forward with no base quota
    (so it ends once every mask is committed). NFE = steps + extensions.

    Generalised: per-row counts (the reference asserts batch 1); the loop runs in the engine's first block
    (later blocks have no mask left). Not reproduced: top_p/top_k; at temperature > 0 the engine's Gumbel
    sample. gen_length must be a multiple of steps, as the reference asserts."""

    @dataclass(frozen=True)
    class Config(PolicyConfig):
        threshold: float = field(default=0.9, metadata={"symbol": "τ"})  # commit confidence >= τ (0.9)
        steps: int | None = None  # the loop's length before extensions; None: gen_length (one token a step)

        def validate(self):
            super().validate()
            self.require("threshold", 0 <= self.threshold <= 1, "in [0, 1]")
            self.require("steps", self.steps is None or self.steps > 0, "> 0")

    caches = ("none",)
    no_cache_because = "it reads the whole canvas at every forward"

    @classmethod
    def check(cls, decoding):
        steps = decoding.policy.steps or decoding.gen_length
        if decoding.gen_length % steps:
            raise ConfigError(f"decoding.steps ({steps}) must divide gen_length ({decoding.gen_length})")

    def max_forwards_per_block(self, decoding):
        return 2 * decoding.gen_length  # steps, then at most one extension per mask

    def begin(self, canvas, prompt_length):
        gen_length = canvas.shape[1] - prompt_length
        steps = self.config.steps or gen_length
        zeros = canvas.new_zeros(canvas.shape[0])
        return CanvasQuota(forwards=zeros, budget=zeros + steps, quota=zeros + gen_length // steps,
                           carried=zeros.clone(), prompt_length=prompt_length)

    def window(self, memory, block_start, block_end, canvas_end):
        return memory.prompt_length, canvas_end

    def keep_decoding(self, memory, has_mask):
        return memory.forwards < memory.budget

    def step(self, state):
        memory, rows = state.memory, state.rows
        last = memory.forwards[rows] == memory.budget[rows] - 1
        memory.forwards[rows] += 1
        p = dream_probabilities(state.logits, self.temperature)
        tokens = dream_tokens(p, state.prediction, self.temperature)
        confidence = top1_probability(p, tokens)
        candidates = top_k(confidence, state.masked, memory.quota[rows] + memory.carried[rows])
        commit = top_k(confidence, state.masked, 1) | (candidates & (confidence >= self.config.threshold))
        rejected = (candidates & ~commit).sum(-1)
        memory.carried[rows] = rejected
        extend = last & (rejected > 0)
        memory.budget[rows] += extend.long()
        memory.quota[rows] = memory.quota[rows].masked_fill(extend, 0)
        return Decision(commit=commit, tokens=tokens)
