"""Decoding settings: the loop's switches plus the chosen policy's own knobs (its `Config`), validated once."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .policy import CACHE_MODES, LOOP_SWITCHES, POLICIES, ConfigError, Policy, PolicyConfig


@dataclass(frozen=True)
class DecodeConfig:
    gen_length: int = 256  # G: masked positions appended to the prompt
    block_length: int = 32  # B: semi-autoregressive block size
    strategy: str = "baseline"  # a registered policy (see harness.decoding.policies)
    temperature: float = 0.0  # > 0 samples predictions with Gumbel-max on float64 logits
    eotp: bool = False  # End-of-Text Prediction: cut the canvas once EOS is predicted
    cache: str = "none"  # none | prefix | dual (Fast-dLLM KV caches, refreshed once per block)
    seed: int = 0  # for temperature sampling and random choices of a policy
    policy: PolicyConfig | None = None  # the strategy's knobs (its `Config`); None: its defaults

    def __post_init__(self):
        if self.strategy not in POLICIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose from {sorted(POLICIES)}")
        knobs_type = POLICIES[self.strategy].Config
        if self.policy is None:
            object.__setattr__(self, "policy", knobs_type())
        elif type(self.policy) is not knobs_type:
            raise ConfigError(f"strategy {self.strategy!r} takes {knobs_type.__qualname__}, "
                              f"not {type(self.policy).__qualname__}")
        if self.gen_length <= 0 or self.block_length <= 0:
            raise ConfigError(f"gen_length ({self.gen_length}) and block_length ({self.block_length}) must be > 0")
        if self.gen_length % self.block_length:
            raise ConfigError(f"gen_length ({self.gen_length}) must be a multiple of "
                              f"block_length ({self.block_length})")
        if self.cache not in CACHE_MODES:
            raise ConfigError(f"unknown cache {self.cache!r}; choose from {list(CACHE_MODES)}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"decoding.temperature must be a finite number >= 0, got {self.temperature}")
        policy = POLICIES[self.strategy]
        if self.cache not in policy.caches:
            raise ConfigError(f"strategy {self.strategy!r} cannot run with cache={self.cache!r}"
                              f"{': ' + policy.no_cache_because if policy.no_cache_because else ''}; "
                              f"use cache={' or '.join(repr(c) for c in policy.caches)}")
        if policy.greedy_only and self.temperature > 0:
            raise ConfigError(f"strategy {self.strategy!r} decodes greedily, as its reference does; "
                              f"use temperature=0, not {self.temperature}")
        self.policy.validate()
        policy.check(self)

    @classmethod
    def create(cls, **settings) -> DecodeConfig:
        """From flat settings (lm-eval model args, Hydra's `decoding`): the loop switches, and the strategy's
        own knobs; any other key is an error naming it."""
        switches = {k: v for k, v in settings.items() if k in LOOP_SWITCHES}
        strategy = switches.get("strategy", cls.strategy)
        if strategy not in POLICIES:
            raise ConfigError(f"unknown strategy {strategy!r}; choose from {sorted(POLICIES)}")
        policy = POLICIES[strategy]
        knobs = {k: v for k, v in settings.items() if k not in LOOP_SWITCHES}
        unknown = sorted(set(knobs) - set(policy.knob_names()))
        if unknown:
            raise ConfigError(f"unknown decoding setting(s) {unknown} for strategy {strategy!r}; its knobs: "
                              f"{list(policy.knob_names()) or 'none'}; loop switches: {list(LOOP_SWITCHES)}")
        return cls(**switches, policy=policy.Config(**knobs))

    def with_strategy(self, strategy: str, **knobs) -> DecodeConfig:
        """The same loop switches with another strategy (its defaults unless `knobs` say otherwise)."""
        return DecodeConfig.create(**{**self.loop_switches(), "strategy": strategy, **knobs})

    def build_policy(self) -> Policy:
        """The strategy's policy for these settings: build it once per run (a learned policy loads its filter)
        and hand it to every `generate`."""
        return POLICIES[self.strategy](self)

    def loop_switches(self) -> dict:
        return {name: getattr(self, name) for name in LOOP_SWITCHES}

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    def to_dict(self) -> dict:
        """Flat: the loop switches, the strategy and its own knobs (nothing of other strategies)."""
        return self.loop_switches() | asdict(self.policy)
