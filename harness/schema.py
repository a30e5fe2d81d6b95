"""Typed schemas of the Hydra configs in `conf/`: `RunSchema` heads config.yaml's defaults and types the groups
`model`, `task` and `tracking`, so a misspelt key, a wrong type or an unknown enum value fails when Hydra composes
the config, before any job runs. Only options a user picks are registered (no `*_schema` entries), so `--help`
and TAB completion list nothing else.

The group `decoding` has one option per registered strategy, generated from its policy's `Config` on top of
the loop switches: `decoding=oracle decoding.threshold=0.5` is rejected with the key named. Range checks (tau in
(0, 1], G a multiple of B, ...) are the policy's `validate` and `DecodeConfig`'s, run at the start of a job before
the model loads. `harness.decoding` imports torch, so it is imported only where a strategy's schema is built.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, OmegaConf

from .fingerprints import PACKAGE, cache_file, source_fingerprint
from .store import read_record, write_atomic


class Cache(Enum):
    none = "none"
    prefix = "prefix"
    dual = "dual"


class WandbMode(Enum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


class Dtype(Enum):  # the weights' dtype once loaded
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@dataclass
class ModelSchema:
    name: str = MISSING  # the label in records and plots
    path: str = MISSING  # a local folder, or a shipped model's name ("tiny")
    dtype: Optional[Dtype] = None  # None: bfloat16 on CUDA, float32 on CPU
    chat_template: Optional[bool] = None  # None: on when the tokenizer has one
    raw_prompt_tasks: list[str] = field(default_factory=lambda: ["humaneval"])  # never templated (Learn2PD)
    shift_logits: bool = False  # Dream-style models predict token i at position i-1
    trust_remote_code: bool = False
    mask_token_id: Optional[int] = None  # masked-LM folders whose tokenizer does not name these
    eos_token_id: Optional[int] = None
    block_length: int = 32  # the block length decoding uses unless told otherwise
    filter: Optional[str] = None  # the Learn2PD filter `decoding=learned` uses unless told otherwise
    filter_threshold: float = 0.96  # and its tau_f (the paper's 0.96; a shipped filter may bring its own)
    compile: str = "none"  # none | default | reduce-overhead (CUDA graphs): see harness/models/compiled.py


@functools.cache
def loop_switches_schema() -> type:
    """The loop's switches, shared by every strategy; their defaults are `DecodeConfig`'s, except G (each task's
    own) and B (the model's)."""
    from .decoding import DecodeConfig

    @dataclass
    class DecodingSchema:
        strategy: str = MISSING
        gen_length: Optional[int] = None  # G; None: each task's max_gen_toks
        block_length: int = II("model.block_length")  # B
        temperature: float = DecodeConfig.temperature
        eotp: bool = DecodeConfig.eotp
        cache: Cache = Cache(DecodeConfig.cache)
        seed: int = DecodeConfig.seed
    return DecodingSchema


def decoding_schema(strategy: str) -> type:
    """The strategy's typed option of the group `decoding`: the loop switches and its policy's knobs, with the
    knobs' defaults (or their `hydra_default` interpolations)."""
    from .decoding import POLICIES
    policy = POLICIES[strategy]
    hints = typing.get_type_hints(policy.Config)
    knobs = [(f.name, hints[f.name], field(default=f.metadata.get("hydra_default", f.default)))
             for f in dataclasses.fields(policy.Config)]
    return dataclasses.make_dataclass(f"{policy.__name__}Schema", [("strategy", str, field(default=strategy)),
                                                                   *knobs], bases=(loop_switches_schema(),))


@dataclass
class TaskSchema:
    name: str = MISSING  # a harness task (arith, facts, code, perm, gsm8k, math, humaneval, mbpp)
    metric: str = MISSING  # the lm-eval result key reported as accuracy
    limit: Optional[float] = None  # problems (an int) or a fraction of the test set
    num_fewshot: Optional[int] = None  # None: the task's own
    data_dir: Optional[str] = None  # local benchmark copies; None: lm-eval's hub dataset
    unsafe_code: bool = False  # code tasks: run generated programs (also needs HF_ALLOW_CODE_EVAL=1)


@dataclass
class TrackingSchema:
    mode: WandbMode = WandbMode.offline
    project: str = "dllm-harness"
    entity: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class RunSchema:
    model: ModelSchema = field(default_factory=ModelSchema)
    decoding: Any = MISSING  # one schema per strategy: the group's options
    task: TaskSchema = field(default_factory=TaskSchema)
    tracking: TrackingSchema = field(default_factory=TrackingSchema)
    sweep: str = "default"  # the sweep's name: its store folder and W&B group
    store: str = MISSING  # the sweep's folder; cells with a complete record here are skipped
    force: bool = False  # re-run cells that already have a complete record
    device: str = "auto"  # auto: CUDA when visible (one GPU per parallel job), else CPU
    batch_size: int = 1
    warmup: int = 1  # decodes before timing starts, excluded from speed figures
    threads: str = "auto"  # torch CPU threads per process; auto: the cores divided among parallel jobs
    pair_rounds: int = 3  # paired rounds (plain baseline and method on the first batch) behind the speedup; 0: none
    trace: bool = False  # per sample, forwards spent re-decoding tokens already predicted right (slower)
    analyse: bool = True  # at the end of a multirun: Pareto plots and tables.md in the sweep folder


def register(listing: bool = False) -> None:
    """Put the schemas where `conf/` finds them: `run_schema` for config.yaml's defaults, and every registered
    strategy as the option `decoding=<name>` (no YAML). `listing` (--help, TAB completion: no job runs) registers
    the strategies' options as plain values instead, without importing torch."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunSchema)
    for strategy, node in (listed_decoding_options() if listing else typed_decoding_options()).items():
        store.store(group="decoding", name=strategy, node=node)


def typed_decoding_options() -> dict[str, type]:
    from .decoding import POLICIES
    return {strategy: decoding_schema(strategy) for strategy in POLICIES}


def listed_decoding_options() -> dict[str, dict]:
    """The strategies' options as plain values, cached by the harness source's content: building them imports
    harness.decoding and torch (seconds), which only the first listing after a change of the source pays."""
    path, source = cache_file().with_name("decoding-options.json"), source_fingerprint(PACKAGE)
    cached = read_record(path) or {}
    if cached.get("source") != source:
        options = {name: OmegaConf.to_container(OmegaConf.structured(node), enum_to_str=True)
                   for name, node in typed_decoding_options().items()}
        cached = {"source": source, "options": options}
        with contextlib.suppress(OSError):  # a read-only cache only costs the next listing the same seconds
            write_atomic(path, json.dumps(cached, indent=1))
    return cached["options"]
