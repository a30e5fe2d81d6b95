from dataclasses import dataclass

from ..policy import Policy, PolicyConfig, register_policy, top_k


@register_policy("margin")
class Margin(Policy):
    """Margin confidence (Dream's `topk_margin`: top-1 minus top-2 probability) with a threshold: commit every
    masked position whose margin exceeds it, and always the largest-margin one so a block never stalls.

    The default 0.9 matches Fast-dLLM's tau: a margin above 0.9 implies a top-1 probability above 0.9, so this
    commits a subset of what `threshold` 0.9 commits, leaving out positions whose remaining mass sits on one
    rival token (p1 = 0.92, p2 = 0.07: margin 0.85)."""

    @dataclass(frozen=True)
    class Config(PolicyConfig):
        margin_threshold: float = 0.9  # commit positions whose p(top-1) - p(top-2) exceeds it; 1: one per step

        def validate(self):
            super().validate()
            self.require("margin_threshold", 0 <= self.margin_threshold <= 1, "in [0, 1]")

    def select(self, state):
        top2 = state.probabilities.topk(2, dim=-1).values
        margin = top2[..., 0] - top2[..., 1]
        confident = state.masked & (margin > self.config.margin_threshold)
        return confident | top_k(margin, state.masked, 1)
