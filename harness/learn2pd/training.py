"""Fit the filter to oracle traces: BCE with logits over all outputs, AdamW, full batch (the paper's recipe)."""
from __future__ import annotations

import torch
from tqdm import tqdm

from .filter import Filter
from .traces import TraceSet


def split_indices(n: int, seed: int, fractions=(0.8, 0.1, 0.1)) -> tuple[torch.Tensor, ...]:
    """Shuffle the examples and cut train/validation/test at the step level."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    a, b = int(fractions[0] * n), int((fractions[0] + fractions[1]) * n)
    return order[:a], order[a:b], order[b:]


def evaluate(model: Filter, features, labels, valid, threshold: float = 0.9) -> dict:
    with torch.no_grad():
        logits = model(features)[:, :labels.shape[1]]
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[valid], labels[valid].float()).item()
        accepted = (torch.sigmoid(logits) > threshold) & valid
        false_pos = (accepted & ~labels.bool()).sum().item()
    return {"bce": bce, f"false_positive_rate@{threshold}": false_pos / max(1, accepted.sum().item()),
            f"accept_rate@{threshold}": accepted.sum().item() / max(1, valid.sum().item())}


def train_filter(traces: TraceSet, depth: int = 2, hidden: int | None = None,
                 features: tuple[str, ...] = ("confidence",), lr: float = 3e-3, iterations: int = 40_000,
                 seed: int = 0, progress: bool = True) -> tuple[Filter, dict]:
    torch.manual_seed(seed)
    block_length = traces.confidence.shape[1]
    model = Filter(block_length, hidden, depth, features)
    if model.reads_tokens and traces.repeat is None:
        raise ValueError("these traces carry no token flags (collected before they were recorded); collect them "
                         "again to train a filter with the repeat/outranked features")
    x = model.featurize(traces.confidence, traces.step, traces.flags())
    y, valid = traces.label.float(), traces.valid
    train, val, test = split_indices(len(traces), seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    bar = tqdm(range(iterations), desc="train filter", disable=not progress, mininterval=1.0)
    for it in bar:
        logits = model(x[train])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[valid[train]], y[train][valid[train]])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if it % 500 == 0:
            bar.set_postfix(train_bce=f"{loss.item():.4f}")
    model.eval().requires_grad_(False)
    metrics = {"examples": {"train": len(train), "validation": len(val), "test": len(test)},
               "parameters": sum(p.numel() for p in model.parameters()), "iterations": iterations, "lr": lr,
               "train": evaluate(model, x[train], y[train], valid[train]),
               "validation": evaluate(model, x[val], y[val], valid[val]),
               "test": evaluate(model, x[test], y[test], valid[test])}
    return model, metrics
