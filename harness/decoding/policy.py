"""The policy interface: given one step's predictions and confidences, which masked positions to commit (and,
for re-masking rules, which committed ones to take back). A strategy is one declaration: a Policy subclass
registered under its name, with its knobs as a nested `Config` dataclass. The registry feeds the engine,
`DecodeConfig`, the Hydra group `decoding`, lm-eval's model args and the records; the engine owns the loop, the
caches, EoTP and NFE counting.

A plain rule implements `select` on the current block. The optional hooks below serve rules with more state:
`begin` (memory kept across the steps of one decode), `window` (a step that sees, commits or re-masks beyond
the current block), `step` returning a `Decision` (commits, re-masks, a new canvas end), `forward` (a rule that
changes what the model is fed), `keep_decoding` (forwards a rule spends on a finished block),
`block_forward_limit` (a block that ends with masks left) and `caches` (the KV-cache modes the rule can run with;
others are refused when the DecodeConfig is built). `needs_bidirectional` says why a rule cannot decode a
block-diffusion model (LLaDA2: block-causal attention, nothing after the current block is visible)."""
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
CACHE_MODES = ("none", "prefix", "dual")


class ConfigError(ValueError):
    """An invalid decoding setting, reported in one line before any forward pass."""


@dataclass(frozen=True)
class PolicyConfig:
    """A policy's own knobs. A policy declares a frozen subclass as its nested `Config`: fields with defaults
    (one comment each), and `validate` for ranges. Field metadata `hydra_default` gives the Hydra schema an
    interpolation as default (e.g. "${model.filter}": a model may ship its own filter); `symbol` names the knob
    in method labels (τ for threshold); `secondary` leaves it out of labels while it is at its default (the
    authors' setting of a rule's minor knobs)."""

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


def hint_options(hint) -> tuple:
    """The types a knob's annotation allows: (int,) for `int`, (float, NoneType) for `float | None`."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _is_instance(value, hint) -> bool:
    """isinstance for the knob types a Config may use: int, float (an int is fine), bool, str, X | None."""
    for option in hint_options(hint):
        if option is type(None) and value is None:
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option in (int, str, bool) and isinstance(value, option) and (option is bool or type(value) is not bool):
            return True
    return False


def _type_name(hint) -> str:
    return " | ".join("None" if a is type(None) else a.__name__ for a in hint_options(hint))


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
    """One step for the n rows still decoding. Tensors are [n, W] over the step's window of canvas positions
    [start, start + W): by default the current block (start = its first position, W = B, shorter past an EoTP
    cut); a policy's `window` may widen it. The current block is columns [block_start, block_end)."""

    logits: Tensor  # [n, W, vocab] logits of the window's positions
    prediction: Tensor  # argmax (or Gumbel sample) per position
    confidence: Tensor  # float32 softmax probability of `prediction` at every position, decoded ones included
    masked: Tensor  # bool: still masked and inside the (possibly EoTP-shortened) canvas
    quota: Tensor  # [n] tokens the uniform schedule commits at this step
    step: int  # step index within the block
    tokens: Tensor | None = None  # [n, W] the window before this step: decoded tokens, MASK, EOS past a cut
    eos_id: int | None = None
    reference: Tensor | None = None  # [n, W] reference tokens (oracle); -1 over the prompt
    generator: torch.Generator | None = None
    rows: Tensor | None = None  # [n] the rows' indices in the batch (to index per-row memory)
    memory: Any = None  # what the policy's `begin` returned for this decode
    start: int = 0  # canvas position of column 0
    block_start: int = 0  # the current block's columns: [block_start, block_end)
    block_end: int | None = None
    prompt_length: int = 0  # canvas positions before it are the (left-padded) prompt
    mask_id: int | None = None
    inside: Tensor | None = None  # [n, W] bool: within the row's canvas (False past an EoTP cut)

    @cached_property
    def probabilities(self) -> Tensor:
        """[n, W, vocab] softmax of the logits, computed once per step for the policies that read it."""
        return self.logits.float().softmax(-1)

    @cached_property
    def entropy(self) -> Tensor:
        return torch.special.entr(self.probabilities).sum(-1)

    @cached_property
    def in_block(self) -> Tensor:
        """[W] bool: the column lies in the current block."""
        columns = torch.arange(self.masked.shape[-1], device=self.masked.device)
        return (columns >= self.block_start) & (columns < (self.block_end or self.masked.shape[-1]))

    @cached_property
    def generated(self) -> Tensor:
        """[W] bool: the column lies in the generation region (not the prompt)."""
        return self.start + torch.arange(self.masked.shape[-1], device=self.masked.device) >= self.prompt_length


@dataclass
class Decision:
    """What one step does to the window: write `tokens` where `commit` (masked positions only); put MASK back
    where `remask` (generated, decoded positions only, this step's commits included); end each row's canvas at
    `end` (canvas positions; later ones become EOS and are no longer fed), where given."""

    commit: Tensor  # [n, W] bool
    tokens: Tensor  # [n, W]
    remask: Tensor | None = None  # [n, W] bool
    end: Tensor | None = None  # [n] new canvas end (exclusive), e.g. a rule's own stop at EOS


class Policy:
    """Subclass, decorate with @register_policy(name), declare `Config` (if it has knobs), implement `select`
    (or `step`). One instance serves a whole run (build it once, outside the timed region): `config` holds its
    knobs; what changes during one decode lives in the memory `begin` returns."""

    name: ClassVar[str]
    needs_reference: ClassVar[bool] = False
    Config: ClassVar[type[PolicyConfig]] = PolicyConfig  # no knobs
    caches: ClassVar[tuple[str, ...]] = CACHE_MODES  # the KV-cache modes the rule can run with
    no_cache_because: ClassVar[str] = ""  # why the others are refused (said in the error)
    greedy_only: ClassVar[bool] = False  # the rule scores the argmax itself (temperature > 0 is refused)
    # non-empty: why the rule needs a bidirectional canvas (it reads, commits or re-masks outside the current
    # block, or feeds the model something else); it is then refused on block-diffusion models
    needs_bidirectional: ClassVar[str] = ""
    # non-empty: why the rule cannot read a model whose logits are realigned by one position (Dream predicts
    # token i at position i - 1); it is then refused on such models
    needs_unshifted: ClassVar[str] = ""

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

    def max_forwards_per_block(self, decoding: DecodeConfig) -> int:
        """A block that takes more forwards than this is an error (a rule that stopped making progress)."""
        return decoding.block_length + self.steps_per_block(decoding) + 1

    def block_forward_limit(self, decoding: DecodeConfig) -> int | None:
        """Forwards after which a block ends even with masks left, which stay masked (LLaDA2's `steps` per
        block); None: a block decodes until no mask is left (past `max_forwards_per_block` is an error)."""
        return None

    def begin(self, canvas: Tensor, prompt_length: int) -> Any:
        """Called once per decode with the initial canvas [batch, P + G]: returns the decode's memory (handed
        back as `StepState.memory`; index it by `StepState.rows`). None by default: a stateless rule."""
        return None

    def window(self, memory: Any, block_start: int, block_end: int, canvas_end: int) -> tuple[int, int]:
        """Canvas positions [lo, hi) this step reads and may change; the current block by default. Beyond the
        block needs full forwards (`caches = ("none",)`) unless only later positions are read under `prefix`."""
        return block_start, block_end

    def keep_decoding(self, memory: Any, has_mask: Tensor) -> Tensor:
        """[batch] bool: rows that run another forward in this block. By default those with a mask left at or
        before the block's end; a rule that spends forwards on a full block (unrolled steps) says so here."""
        return has_mask

    def forward(self, model, input_ids: Tensor, key_mask: Tensor | None, memory: Any, rows: Tensor,
                block_start: int, block_end: int) -> Tensor:
        """One uncached forward of the canvas prefix `input_ids` ([n, hi]); returns logits for its first
        positions (fewer when the rule truncates the input). A rule that feeds something else overrides it."""
        return model(input_ids, key_mask)

    def select(self, state: StepState) -> Tensor:
        """Bool [n, W]: positions to commit. Must include at least one masked position per row."""
        raise NotImplementedError

    def tokens(self, state: StepState) -> Tensor:
        """The tokens written at committed positions."""
        return state.prediction

    def step(self, state: StepState) -> Decision:
        """The step's decision; a commit-only rule implements `select` (and maybe `tokens`) instead."""
        return Decision(commit=self.select(state), tokens=self.tokens(state))


def block_diffusion_refusal(policy: type[Policy]) -> str:
    """Why `policy` cannot decode a block-diffusion model, "" when it can: its declared `needs_bidirectional`,
    or that it feeds the model inputs of its own (an overridden `forward`, which block diffusion bypasses) or
    reads past the block (an overridden `window`: block diffusion feeds nothing after the block's end)."""
    if policy.needs_bidirectional:
        return policy.needs_bidirectional
    if policy.forward is not Policy.forward:
        return "it feeds the model inputs of its own"
    return "it reads positions outside the current block" if policy.window is not Policy.window else ""


def check_model_fits(model, decoding: DecodeConfig) -> None:
    """The decoding settings `model` (an instance, or its class before the weights load) refuses, in one line:
    a block-diffusion model's (`check_block_diffusion`), and rules that cannot read realigned (shifted) logits."""
    if getattr(model, "block_diffusion", False):
        check_block_diffusion(decoding)
    reason = POLICIES[decoding.strategy].needs_unshifted
    if getattr(model, "shift_logits", False) and reason:
        raise ConfigError(f"strategy {decoding.strategy!r} cannot decode a model with shifted logits (Dream): "
                          f"{reason}")


def check_block_diffusion(decoding: DecodeConfig) -> None:
    """The decoding settings a block-diffusion model refuses, in one line; reads no weight (a run's
    `check_cell` calls it when config.json's model_type names such a model)."""
    reason = block_diffusion_refusal(POLICIES[decoding.strategy])
    if reason:
        raise ConfigError(f"strategy {decoding.strategy!r} cannot decode a block-diffusion model: {reason}")
    if decoding.cache == "dual":
        raise ConfigError("cache='dual' does not apply to a block-diffusion model: nothing after the current block "
                          "is visible, so cache='prefix' is already exact")


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
    "threshold τ=0.9"; a knob at None, a non-numeric one at its declared default (a mode left as it is) or
    one declared `secondary` (metadata) at its default says nothing and is left out."""
    declared = {f.name: f for f in declared}
    parts = [str(strategy)]
    for name, value in knobs.items():
        f = declared.get(name)
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        at_default = f is not None and value == f.default
        if value is None or (at_default and (not numeric or f.metadata.get("secondary"))):
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


def greedy_confidence(logits: Tensor, dtype: torch.dtype, exclude: int | None = None) -> tuple[Tensor, Tensor]:
    """The argmax of the logits and its softmax probability computed in `dtype` (float64 for rules whose
    reference uses it); `exclude` (the mask token, as ParallelBench's wrapper does) is taken out of both."""
    logits = logits.to(dtype)
    if exclude is not None:
        logits = logits.index_fill(-1, torch.tensor([exclude], device=logits.device), float("-inf"))
    prediction = logits.argmax(-1)
    return prediction, logits.softmax(-1).gather(-1, prediction[..., None]).squeeze(-1)


def prefix_length(ok_sorted: Tensor) -> Tensor:
    """Per row, how many leading entries of a sorted candidate list pass (at least 1)."""
    return ok_sorted.long().cumprod(-1).sum(-1).clamp(min=1)


__all__ = ["CACHE_MODES", "LOOP_SWITCHES", "POLICIES", "ConfigError", "Decision", "Policy", "PolicyConfig",
           "StepState", "block_diffusion_refusal", "check_block_diffusion", "check_model_fits", "greedy_confidence", "knob_symbol",
           "method_of", "prefix_length", "register_policy", "top_k"]
