from dataclasses import dataclass

import torch

from ..policy import ConfigError, Policy, PolicyConfig, register_policy, top_k


@register_policy("baseline")
class Baseline(Policy):
    """LLaDA: commit the schedule's quota of masked positions, most confident first (or at random)."""

    @dataclass(frozen=True)
    class Config(PolicyConfig):
        steps: int | None = None  # total step budget of the uniform schedule; None: G (one token per step)
        remasking: str = "low_confidence"  # the score: model confidence (low_confidence) or a random draw (random)

        def validate(self):
            super().validate()
            self.require("steps", self.steps is None or self.steps > 0, "> 0")
            self.require("remasking", self.remasking in ("low_confidence", "random"), "low_confidence or random")

    @classmethod
    def check(cls, decoding):
        steps = decoding.policy.steps
        if steps is not None and steps % decoding.num_blocks:
            raise ConfigError(f"decoding.steps ({steps}) must be a multiple of the number of blocks "
                              f"({decoding.num_blocks} = gen_length / block_length)")

    def steps_per_block(self, decoding):
        return (self.config.steps or decoding.gen_length) // decoding.num_blocks

    def select(self, state):
        if self.config.remasking == "random":
            score = torch.rand(state.confidence.shape, generator=state.generator, device=state.confidence.device)
        else:
            score = state.confidence
        return top_k(score, state.masked, state.quota)
