import math

import torch

from ..policy import ConfigError, Policy, register_policy, top_k


def logit(tau: float) -> float:
    """sigma(z) > tau  <=>  z > logit(tau): no sigmoid on the hot path."""
    return math.inf if tau >= 1 else math.log(tau) - math.log1p(-tau)


@register_policy("learned")
class Learned(Policy):
    """Learn2PD: commit the masked positions the filter accepts (sigma(f(c)) > tau_f) together with the
    baseline's own quota pick, so every step commits at least what the baseline would.

    Optionally (`outranked_threshold`, not in the paper) a position whose token another block position holds
    or predicts more confidently must pass a stricter threshold: one token committed twice in a step is the
    typical parallel-decoding conflict (`return x * 1 + x`), while some answers do repeat a token."""

    def __init__(self, config):
        super().__init__(config)
        from ...learn2pd.filter import load_filter
        self.filter = load_filter(config.filter_path)
        if self.filter.block_length != config.block_length:
            raise ConfigError(f"filter {config.filter_path} was trained for block_length "
                              f"{self.filter.block_length}, not {config.block_length}")
        self.logit_threshold = logit(config.filter_threshold)
        tau_o = config.outranked_threshold
        self.outranked_logit_threshold = None if tau_o is None else logit(tau_o)

    @classmethod
    def check(cls, config):
        from ...learn2pd.filter import resolve_filter
        if not config.filter_path:
            raise ConfigError("strategy 'learned' needs filter_path= (a trained filter file, or 'tiny')")
        if not resolve_filter(config.filter_path).is_file():
            raise ConfigError(f"filter file not found: {resolve_filter(config.filter_path)}")
        if config.outranked_threshold is not None and config.outranked_threshold < config.filter_threshold:
            raise ConfigError(f"outranked_threshold ({config.outranked_threshold}) below filter_threshold "
                              f"({config.filter_threshold}) would change nothing; it can only be stricter")

    def select(self, state):
        if self.filter.linear1.weight.device != state.confidence.device:
            self.filter.to(state.confidence.device)
        flags = None  # with an outranked threshold: computed once here, for it and for the filter's inputs
        if self.outranked_logit_threshold is not None:
            flags = self.filter.step_flags(state.prediction, state.tokens, state.confidence, state.masked,
                                           state.eos_id)
        logits = self.filter.decode_logits(state.confidence, state.step, state.prediction, state.tokens, state.masked,
                                           state.eos_id, flags=flags)
        accepted = logits > self.logit_threshold
        if self.outranked_logit_threshold is not None:
            accepted &= ~torch.as_tensor(flags["outranked"]) | (logits > self.outranked_logit_threshold)
        return (state.masked & accepted) | top_k(state.confidence, state.masked, state.quota)
