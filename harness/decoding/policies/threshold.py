from ..policy import Policy, register_policy, top_k


@register_policy("threshold")
class Threshold(Policy):
    """Fast-dLLM: commit every masked position whose confidence exceeds tau, and always the most confident
    one so a block never stalls. Strictly greater, so tau = 1 reduces to one token per step."""

    def select(self, state):
        confident = state.masked & (state.confidence > self.config.threshold)
        return confident | top_k(state.confidence, state.masked, 1)
