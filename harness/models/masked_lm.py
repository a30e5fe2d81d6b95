"""Any transformers masked LM (Dream and other non-LLaDA dLLMs) behind the engine's model interface."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn


class MaskedLM(nn.Module):
    """Wraps an `AutoModelForMaskedLM`. No KV cache: every step is a full forward.

    shift_logits: the model predicts token i at position i-1 (Dream, initialised from an AR model); the logits
    are realigned so that position i holds the prediction for token i, as the engine expects.
    """

    supports_cache = False

    def __init__(self, model: nn.Module, *, mask_token_id: int, eos_token_id: int, max_length: int,
                 shift_logits: bool = False, tokenizer=None):
        super().__init__()
        self.model = model
        self.mask_token_id = mask_token_id
        self.eos_token_id = eos_token_id
        self.max_length = max_length
        self.shift_logits = shift_logits
        self.tokenizer = tokenizer

    @classmethod
    def from_folder(cls, folder: Path, *, dtype, device, shift_logits=False, trust_remote_code=False,
                    mask_token_id=None, eos_token_id=None, tokenizer=None) -> MaskedLM:
        from transformers import AutoModelForMaskedLM
        model = AutoModelForMaskedLM.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code)
        cfg = model.config

        def token_id(override, attr):
            for value in (override, getattr(cfg, attr, None), getattr(tokenizer, attr, None)):
                if value is not None:
                    return value
            raise ValueError(f"{folder}: no {attr} in config.json or the tokenizer; pass {attr}=...")

        max_length = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "max_sequence_length", None)
        return cls(model.to(device).eval().requires_grad_(False),
                   mask_token_id=token_id(mask_token_id, "mask_token_id"),
                   eos_token_id=token_id(eos_token_id, "eos_token_id"),
                   max_length=max_length or 1 << 30, shift_logits=shift_logits, tokenizer=tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *, start: int = 0,
                cache=None) -> Tensor:
        if cache is not None or start != 0:
            raise ValueError("this model has no KV cache; decode with cache='none'")
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        if self.shift_logits:
            logits = torch.cat((logits[:, :1], logits[:, :-1]), dim=1)
        return logits
