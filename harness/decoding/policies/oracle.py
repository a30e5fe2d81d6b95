from ..policy import Policy, register_policy, top_k


@register_policy("oracle")
class Oracle(Policy):
    """Learn2PD's "Extremely Greedy Parallel": commit exactly the positions whose prediction already equals the
    reference (a baseline decode of the same prompt). When none does, commit the most confident masked position
    with its reference token, so it never stalls and never commits a wrong token."""

    needs_reference = True
    needs_bidirectional = "its reference has no tokens for the positions past gen_length that fill the last block"

    def select(self, state):
        hits = state.masked & (state.prediction == state.reference)
        stalled = ~hits.any(-1, keepdim=True)
        return hits | (stalled & top_k(state.confidence, state.masked, 1))

    def tokens(self, state):
        return state.reference
