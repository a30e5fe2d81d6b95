import torch

from ..policy import Policy, register_policy, top_k


@register_policy("baseline")
class Baseline(Policy):
    """LLaDA: commit the schedule's quota of masked positions, most confident first (or at random)."""

    def select(self, state):
        if self.config.remasking == "random":
            score = torch.rand(state.confidence.shape, generator=state.generator, device=state.confidence.device)
        else:
            score = state.confidence
        return top_k(score, state.masked, state.quota)
