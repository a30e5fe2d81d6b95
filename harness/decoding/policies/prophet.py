from dataclasses import dataclass, field, replace

import torch

from ..policy import Decision, register_policy
from .baseline import Baseline

ANSWER_LENGTH = 5  # positions whose logit gap is watched (hard-coded in the reference sampler)


@dataclass
class ProphetMemory:
    forwards: torch.Tensor  # [batch] the reference's global step g: forwards so far, this one included
    block_steps: torch.Tensor  # [batch] forwards in the current block (the block runs S of them)
    exited: torch.Tensor  # [batch] bool: committed everything early
    prompt_length: int
    canvas_length: int
    steps: int  # the decode's total step budget (progress = g / steps)
    steps_per_block: int


@register_policy("prophet")
class Prophet(Baseline):
    """Prophet (pixeli99/Prophet `generate_earlyexit.generate`): LLaDA's baseline, and after every forward an
    early-exit test on the answer positions: when the mean top-1 minus top-2 raw-logit gap over them reaches
    the phase's threshold (early / mid / late by progress g / steps < 0.33 / < 0.67 / else), every masked
    position of the canvas takes this forward's prediction and the decode ends (that step's normal commit
    does not happen). NFE = forwards, g at the exit.

    Reproduced from the reference: the gap uses raw logits, so the thresholds depend on the model's logit
    scale; g is 1-based and counts every forward; the answer positions `answer_start` .. +4 (gen-relative,
    clipped to the canvas; none left means no exit) are scored whether or not they are decoded yet; a block
    always runs its S forwards, also those whose quota is 0 (the baseline loop has no early block exit).
    Not reproduced: the reference's `constraints` (tokens forced at given positions; its eval derives the
    answer start from them). The reference has no default answer position (its README estimates 200 of G =
    256, its eval disables the exit without constraints); the default here, 0, watches the first tokens,
    where the embedded tasks put their answer."""

    needs_bidirectional = "its early exit reads the answer positions in any block and commits every later one"
    caches = ("none",)
    no_cache_because = "the early exit reads the answer positions (in any block) and commits every later position"

    @dataclass(frozen=True)
    class Config(Baseline.Config):
        # exit iff mean gap >= it while g/steps < 0.33
        early_threshold: float = field(default=7.5, metadata={"symbol": "γe"})
        mid_threshold: float = field(default=5.0, metadata={"symbol": "γm"})  # ... while g/steps < 0.67
        late_threshold: float = field(default=2.5, metadata={"symbol": "γl"})  # ... afterwards
        # first watched position (gen-relative); the README's example: 200 of G 256
        answer_start: int = field(default=0, metadata={"secondary": True})

        def validate(self):
            super().validate()
            for knob in ("early_threshold", "mid_threshold", "late_threshold"):
                self.require(knob, getattr(self, knob) >= 0, ">= 0")
            self.require("answer_start", self.answer_start >= 0, ">= 0")

    def begin(self, canvas, prompt_length):
        zeros = torch.zeros(canvas.shape[0], dtype=torch.long, device=canvas.device)
        gen_length = canvas.shape[1] - prompt_length
        steps = self.config.steps or gen_length
        return ProphetMemory(zeros, zeros.clone(), zeros.bool(), prompt_length, canvas.shape[1], steps,
                             steps * self.block_length // gen_length)

    def window(self, memory, block_start, block_end, canvas_end):
        return min(block_start, memory.prompt_length + self.config.answer_start), canvas_end

    def keep_decoding(self, memory, has_mask):
        return (has_mask | (memory.block_steps % memory.steps_per_block > 0)) & ~memory.exited

    def step(self, state):
        memory, rows = state.memory, state.rows
        memory.forwards[rows] += 1
        memory.block_steps[rows] = state.step + 1
        exit_now = self.early_exit(state, memory.forwards[rows])
        memory.exited[rows] |= exit_now
        normal = super().select(replace(state, masked=state.masked & state.in_block))
        return Decision(commit=torch.where(exit_now[:, None], state.masked, normal), tokens=state.prediction)

    def early_exit(self, state, forwards):
        """[n] bool: the mean logit gap over the answer positions reaches this phase's threshold."""
        first = state.prompt_length + self.config.answer_start
        last = min(first + ANSWER_LENGTH, state.memory.canvas_length, state.start + state.logits.shape[1])
        if last <= first:
            return torch.zeros_like(forwards, dtype=torch.bool)
        top2 = state.logits[:, first - state.start:last - state.start].float().topk(2, dim=-1).values
        gap = (top2[..., 0] - top2[..., 1]).mean(-1)
        progress = forwards / state.memory.steps
        threshold = torch.where(progress < 0.33, self.config.early_threshold,
                                torch.where(progress < 0.67, self.config.mid_threshold, self.config.late_threshold))
        return gap >= threshold
