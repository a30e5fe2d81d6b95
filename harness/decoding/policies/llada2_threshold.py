from dataclasses import dataclass, field

import torch

from ..policy import ConfigError, Decision, Policy, PolicyConfig, register_policy, top_k


@dataclass
class Progress:
    """Per row: whether an earlier block ended at the step limit with masks left (they block the EOS early
    stop, as masks before the EOS), and the canvas length (an `end` that cuts nothing)."""

    masks_left: torch.Tensor  # [batch] bool
    length: int


@register_policy("llada2_threshold")
class LLaDA2Threshold(Policy):
    """LLaDA2's decoding rule (HF `LLaDA2MoeModelLM.generate`), per block. A block runs at most
    S = min(steps, gen_length // minimal_topk) forwards; step i's quota q comes from B (not from the masks left):
    floor(B / S), plus one for the first B mod S steps. Among the block's masked positions (float32 softmax
    confidence of the argmax over the whole vocabulary, mask token included), if at least q have confidence
    > threshold commit all of them, else the min(q, masks) most confident. After a block ends, an EOS in its
    generated part stops the row: everything after the first EOS becomes EOS (Decision.end). With
    eos_early_stop, a step that commits an EOS also stops the row when no mask is left before the first EOS.

    Reference quirks kept: with S > B later quotas are 0 and a block may end with masks left, which stay in the
    output (also when the mask token wins the argmax and "commits"). Not reproduced: the early-stop EOS search
    covers the generated part only (the reference's also reads the prompt, so an EOS in the prompt stops it at
    once); sampling (temperature > 0) is the engine's Gumbel-max sample, without the reference's top-k/top-p
    filters. A per-block rule: it also decodes bidirectional models (blocks from the prompt's end)."""

    @dataclass(frozen=True)
    class Config(PolicyConfig):
        threshold: float = field(default=0.95, metadata={"symbol": "τ"})  # commit confidence > τ (0.95)
        steps: int = field(default=32, metadata={"secondary": True})  # forwards per block at most (32)
        # S = min(steps, gen_length // minimal_topk) (1)
        minimal_topk: int = field(default=1, metadata={"secondary": True})
        eos_early_stop: bool = False  # stop at a committed EOS with no mask before it (False)

        def validate(self):
            super().validate()
            self.require("threshold", 0 <= self.threshold <= 1, "in [0, 1]")
            self.require("steps", self.steps >= 1, ">= 1")
            self.require("minimal_topk", self.minimal_topk >= 1, ">= 1")

    @classmethod
    def check(cls, decoding):
        if decoding.gen_length < decoding.policy.minimal_topk:
            raise ConfigError(f"decoding.minimal_topk ({decoding.policy.minimal_topk}) above gen_length "
                              f"({decoding.gen_length}) leaves no step per block")

    def steps_per_block(self, decoding):
        return min(self.config.steps, decoding.gen_length // self.config.minimal_topk)

    def block_forward_limit(self, decoding):
        return self.steps_per_block(decoding)

    def __init__(self, decoding):
        super().__init__(decoding)
        self.steps = self.steps_per_block(decoding)

    def begin(self, canvas, prompt_length):
        return Progress(masks_left=canvas.new_zeros(canvas.shape[0], dtype=torch.bool), length=canvas.shape[1])

    def step(self, state):
        memory, B, S = state.memory, self.block_length, self.steps
        quota = B // S + int(state.step < B % S)
        masked = state.masked & state.in_block
        confident = masked & (state.confidence > self.config.threshold)
        commit = torch.where((confident.sum(-1) >= quota)[:, None], confident, top_k(state.confidence, masked, quota))

        written = torch.where(commit, state.prediction, state.tokens)
        left = masked & (written == state.mask_id)  # the block's masks after this step
        block_ends = ~left.any(-1) | (state.step + 1 >= S)
        eos = (written == state.eos_id) & state.generated & state.inside
        first = eos.int().argmax(-1)
        stop = eos.any(-1) & block_ends
        if self.config.eos_early_stop:
            before_first = torch.arange(eos.shape[-1], device=eos.device) < first[:, None]
            committed_eos = (commit & (state.prediction == state.eos_id)).any(-1)
            stop |= committed_eos & ~(left & before_first).any(-1) & ~memory.masks_left[state.rows]
        memory.masks_left[state.rows] |= left.any(-1) & block_ends
        end = torch.where(stop, state.start + first + 1, memory.length)
        return Decision(commit=commit, tokens=state.prediction, end=end)
