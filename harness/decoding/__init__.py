"""Block-wise dLLM decoding: `generate(model, input_ids, DecodeConfig(...))` with any registered policy."""
from . import policies  # noqa: F401  (registers the built-in strategies)
from .config import CACHE_MODES, ConfigError, DecodeConfig
from .engine import DecodeOutput, Trace, generate
from .policy import POLICIES, Policy, StepState, register_policy, top_k

__all__ = ["CACHE_MODES", "POLICIES", "ConfigError", "DecodeConfig", "DecodeOutput", "Policy", "StepState",
           "Trace", "generate", "register_policy", "top_k"]
