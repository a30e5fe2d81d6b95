"""Block-wise dLLM decoding: `generate(model, input_ids, DecodeConfig.create(strategy=..., knob=...))` with any
registered policy."""
from . import policies  # noqa: F401  (registers the built-in strategies)
from .config import DecodeConfig
from .engine import DecodeOutput, Trace, generate
from .policy import (
    CACHE_MODES,
    LOOP_SWITCHES,
    Decision,
    POLICIES,
    ConfigError,
    Policy,
    PolicyConfig,
    StepState,
    knob_symbol,
    method_of,
    register_policy,
    top_k,
)

__all__ = ["CACHE_MODES", "LOOP_SWITCHES", "POLICIES", "ConfigError", "DecodeConfig", "DecodeOutput", "Decision",
           "Policy", "PolicyConfig", "StepState", "Trace", "generate", "knob_symbol", "method_of", "register_policy",
           "top_k"]
