"""The policy interface: given the current block's predictions and confidences, which masked positions to
commit this step. A strategy is one declaration: a Policy subclass registered under its name, with its knobs
as a nested `Config` dataclass. The registry feeds the engine, `DecodeConfig`, the Hydra group `decoding`,
lm-eval's model args and the records; the engine owns the loop, the caches and EoTP."""
from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .config import DecodeConfig

# The loop's switches, shared by every strategy; a policy's knobs are everything else in `decoding`.
LOOP_SWITCHES = ("strategy", "gen_length", "block_length", "temperature", "eotp", "cache", "seed")


class ConfigError(ValueError):
    """An invalid decoding setting, reported in one line before any forward pass."""


@dataclass(frozen=True)
class PolicyConfig:
    """A policy's own knobs. A policy declares a frozen subclass as its nested `Config`: fields with defaults
    (one comment each), and `validate` for ranges. Field metadata `hydra_default` gives the Hydra schema an
    interpolation as default (e.g. "${model.filter}": a model may ship its own filter); `symbol` names the knob
    in method labels (τ for threshold)."""

    def validate(self) -> None:
        """Raise ConfigError for a knob out of range; this base checks types and that floats are finite."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if not _is_instance(value, hints[f.name]):
                raise ConfigError(f"decoding.{f.name} must be {_type_name(hints[f.name])}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"decoding.{f.name} must be a finite number, got {value}")

    def require(self, knob: str, ok: bool, rule: str) -> None:
        """One range check: `self.require("k", self.k >= 1, ">= 1")`."""
        if not ok:
            raise ConfigError(f"decoding.{knob} must be {rule}, got {getattr(self, knob)!r}")


def _is_instance(value, hint) -> bool:
    """isinstance for the knob types a Config may use: int, float (an int is fine), bool, str, X | None."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option in (int, str, bool) and isinstance(value, option) and (option is bool or type(value) is not bool):
            return True
    return False


def _type_name(hint) -> str:
    return " | ".join("None" if a is type(None) else a.__name__ for a in (typing.get_args(hint) or (hint,)))


POLICIES: dict[str, type[Policy]] = {}


def register_policy(name: str):
    """Class decorator: make a policy (with its `Config`) available as `strategy=name` everywhere."""
    def add(cls: type[Policy]) -> type[Policy]:
        if name in POLICIES:
            raise ValueError(f"strategy {name!r} is registered twice")
        clash = set(cls.knob_names()) & set(LOOP_SWITCHES)
        if clash:
            raise ValueError(f"strategy {name!r}: knob(s) {sorted(clash)} shadow loop switches")
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
    quota: Tensor  # [n] tokens the uniform schedule commits at this step
    step: int  # step index within the block
    tokens: Tensor | None = None  # [n, B] the block before this step: decoded tokens, MASK, EOS past a cut
    eos_id: int | None = None
    reference: Tensor | None = None  # [n, B] reference tokens (oracle)
    generator: torch.Generator | None = None

    @cached_property
    def probabilities(self) -> Tensor:
        """[n, B, vocab] softmax of the logits, computed once per step for the policies that read it."""
        return self.logits.float().softmax(-1)

    @cached_property
    def entropy(self) -> Tensor:
        return torch.special.entr(self.probabilities).sum(-1)


class Policy:
    """Subclass, decorate with @register_policy(name), declare `Config` (if it has knobs), implement `select`.
    One instance serves a whole run (build it once, outside the timed region): `config` holds its knobs."""

    name: ClassVar[str]
    needs_reference: ClassVar[bool] = False
    Config: ClassVar[type[PolicyConfig]] = PolicyConfig  # no knobs

    def __init__(self, decoding: DecodeConfig):
        self.config = decoding.policy
        self.block_length = decoding.block_length

    @classmethod
    def knob_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls.Config))

    @classmethod
    def check(cls, decoding: DecodeConfig) -> None:
        """Raise ConfigError for knobs that do not fit the loop switches or the disk (run when the
        DecodeConfig is built); knob ranges belong in `Config.validate`."""

    def fits(self, decoding: DecodeConfig) -> bool:
        """Whether this instance was built for `decoding`'s strategy, knobs and block length."""
        return (type(self) is POLICIES[decoding.strategy] and self.config == decoding.policy
                and self.block_length == decoding.block_length)

    def steps_per_block(self, decoding: DecodeConfig) -> int:
        """S: the uniform schedule's steps per block (`StepState.quota`); B by default, one token per step."""
        return decoding.block_length

    def select(self, state: StepState) -> Tensor:
        """Bool [n, B]: positions to commit. Must include at least one masked position per row."""
        raise NotImplementedError

    def tokens(self, state: StepState) -> Tensor:
        """The tokens written at committed positions."""
        return state.prediction


def method_of(decoding: dict[str, Any]) -> dict:
    """A record's `method`: the strategy, its own knob values (from a `decoding` dict, which may hold other
    keys), and whether it needs the reference answer. An unregistered strategy keeps every non-switch key."""
    strategy = decoding.get("strategy")
    policy = POLICIES.get(strategy)
    names = policy.knob_names() if policy else [k for k in decoding if k not in LOOP_SWITCHES]
    knobs = {k: decoding[k] for k in names if k in decoding}
    return {"strategy": strategy, "knobs": knobs, "needs_reference": bool(policy and policy.needs_reference),
            "label": method_label(strategy, knobs, fields(policy.Config) if policy else ())}


def knob_symbol(strategy: str, knob: str) -> str:
    """How labels name a strategy's knob: its declared `symbol` (τ for threshold), else its name."""
    policy = POLICIES.get(strategy)
    declared = {f.name: f for f in fields(policy.Config)} if policy else {}
    return declared[knob].metadata.get("symbol", knob) if knob in declared else knob


def method_label(strategy: str, knobs: dict, declared=()) -> str:
    """The method's name in tables and plots: the strategy and its knobs by their declared symbols, e.g.
    "threshold τ=0.9"; a knob at None, or a non-numeric one at its declared default (a mode left as it
    is), says nothing and is left out."""
    declared = {f.name: f for f in declared}
    parts = [str(strategy)]
    for name, value in knobs.items():
        f = declared.get(name)
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is None or (f is not None and not numeric and value == f.default):
            continue
        text = f"{value:g}" if isinstance(value, float) else str(value).rsplit("/", 1)[-1]  # a file by its name
        parts.append(f"{f.metadata.get('symbol', name) if f else name}={text}")
    return " ".join(parts)


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


__all__ = ["LOOP_SWITCHES", "POLICIES", "ConfigError", "Policy", "PolicyConfig", "StepState", "knob_symbol", "method_of",
           "prefix_length", "register_policy", "top_k"]
