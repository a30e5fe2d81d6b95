"""Oracle traces for the filter: for each prompt a baseline decode gives the reference answer, then an oracle
("Extremely Greedy Parallel") rollout records, at every step of every block, the block's B confidences and
the B labels `prediction == reference`. One example per step."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from ..decoding import DecodeConfig, generate
from .filter import TOKEN_FEATURES, token_flags


@dataclass
class TraceSet:
    confidence: Tensor  # [N, B] float32, all block positions in order (decoded ones included)
    label: Tensor  # [N, B] 1 where the current prediction equals the reference
    valid: Tensor  # [N, B] False where an EoTP-shortened block was zero-padded
    step: Tensor  # [N] step index within the block
    prompt: Tensor  # [N] index of the prompt the example came from
    meta: dict
    repeat: Tensor | None = None  # [N, B] token flags (filter.token_flags); None in files from before them
    outranked: Tensor | None = None

    TENSORS = ("confidence", "label", "valid", "step", "prompt", "repeat", "outranked")

    def __len__(self) -> int:
        return self.confidence.shape[0]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: getattr(self, k).contiguous() for k in self.TENSORS if getattr(self, k) is not None}
        save_file(tensors, str(path), metadata={"meta": json.dumps(self.meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> TraceSet:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if "meta" not in metadata:
            raise ValueError(f"{path} is not a trace file (written by `python -m harness.learn2pd collect`)")
        meta = json.loads(metadata["meta"])
        return cls(**load_file(str(path)), meta=meta)

    def flags(self) -> dict | None:
        return None if self.repeat is None else {name: getattr(self, name) for name in TOKEN_FEATURES}


def oracle_labels(trace, reference: Tensor, block_length: int) -> Tensor:
    """Label of each traced position: does the prediction equal the reference token there?"""
    positions = trace.block[:, None] * block_length + torch.arange(block_length)
    inside = positions < reference.shape[1]
    ref = reference.cpu()[trace.row[:, None], positions.clamp(max=reference.shape[1] - 1)]
    return (trace.prediction == ref) & inside & trace.valid


@torch.no_grad()
def collect(model, prompts: list[str], config: DecodeConfig, batch_size: int = 32, meta: dict | None = None,
            chat_template: bool = False) -> TraceSet:
    """Baseline reference + traced oracle rollout for every prompt (raw prompts by default, as the paper).
    `config`: the reference's baseline settings (a non-baseline strategy gives way to the default baseline)."""
    tokenizer = model.tokenizer
    baseline = config if config.strategy == "baseline" else config.with_strategy("baseline")
    oracle = config.with_strategy("oracle")
    baseline_policy, oracle_policy = (c.build_policy() for c in (baseline, oracle))  # once, not per batch
    parts = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="collect", unit="batch"):
        texts = prompts[start:start + batch_size]
        if chat_template:
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                   add_generation_prompt=True) for t in texts]
        batch = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=not chat_template)
        reference = generate(model, batch.input_ids, baseline, attention_mask=batch.attention_mask,
                             policy=baseline_policy).tokens
        out = generate(model, batch.input_ids, oracle, attention_mask=batch.attention_mask, reference=reference,
                       trace=True, policy=oracle_policy)
        trace = out.trace
        tokens = trace.tokens.masked_fill(~trace.valid, model.eos_token_id)  # padding past a cut reads as EOS
        flags = token_flags(trace.prediction, tokens, trace.confidence, trace.masked, model.eos_token_id)
        parts.append(dict(confidence=trace.confidence, label=oracle_labels(trace, reference, config.block_length),
                          valid=trace.valid, step=trace.step, prompt=trace.row + start, **flags))
    tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    meta = {**(meta or {}), "gen_length": config.gen_length, "block_length": config.block_length,
            "steps": baseline.policy.steps or config.gen_length, "eotp": config.eotp, "cache": config.cache,
            "prompts": len(prompts), "examples": len(tensors["step"]),
            "positive_rate": tensors["label"][tensors["valid"]].float().mean().item()}
    return TraceSet(**tensors, meta=meta)
