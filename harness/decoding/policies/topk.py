from dataclasses import dataclass

from ..policy import Policy, PolicyConfig, register_policy, top_k


@register_policy("topk")
class TopK(Policy):
    """Fixed-step parallel decoding (Fast-dLLM's fixed-k ablation, ParallelBench): commit the k most confident
    masked positions at every step, whatever their confidence (all that remain when fewer are masked)."""

    @dataclass(frozen=True)
    class Config(PolicyConfig):
        k: int = 2  # positions committed per step; 1 is the one-token-per-step baseline

        def validate(self):
            super().validate()
            self.require("k", self.k >= 1, ">= 1")

    def select(self, state):
        return top_k(state.confidence, state.masked, self.config.k)
