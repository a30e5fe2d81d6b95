from dataclasses import dataclass, field

from ..policy import Policy, PolicyConfig, prefix_length, register_policy, top_k


@register_policy("entropy_bounded")
class EntropyBounded(Policy):
    """EB-sampler: sort masked positions by entropy (lowest first) and commit the longest prefix whose entropy
    sum minus its largest entropy stays <= gamma. Sorted ascending, that is the sum of all but the last."""

    @dataclass(frozen=True)
    class Config(PolicyConfig):
        gamma: float = field(default=0.1, metadata={"symbol": "γ"})  # entropy budget of one step (nats)

        def validate(self):
            super().validate()
            self.require("gamma", self.gamma >= 0, ">= 0")

    def select(self, state):
        entropy = state.entropy.masked_fill(~state.masked, float("inf"))
        ascending = entropy.sort(-1).values
        n = prefix_length(ascending.cumsum(-1) - ascending <= self.config.gamma)
        return top_k(-entropy, state.masked, n)
