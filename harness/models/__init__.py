"""Diffusion LMs behind one small interface: called as `model(input_ids, attention_mask, start=, cache=)` for
logits, with `mask_token_id`, `eos_token_id`, `vocab_size`, `max_length`, `tokenizer`, `supports_cache`."""
from .compiled import COMPILE_MODES, compile_model, compile_stats
from .dream import Dream, DreamConfig, random_dream
from .layers import KVCache
from .llada import LLaDA, LLaDAConfig, random_llada
from .llada2 import LLADA2_SHAPES, LLaDA2, LLaDA2Config, llada2_config, random_llada2
from .loading import load_model, save_llada
from .masked_lm import MaskedLM

__all__ = ["COMPILE_MODES", "LLADA2_SHAPES", "Dream", "DreamConfig", "KVCache", "LLaDA", "LLaDA2", "LLaDA2Config",
           "LLaDAConfig", "MaskedLM", "compile_model", "compile_stats", "llada2_config", "load_model",
           "random_dream", "random_llada", "random_llada2", "save_llada"]
