"""The policy interface: given the current block's predictions and confidences, which masked positions to
commit this step. A policy is one small class registered under its strategy name; the engine owns the loop,
the caches and EoTP."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch
from torch import Tensor

from .config import ConfigError, DecodeConfig

POLICIES: dict[str, type[Policy]] = {}


def register_policy(name: str):
    def add(cls: type[Policy]) -> type[Policy]:
        if name in POLICIES:
            raise ValueError(f"strategy {name!r} is registered twice")
        cls.name = name
        POLICIES[name] = cls
        return cls
    return add


@dataclass
class StepState:
    """One step of one block, for the n rows still decoding it. Block tensors are [n, block_length]."""

    logits: Tensor  # [n, B, vocab] logits of the block positions
    prediction: Tensor  # argmax (or Gumbel sample) per position
    confidence: Tensor  # probability of `prediction` at every block position, decoded ones included
    masked: Tensor  # bool: still masked and inside the (possibly EoTP-shortened) canvas
    quota: Tensor  # [n] tokens the baseline schedule commits at this step
    step: int  # step index within the block
    tokens: Tensor | None = None  # [n, B] the block before this step: decoded tokens, MASK, EOS past a cut
    eos_id: int | None = None
    reference: Tensor | None = None  # [n, B] reference tokens (oracle)
    generator: torch.Generator | None = None

    @cached_property
    def entropy(self) -> Tensor:
        return torch.special.entr(self.logits.float().softmax(-1)).sum(-1)


class Policy:
    """Subclass, decorate with @register_policy(name) and implement `select`."""

    name: ClassVar[str]
    needs_reference: ClassVar[bool] = False

    def __init__(self, config: DecodeConfig):
        self.config = config

    @classmethod
    def check(cls, config: DecodeConfig) -> None:
        """Raise ConfigError for settings this policy cannot use (called when the config is built)."""

    def select(self, state: StepState) -> Tensor:
        """Bool [n, B]: positions to commit. Must include at least one masked position per row."""
        raise NotImplementedError

    def tokens(self, state: StepState) -> Tensor:
        """The tokens written at committed positions."""
        return state.prediction


def top_k(score: Tensor, eligible: Tensor, k: Tensor | int) -> Tensor:
    """Bool mask of the k highest-scoring eligible positions of each row (k may differ per row)."""
    score = score.masked_fill(~eligible, float("-inf"))
    order = score.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(score.shape[-1], device=score.device)
                                            .expand_as(order))
    k = torch.as_tensor(k, device=score.device).reshape(-1, 1)
    return (rank < k) & eligible


def prefix_length(ok_sorted: Tensor) -> Tensor:
    """Per row, how many leading entries of a sorted candidate list pass (at least 1)."""
    return ok_sorted.long().cumprod(-1).sum(-1).clamp(min=1)


__all__ = ["POLICIES", "ConfigError", "Policy", "StepState", "prefix_length", "register_policy", "top_k"]
