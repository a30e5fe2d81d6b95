"""Diffusion LMs behind one small interface: called as `model(input_ids, attention_mask, start=, cache=)` for
logits, with `mask_token_id`, `eos_token_id`, `vocab_size`, `max_length`, `tokenizer`, `supports_cache`."""
from .dream import Dream, DreamConfig, random_dream
from .layers import KVCache
from .llada import LLaDA, LLaDAConfig, random_llada
from .loading import load_model, save_llada
from .masked_lm import MaskedLM

__all__ = ["Dream", "DreamConfig", "KVCache", "LLaDA", "LLaDAConfig", "MaskedLM", "load_model", "random_dream", "random_llada", "save_llada"]
