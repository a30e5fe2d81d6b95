"""Decoding settings: one flat, validated dataclass shared by the engine and every policy."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

CACHE_MODES = ("none", "prefix", "dual")
REMASKING = ("low_confidence", "random")


class ConfigError(ValueError):
    """An invalid decoding setting, reported in one line before any forward pass."""


@dataclass(frozen=True)
class DecodeConfig:
    gen_length: int = 256  # G: masked positions appended to the prompt
    block_length: int = 32  # B: semi-autoregressive block size
    steps: int | None = None  # total step budget of the baseline schedule; None means gen_length
    strategy: str = "baseline"  # a registered policy (see harness.decoding.policies)
    remasking: str = "low_confidence"  # baseline's score: model confidence or a random draw
    temperature: float = 0.0  # > 0 samples predictions with Gumbel-max on float64 logits
    threshold: float = 0.9  # threshold: commit positions with confidence > threshold
    factor: float = 1.0  # factor: Fast-dLLM's (k+1)(1 - c_k) <= factor rule
    gamma: float = 0.1  # entropy_bounded: entropy budget of one step
    filter_path: str | None = None  # learned: a filter file, or a shipped filter's name ("tiny")
    filter_threshold: float = 0.96  # learned: commit masked positions with sigma(f(c)) > filter_threshold
    outranked_threshold: float | None = None  # learned: a stricter tau_f where another position claims the token
    eotp: bool = False  # End-of-Text Prediction: cut the canvas once EOS is predicted
    cache: str = "none"  # none | prefix | dual (Fast-dLLM KV caches, refreshed once per block)
    seed: int = 0  # for temperature sampling and random remasking

    def __post_init__(self):
        from .policy import POLICIES  # late import: policies import this module
        for name in (f.name for f in fields(self)):  # NaN passes every range check below
            if isinstance(getattr(self, name), float) and not math.isfinite(getattr(self, name)):
                raise ConfigError(f"decoding.{name} must be a finite number, got {getattr(self, name)}")
        if self.gen_length <= 0 or self.block_length <= 0:
            raise ConfigError(f"gen_length ({self.gen_length}) and block_length ({self.block_length}) must be > 0")
        if self.gen_length % self.block_length:
            raise ConfigError(f"gen_length ({self.gen_length}) must be a multiple of "
                              f"block_length ({self.block_length})")
        if self.steps is not None and (self.steps <= 0 or self.steps % self.num_blocks):
            raise ConfigError(f"steps ({self.steps}) must be a positive multiple of the number of blocks "
                              f"({self.num_blocks} = gen_length / block_length)")
        if self.strategy not in POLICIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose from {sorted(POLICIES)}")
        if self.cache not in CACHE_MODES:
            raise ConfigError(f"unknown cache {self.cache!r}; choose from {list(CACHE_MODES)}")
        if self.remasking not in REMASKING:
            raise ConfigError(f"unknown remasking {self.remasking!r}; choose from {list(REMASKING)}")
        for name in ("threshold", "filter_threshold", "outranked_threshold"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {value}")
        if self.factor <= 0 or self.gamma < 0 or self.temperature < 0:
            raise ConfigError(f"factor must be > 0, gamma and temperature >= 0 (got factor={self.factor}, "
                              f"gamma={self.gamma}, temperature={self.temperature})")
        POLICIES[self.strategy].check(self)

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return (self.steps or self.gen_length) // self.num_blocks

    def to_dict(self) -> dict:
        return asdict(self)
