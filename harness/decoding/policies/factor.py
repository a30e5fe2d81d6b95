from dataclasses import dataclass, field

import torch

from ..policy import Policy, PolicyConfig, prefix_length, register_policy, top_k


@register_policy("factor")
class Factor(Policy):
    """Fast-dLLM's factor rule: with the block's masked confidences sorted c_1 >= c_2 >= ..., commit the
    longest prefix with (k + 1)(1 - c_k) <= factor for every k in it (k = 1 always).

    Quirk kept by default (`rule=reference`, Fast-dLLM's `get_transfer_index_dynamic`): when the first
    failing rank is the last masked one, the reference's loop index ends where a full pass ends, so it commits
    every masked position, the failing one included. `rule=clean` commits only the passing prefix."""

    @dataclass(frozen=True)
    class Config(PolicyConfig):
        factor: float = field(default=1.0, metadata={"symbol": "f"})  # (k + 1)(1 - c_k) <= f; larger commits more
        rule: str = "reference"  # reference (Fast-dLLM's code, off-by-one at the last rank) | clean (the paper's)

        def validate(self):
            super().validate()
            self.require("factor", self.factor > 0, "> 0")
            self.require("rule", self.rule in ("reference", "clean"), "reference or clean")

    def select(self, state):
        conf = state.confidence.masked_fill(~state.masked, -1.0).sort(-1, descending=True).values
        k = torch.arange(1, conf.shape[-1] + 1, device=conf.device)
        n = prefix_length((k + 1) * (1 - conf) <= self.config.factor)
        if self.config.rule == "reference":
            masks = state.masked.sum(-1)
            n = torch.where(n == masks - 1, masks, n)  # failed only at the last rank: all of them
        return top_k(state.confidence, state.masked, n)
