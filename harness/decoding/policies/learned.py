import math

from ..policy import ConfigError, Policy, register_policy, top_k


@register_policy("learned")
class Learned(Policy):
    """Learn2PD: commit the masked positions the filter accepts (sigma(f(c)) > tau_f) together with the
    baseline's own quota pick, so every step commits at least what the baseline would."""

    def __init__(self, config):
        super().__init__(config)
        from ...learn2pd.filter import load_filter
        self.filter = load_filter(config.filter_path)
        if self.filter.block_length != config.block_length:
            raise ConfigError(f"filter {config.filter_path} was trained for block_length "
                              f"{self.filter.block_length}, not {config.block_length}")
        tau = config.filter_threshold  # sigma(z) > tau  <=>  z > logit(tau); no sigmoid on the hot path
        self.logit_threshold = math.inf if tau >= 1 else math.log(tau) - math.log1p(-tau)

    @classmethod
    def check(cls, config):
        from ...learn2pd.filter import resolve_filter
        if not config.filter_path:
            raise ConfigError("strategy 'learned' needs filter_path= (a trained filter file, or 'tiny')")
        if not resolve_filter(config.filter_path).is_file():
            raise ConfigError(f"filter file not found: {resolve_filter(config.filter_path)}")

    def select(self, state):
        if self.filter.linear1.weight.device != state.confidence.device:
            self.filter.to(state.confidence.device)
        logits = self.filter.decode_logits(state.confidence, state.step, state.prediction, state.tokens, state.masked,
                                           state.eos_id)
        accepted = state.masked & (logits > self.logit_threshold)
        return accepted | top_k(state.confidence, state.masked, state.quota)
