"""Decode a task's problems with the engine and score them."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..decoding import DecodeConfig, generate
from .synthetic import get_task


@dataclass
class TaskResult:
    accuracy: float
    nfe: float  # mean forward passes per problem
    outputs: list[str]
    tokens: torch.Tensor  # [n, gen_length]


def left_pad(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    return batch.input_ids, batch.attention_mask


def answer_text(tokenizer, tokens: torch.Tensor, eos_id: int) -> list[str]:
    """The text before the first EOS of each row."""
    texts = []
    for row in tokens.tolist():
        end = row.index(eos_id) if eos_id in row else len(row)
        texts.append(tokenizer.decode(row[:end], skip_special_tokens=True))
    return texts


@torch.no_grad()
def evaluate_task(model, task_name: str, problems: list[dict], config: DecodeConfig, batch_size: int = 100,
                  reference: torch.Tensor | None = None) -> TaskResult:
    task, tokenizer = get_task(task_name), model.tokenizer
    policy = config.build_policy()  # once for every batch (a learned filter is loaded here)
    outputs, nfe, tokens = [], [], []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start:start + batch_size]
        ids, mask = left_pad(tokenizer, [p["prompt"] for p in chunk])
        ref = None if reference is None else reference[start:start + len(chunk)]
        out = generate(model, ids, config, attention_mask=mask, reference=ref, policy=policy)
        outputs += answer_text(tokenizer, out.tokens, model.eos_token_id)
        nfe.append(out.nfe.float())
        tokens.append(out.tokens.cpu())
    correct = [task.score(p, o) for p, o in zip(problems, outputs)]
    return TaskResult(sum(correct) / len(correct), torch.cat(nfe).mean().item(), outputs, torch.cat(tokens))
