from dataclasses import dataclass, field

from ..policy import Policy, PolicyConfig, register_policy, top_k


@register_policy("threshold")
class Threshold(Policy):
    """Fast-dLLM: commit every masked position whose confidence exceeds tau, and always the most confident
    one so a block never stalls. Strictly greater, so tau = 1 reduces to one token per step."""

    @dataclass(frozen=True)
    class Config(PolicyConfig):
        threshold: float = field(default=0.9, metadata={"symbol": "τ"})  # commit confidence > τ (Fast-dLLM: 0.9)

        def validate(self):
            super().validate()
            self.require("threshold", 0 < self.threshold <= 1, "in (0, 1]")

    def select(self, state):
        confident = state.masked & (state.confidence > self.config.threshold)
        return confident | top_k(state.confidence, state.masked, 1)
