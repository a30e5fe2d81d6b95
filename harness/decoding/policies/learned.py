import math
from dataclasses import dataclass, field

import torch

from ...learn2pd.filter import load_filter, resolve_filter
from ..policy import ConfigError, Policy, PolicyConfig, register_policy, top_k


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

    @dataclass(frozen=True)
    class Config(PolicyConfig):
        # a filter file (ours or layer_2_flan.pth) or a shipped name ("tiny"); Hydra: the model's own filter
        filter_path: str | None = field(default=None, metadata={"hydra_default": "${model.filter}", "symbol": "filter"})
        # tau_f: commit masked positions with sigma(f(c)) > tau_f (the paper's 0.96, or the model filter's)
        filter_threshold: float = field(default=0.96, metadata={"hydra_default": "${model.filter_threshold}",
                                                                 "symbol": "τ_f"})
        # τ_o: a stricter τ_f where another position claims the token
        outranked_threshold: float | None = field(default=None, metadata={"symbol": "τ_o"})

        def validate(self):
            super().validate()
            for knob in ("filter_threshold", "outranked_threshold"):
                value = getattr(self, knob)
                self.require(knob, value is None or 0 < value <= 1, "in (0, 1]")
            if self.outranked_threshold is not None and self.outranked_threshold < self.filter_threshold:
                raise ConfigError(f"decoding.outranked_threshold ({self.outranked_threshold}) below "
                                  f"filter_threshold ({self.filter_threshold}) would change nothing; "
                                  f"it can only be stricter")

    def __init__(self, decoding):
        super().__init__(decoding)
        self.filter = load_filter(self.config.filter_path)
        if self.filter.block_length != decoding.block_length:
            raise ConfigError(f"filter {self.config.filter_path} was trained for block_length "
                              f"{self.filter.block_length}, not {decoding.block_length}")
        self.logit_threshold = logit(self.config.filter_threshold)
        tau_o = self.config.outranked_threshold
        self.outranked_logit_threshold = None if tau_o is None else logit(tau_o)

    @classmethod
    def check(cls, decoding):
        path = decoding.policy.filter_path
        if not path:
            raise ConfigError("strategy 'learned' needs decoding.filter_path (a trained filter file, or 'tiny')")
        if not resolve_filter(path).is_file():
            raise ConfigError(f"filter file not found: {resolve_filter(path)}")

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
